"""Structured pruning: identity at ratio 0, strictly smaller models for every criterion, stock classes only."""

import inspect

import pytest
import torch
from ultralytics import YOLO
from ultralytics.nn.modules import C2f

import yolo_nexp
from yolo_nexp.arch.family import C2fSplit
from yolo_nexp.cli import load_defaults
from yolo_nexp.pruning import pruner
from yolo_nexp.pruning.pruner import DEFAULT_RATIO
from yolo_nexp.report import macs_and_params
from yolo_nexp.scoring import criteria
from yolo_nexp.scoring.calibration import calibrate
from yolo_nexp.scoring.criteria import CRITERIA
from yolo_nexp.testing import informative
from yolo_nexp.training.callback import NexpPruneCallback

from .conftest import IMGSZ, every_fourth_channel


def _outputs(det, x):
    det.eval()
    with torch.no_grad():
        return det(x)[0]


def test_ratio_zero_leaves_outputs_identical(yolov8n):
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    before = _outputs(yolov8n.model, x)
    report = yolo_nexp.prune(yolov8n, ratio=0.0, imgsz=IMGSZ, batches=1, batch=2, verbose=False)
    after = _outputs(yolov8n.model, x)
    assert (before - after).abs().max().item() < 1e-5
    assert report.macs_after == report.macs_before and report.params_after == report.params_before
    assert all(b == a for b, a in report.channels.values())


@pytest.mark.parametrize("scale", ["n", "s"])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("criterion", [c for c in CRITERIA if c != "shapley"])  # shapley: test_rival_criteria.py
def test_pruned_model_is_smaller_and_forwards(scale, ratio, criterion):
    model = YOLO(f"yolov8{scale}.yaml")
    det = model.model
    head = det.model[-1]
    dfl = {name: p.clone() for name, p in det.named_parameters() if ".dfl." in name}
    shapes = {s: _outputs(det, torch.rand(1, 3, s, s)).shape for s in (IMGSZ, 96)}
    kw = dict(
        imgsz=IMGSZ, batches=1, batch=4, allocation="uniform", passes=1, verbose=False
    )  # every layer loses `ratio`
    report = yolo_nexp.prune(model, ratio=ratio, criterion=criterion, **kw)

    assert report.macs_after < report.macs_before and report.params_after < report.params_before
    assert (report.macs_after, report.params_after) == macs_and_params(det, IMGSZ)  # the report tells the truth
    for s, shape in shapes.items():
        assert _outputs(det, torch.rand(1, 3, s, s)).shape == shape
    assert not any(isinstance(m, C2fSplit) for m in det.modules())
    for m in det.modules():
        if isinstance(m, C2f):
            assert m.cv1.conv.out_channels == 2 * m.c  # folded back consistently
    for branch in (head.cv2, head.cv3):
        for seq in branch:
            assert seq[-1].out_channels in (4 * head.reg_max, head.nc)
    assert sum(b > a for b, a in report.channels.values()) > len(report.channels) // 2
    assert all(a >= 1 for _, a in report.channels.values())
    for name, p in det.named_parameters():
        if ".dfl." in name:
            torch.testing.assert_close(p, dfl[name])


@pytest.mark.parametrize("scale", ["n", "s"])
@pytest.mark.parametrize("global_pruning", [False, True])
def test_removing_silent_channels_keeps_outputs(scale, global_pruning):
    """Pruning exactly the channels whose output is zero must not change the model's output.

    Every prunable layer outputs exactly zero on a quarter of its channels, the ``bn`` criterion ranks them
    last, and ratio 0.25 removes exactly them: any wrong index mapping (C2f halves and bottleneck residuals,
    SPPF, neck concats, Detect branches) would remove or misplace live channels and change the output.
    """
    model = informative(YOLO(f"yolov8{scale}.yaml"))
    det = model.model
    every_fourth_channel(det, constant=False)
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    before = _outputs(det, x)
    kw = dict(ratio=0.25, round_to=1, imgsz=IMGSZ, global_pruning=global_pruning, verbose=False)
    report = yolo_nexp.prune(model, criterion="bn", **kw)
    assert report.macs_reduction > 0.4  # a quarter of the channels of (almost) every layer went
    torch.testing.assert_close(_outputs(det, x), before, rtol=1e-4, atol=1e-3)

    wrong = informative(YOLO(f"yolov8{scale}.yaml"))  # the same cut, but of live channels: the output moves
    every_fourth_channel(wrong.model, constant=False)
    yolo_nexp.prune(wrong, criterion="random", **kw)
    assert (_outputs(wrong.model, x) - before).abs().max() > 1e-2


@pytest.mark.parametrize("nc", [1, 3, 120])
def test_any_class_count(nc):
    from ultralytics.nn.tasks import DetectionModel

    det = DetectionModel("yolov8n.yaml", nc=nc, verbose=False)
    report = yolo_nexp.prune(det, ratio=0.5, imgsz=IMGSZ, batches=1, batch=2, verbose=False)
    assert report.params_after < report.params_before
    assert _outputs(det, torch.rand(1, 3, IMGSZ, IMGSZ)).shape[1] == 4 + nc


def test_round_to_gives_multiples(yolov8n):
    report = yolo_nexp.prune(yolov8n, ratio=0.4, round_to=8, imgsz=IMGSZ, batches=1, batch=2, verbose=False)
    pruned = [name for name, (before, after) in report.channels.items() if after < before]
    assert len(pruned) > len(report.channels) // 4, pruned  # the rounding was put to work
    for name, (before, after) in report.channels.items():
        if before % 8 == 0:
            assert after % 8 == 0, name


def test_default_ratio_is_the_one_of_configs_default_yaml():
    plugin, _ = load_defaults()
    assert plugin["ratio"] == DEFAULT_RATIO
    for api in (yolo_nexp.prune, yolo_nexp.attach):  # None: DEFAULT_RATIO unless macs is given
        assert inspect.signature(api).parameters["ratio"].default is None, api.__name__
    assert NexpPruneCallback().ratio == DEFAULT_RATIO
    assert NexpPruneCallback(macs=0.3).target == {"macs": 0.3}


class _Measured(Exception):
    """Stops pruning once the sensitivity measurement was reached."""


def test_sensitivity_is_measured_on_sensitivity_batches(yolov8n, monkeypatch):
    seen = []

    def spy(det, sets, widths, calib, repair, images, *args, **kwargs):
        seen.append(len(images))
        raise _Measured

    monkeypatch.setattr(pruner, "sensitivity_curves", spy)
    for n in (1, 2):
        with pytest.raises(_Measured):
            yolo_nexp.prune(
                yolov8n, ratio=0.5, imgsz=IMGSZ, batches=3, batch=2, sensitivity_batches=n, passes=1, verbose=False
            )
    assert seen == [1, 2]  # the calibration pass kept as many batches as the sensitivity is measured on


def test_sensitivity_batches_default_is_the_one_of_configs_default_yaml():
    plugin, _ = load_defaults()
    assert plugin["sensitivity_batches"] == pruner.DEFAULT_SENSITIVITY_BATCHES
    assert inspect.signature(yolo_nexp.prune).parameters["sensitivity_batches"].default == plugin["sensitivity_batches"]


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(sensitivity_batches=0), "sensitivity_batches must be a whole number from 1 to batches"),
        (dict(sensitivity_batches=3, batches=2), "sensitivity_batches must be a whole number from 1 to batches"),
        (dict(sensitivity_batches=1.0), "sensitivity_batches must be a whole number"),
        (dict(sensitivity_batches=2, batches=2, passes=2, share=True), "give one or the other"),
    ],
)
def test_sensitivity_batches_out_of_range_are_refused_before_any_work(kw, match):
    with pytest.raises(ValueError, match=match):
        yolo_nexp.prune(YOLO("yolov8n.yaml"), ratio=0.3, source="noise", imgsz=IMGSZ, verbose=False, **kw)


@pytest.mark.parametrize(
    "kw,inputs",
    [
        (dict(criterion="l1", repair="none", allocation="uniform", bn_recal=True), False),  # nothing reads means
        (dict(criterion="nexp_use", repair="none", allocation="uniform"), True),  # NEEDS["nexp_use"] == "inputs"
        (dict(criterion="l1", repair="mean", allocation="uniform"), True),  # the repair folds the means
        (dict(criterion="nexp_lsq", repair="lsq", estimate="lsq"), False),  # the covariances bring their means
        (dict(criterion="nexp_lsq", repair="lsq", estimate="mean"), True),  # the mean estimate reads them
    ],
)
def test_calibration_records_input_moments_only_when_read(yolov8n, monkeypatch, kw, inputs):
    asked = []

    def spy(*args, **flags):
        asked.append(flags["inputs"])
        return calibrate(*args, **flags)

    monkeypatch.setattr(pruner, "calibrate", spy)
    yolo_nexp.prune(
        yolov8n, ratio=0.25, imgsz=IMGSZ, batches=1, batch=2, passes=1, verbose=False, **kw
    )  # one calibration
    assert asked == [inputs]


def test_a_criterion_without_an_importance_object_raises(yolov8n, monkeypatch):
    monkeypatch.setattr(criteria, "CRITERIA", (*criteria.CRITERIA, "unheard_of"))
    with pytest.raises(ValueError, match="unheard_of"):
        criteria.build_importance("unheard_of", yolov8n.model)  # no silent fall-through to random


def test_nexp_prunes_dead_channels_first(tiny_data):
    """Channels that never fire (NEXP 0) are removed first; every channel that separates the images is kept."""
    torch.manual_seed(0)
    model = YOLO("yolov8n.yaml")
    block = model.model.model[1]  # a plain Conv block (32 channels) feeding only the next C2f
    with torch.no_grad():
        block.bn.bias[:8] = -1e4  # channels 0-7 are dead: SiLU(-1e4) is -0.0, never > 0
    kw = dict(imgsz=IMGSZ, batches=2, batch=4, verbose=False)
    nexp = yolo_nexp.score(model, tiny_data, **kw)["model.1"]
    assert (nexp[:8] == 0).all()
    zero = nexp == 0  # the dead ones, and any live channel that happens not to separate these images

    def per_channel(bn):  # BN state is per output channel only (the conv's inputs are pruned too)
        return torch.stack([bn.weight, bn.bias, bn.running_mean, bn.running_var]).detach().clone()

    lively = per_channel(block.bn)[:, ~zero]
    # remove exactly that many; no repair, so that the kept channels' BN state stays bit for bit what it was
    yolo_nexp.prune(
        model,
        ratio=int(zero.sum()) / 32,
        round_to=1,
        source=tiny_data,
        criterion="nexp",
        repair="none",
        allocation="uniform",
        passes=1,  # in one pass: the dead channels are exactly the ratio removed
        **kw,
    )
    torch.testing.assert_close(per_channel(block.bn), lively)  # exactly the channels with NEXP > 0, in order


def test_same_seed_same_architecture():
    a, b = YOLO("yolov8n.yaml"), YOLO("yolov8n.yaml")
    b.model.load_state_dict(a.model.state_dict())
    ra = yolo_nexp.prune(a, ratio=0.5, imgsz=IMGSZ, batches=2, batch=2, seed=3, verbose=False)
    rb = yolo_nexp.prune(b, ratio=0.5, imgsz=IMGSZ, batches=2, batch=2, seed=3, verbose=False)
    assert ra.channels == rb.channels
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "half", True])
def test_bad_ratio_is_rejected(yolov8n, bad):
    with pytest.raises(ValueError, match="ratio"):
        yolo_nexp.prune(yolov8n, ratio=bad, imgsz=IMGSZ, verbose=False)


def test_unknown_criterion_is_rejected(yolov8n):
    with pytest.raises(ValueError, match="criterion"):
        yolo_nexp.prune(yolov8n, criterion="magic", imgsz=IMGSZ, verbose=False)


@pytest.mark.parametrize("scale", ["n", "s"])
@pytest.mark.parametrize("criterion", ["nexp", "l1", "random"])
def test_global_pruning_keeps_c2f_halves_equal(scale, criterion):
    model = YOLO(f"yolov8{scale}.yaml")
    report = yolo_nexp.prune(
        model, ratio=0.5, criterion=criterion, global_pruning=True, imgsz=IMGSZ, batches=1, batch=2, verbose=False
    )
    det = model.model
    assert report.macs_after < report.macs_before
    assert _outputs(det, torch.rand(1, 3, IMGSZ, IMGSZ)).shape[1] == 84
    for m in det.modules():
        if isinstance(m, C2f):
            assert m.cv1.conv.out_channels == 2 * m.c
    widths = [after / before for before, after in report.channels.values()]
    assert max(widths) - min(widths) > 0.1  # global ranking does allocate different ratios to different layers


@pytest.mark.parametrize("allocation", ["uniform", "global", "sensitivity"])
@pytest.mark.parametrize("target", [0.1, 0.25, 0.46, 0.7])
def test_macs_target_lands_within_one_point(yolov8n, target, allocation):
    report = yolo_nexp.prune(
        yolov8n, macs=target, allocation=allocation, imgsz=IMGSZ, batches=1, batch=2, verbose=False
    )
    assert abs(report.macs_reduction - target) < 0.01, report.macs_reduction
    assert report.macs_target == target and 0 < report.ratio < 1


@pytest.mark.parametrize(
    "allocation,ratio",
    [("uniform", r) for r in (0.0, 0.0001, 0.003)]  # below one channel of the widest layer (256)
    + [(a, r) for a in ("global", "sensitivity") for r in (0.0, 0.0001)],  # below one channel of all of them
)
@pytest.mark.parametrize("round_to", [1, 8])
def test_tiny_ratios_remove_nothing(yolov8n, allocation, ratio, round_to):
    """Rounding never removes more than asked: a ratio below one channel (or one round_to step) removes none."""
    kw = dict(round_to=round_to, allocation=allocation, imgsz=IMGSZ, batches=1, batch=2, verbose=False)
    report = yolo_nexp.prune(yolov8n, ratio=ratio, **kw)
    assert all(b == a for b, a in report.channels.values())
    assert report.macs_after == report.macs_before
