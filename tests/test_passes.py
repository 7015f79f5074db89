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
