"""Pruning in passes: the target reached in compounding shares, each pass recalibrated on the pruned model."""

import pytest
from ultralytics import YOLO

import yolo_nexp
from yolo_nexp.pruning import pruner
from yolo_nexp.pruning.allocation import step_fraction


def test_passes_reach_the_macs_target_and_recalibrate_on_the_pruned_model(monkeypatch):
    seen = []  # width of the first conv each calibration pass sees: the model the previous pass left
    calibrate = pruner.calibrate

    def spy(det, *args, **kwargs):
        seen.append(det.model[0].conv.out_channels)
        return calibrate(det, *args, **kwargs)

    monkeypatch.setattr(pruner, "calibrate", spy)
    model = YOLO("yolov8n.yaml")
    dense = yolo_nexp.prune(YOLO("yolov8n.yaml"), ratio=0.0, passes=1, source="noise", imgsz=64, batches=1, batch=2)
    report = yolo_nexp.prune(model, macs=0.5, passes=3, source="noise", imgsz=64, batches=1, batch=2, round_to=1)
    assert report.passes == 3 and len(seen) == 4  # one calibration for the ratio=0 call above, three for the passes
    assert report.macs_before == dense.macs_before
    assert abs(report.macs_reduction - 0.5) < 0.05
    assert report.macs_target == 0.5
    assert (
        report.channels["model.0"][0] == 16 and report.channels["model.0"][1] == model.model.model[0].conv.out_channels
    )
    assert seen[1] == 16 and seen[2] <= 16 and seen[3] <= seen[2]
    assert report.seconds_scoring > 0 and "3 passes" in report.summary()


def test_each_pass_removes_its_compounding_share():
    shares = [step_fraction(0.5, k, 3) for k in (1, 2, 3)]
    left = 1.0
    for s in shares:
        left *= 1 - s
    assert left == pytest.approx(0.5)
    assert shares[0] == pytest.approx(1 / 6) and shares[2] == pytest.approx(0.25)


def test_a_generator_source_serves_every_pass():
    import torch

    batches = (torch.rand(2, 3, 64, 64) for _ in range(2))
    report = yolo_nexp.prune(YOLO("yolov8n.yaml"), ratio=0.3, passes=2, source=batches, imgsz=64, batches=2, batch=2)
    assert report.passes == 2 and report.ratio > 0.1


@pytest.mark.parametrize("passes", [0, 1.5, True, 21])
def test_passes_out_of_range_are_refused(passes):
    with pytest.raises(ValueError, match="passes"):
        yolo_nexp.prune(YOLO("yolov8n.yaml"), ratio=0.3, passes=passes, source="noise", imgsz=64)


def test_default_passes_is_the_one_of_configs_default_yaml():
    import inspect

    from yolo_nexp.cli import load_defaults

    plugin, _ = load_defaults()
    assert plugin["passes"] == pruner.DEFAULT_PASSES > 1
    assert inspect.signature(yolo_nexp.prune).parameters["passes"].default == pruner.DEFAULT_PASSES
    report = yolo_nexp.prune(YOLO("yolov8n.yaml"), ratio=0.3, source="noise", imgsz=64, batches=1, batch=2)
    assert report.passes == pruner.DEFAULT_PASSES


def test_shared_passes_split_the_calibration_batches_and_the_sensitivity_images(monkeypatch):
    import torch

    parts, sensitivity = [], []
    calibrate, curves = pruner.calibrate, pruner.sensitivity_curves

    def spy_calibrate(*args, **kwargs):
        parts.append(kwargs["part"])
        return calibrate(*args, **kwargs)

    def spy_curves(det, sets, widths, calib, estimate, images, verbose):
        sensitivity.append(torch.cat(images))
        return curves(det, sets, widths, calib, estimate, images, verbose)

    monkeypatch.setattr(pruner, "calibrate", spy_calibrate)
    monkeypatch.setattr(pruner, "sensitivity_curves", spy_curves)
    batches = tuple(torch.full((4, 3, 64, 64), 0.1 * (i + 1)) for i in range(4))  # batch i is all 0.1 (i + 1)
    kw = dict(macs=0.4, passes=4, source=batches, imgsz=64, batches=4, round_to=1, verbose=False)
    yolo_nexp.prune(YOLO("yolov8n.yaml"), share=True, **kw)
    assert parts == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert [len(x) for x in sensitivity] == [1, 1, 1, 1]  # a quarter of its own batch each
    assert [round(float(x.mean()), 3) for x in sensitivity] == [0.1, 0.2, 0.3, 0.4]
    parts.clear(), sensitivity.clear()
    yolo_nexp.prune(YOLO("yolov8n.yaml"), share=False, **kw)
    assert parts == [(0, 1)] * 4 and [len(x) for x in sensitivity] == [4] * 4


def test_shared_passes_with_fewer_batches_than_passes_take_distinct_slices(monkeypatch):
    import torch

    from yolo_nexp.pruning.passes import sensitivity_images
    from yolo_nexp.scoring.calibration import Calibration

    calib = Calibration(images=[torch.arange(6.0).view(6, 1, 1, 1)])
    slices = [sensitivity_images(calib, (k, 4)) for k in range(4)]
    assert [x[0].flatten().tolist() for x in slices] == [[0, 1], [2, 3], [4, 5], [0, 1]]
    assert sensitivity_images(calib, (0, 1))[0].shape[0] == 6


@pytest.mark.parametrize("share", [1, "yes", None])
def test_share_must_be_a_bool(share):
    with pytest.raises(ValueError, match="share"):
        yolo_nexp.prune(YOLO("yolov8n.yaml"), ratio=0.3, share=share, source="noise", imgsz=64)


def test_default_share_is_the_one_of_configs_default_yaml():
    import inspect

    from yolo_nexp.cli import load_defaults

    plugin, _ = load_defaults()
    assert plugin["share"] == pruner.DEFAULT_SHARE
    assert inspect.signature(yolo_nexp.prune).parameters["share"].default == pruner.DEFAULT_SHARE


def test_the_parts_of_a_calibration_source_are_its_batches_dealt_out(tiny_data):
    import torch

    from yolo_nexp.scoring.sources import calibration_batches

    for source in ("noise", tiny_data):
        kw = dict(batches=3, imgsz=32, batch=2, seed=5)
        whole = list(calibration_batches(source, **kw))
        parts = [list(calibration_batches(source, **kw, part=(i, 2))) for i in range(2)]
        assert [len(p) for p in parts] == [2, 1]
        assert all(torch.equal(a, b) for a, b in zip(whole, [parts[0][0], parts[1][0], parts[0][1]]))


def test_shared_passes_with_fewer_batches_than_passes_deal_them_out_in_turn(monkeypatch):
    import torch

    parts, sensitivity = [], []
    calibrate, curves = pruner.calibrate, pruner.sensitivity_curves
    monkeypatch.setattr(pruner, "calibrate", lambda *a, **kw: parts.append(kw["part"]) or calibrate(*a, **kw))

    def spy_curves(det, sets, widths, calib, estimate, images, verbose):
        sensitivity.extend(torch.cat(images)[:, 0, 0, 0].tolist())
        return curves(det, sets, widths, calib, estimate, images, verbose)

    monkeypatch.setattr(pruner, "sensitivity_curves", spy_curves)
    values = torch.arange(8.0).view(2, 4) / 10  # batch b, image i: all pixels (4 b + i) / 10
    batches = tuple(values[b].view(4, 1, 1, 1).expand(4, 3, 64, 64).contiguous() for b in range(2))
    kw = dict(macs=0.4, passes=4, source=batches, imgsz=64, batches=2, round_to=1, share=True, verbose=False)
    yolo_nexp.prune(YOLO("yolov8n.yaml"), **kw)
    assert parts == [(0, 2), (1, 2), (0, 2), (1, 2)]
    # pass k estimates on the k-th quarter of the batch it reads: other images in every pass
    assert sensitivity == pytest.approx([0.0, 0.5, 0.2, 0.7])
