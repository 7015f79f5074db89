"""Sensitivity: the first-order estimate the allocation uses, against the measured distortion it stands for."""

import pytest
import torch
from ultralytics import YOLO

from yolo_nexp.arch.family import c2f_split, detection_model
from yolo_nexp.pruning import allocation as alloc
from yolo_nexp.pruning.groups import build_graph, linked_sets, prunable_groups
from yolo_nexp.pruning.linear_sensitivity import estimate
from yolo_nexp.pruning.pruner import _rank
from yolo_nexp.pruning.sensitivity import mean_substitute, measure, measure_points
from yolo_nexp.scoring.calibration import calibrate
from yolo_nexp.scoring.criteria import build_importance
from yolo_nexp.testing import informative


def spearman(a, b) -> float:
    """Rank correlation (no ties expected among distortions)."""
    ra, rb = (torch.tensor(x).argsort().argsort().double() for x in (a, b))
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


@pytest.fixture(scope="module")
def both():
    """Allowed widths, estimated and measured distortion of every linked set of an input-dependent yolov8n."""
    det = detection_model(informative(YOLO("yolov8n.yaml"), imgsz=64))
    with c2f_split(det):
        calib = calibrate(det, "noise", 2, 64, 4, 0, inputs=True, keep_images=1, verbose=False)
        graph = build_graph(det)
        groups = _rank(prunable_groups(graph, det), build_importance("l1", det, calib))
        sets = linked_sets(groups, det)
        widths = alloc.removal_steps(sets, 1)
        nc, means = det.model[-1].nc, calib.input_means()
        lin = estimate(det, sets, widths, means, calib.images, nc, projections=4, verbose=False)
        mea = measure(det, graph, sets, widths, mean_substitute(means), calib.images, nc, verbose=False)
    return widths, lin, mea


def test_estimate_ranks_groups_as_the_measured_distortion_does(both):
    widths, lin, mea = both
    for ws, curve in zip(widths, lin):
        assert set(curve) == set(ws[1:])  # every allowed width has an estimate
    w25 = [measure_points(ws)[0] for ws in widths]
    a = [m[w] for m, w in zip(mea, w25)]
    b = [e[w] for e, w in zip(lin, w25)]
    assert spearman(a, b) > 0.6, spearman(a, b)
    shuffled = torch.tensor(b)[torch.randperm(len(b), generator=torch.Generator().manual_seed(0))].tolist()
    assert spearman(a, shuffled) < 0.5  # the check can fail


def test_estimate_grows_with_the_channels_removed(both):
    _, lin, _ = both
    for curve in lin:
        values = [curve[w] for w in sorted(curve, reverse=True)]
        assert values[-1] >= values[0]  # removing all but one channel costs at least as much as removing one


@pytest.fixture(scope="module")
def lsq_both():
    """Estimated (lsq first order) and measured (lsq substitute) distortion of every linked set of a yolov8n."""
    from yolo_nexp.pruning import lsq_sensitivity

    det = detection_model(informative(YOLO("yolov8n.yaml"), imgsz=64))
    with c2f_split(det):
        calib = calibrate(det, "noise", 2, 64, 4, 0, inputs=True, cross=True, keep_images=1, verbose=False)
        graph = build_graph(det)
        groups = _rank(prunable_groups(graph, det), build_importance("l1", det, calib))
        sets = linked_sets(groups, det)
        widths = alloc.removal_steps(sets, 1)
        nc = det.model[-1].nc
        est = lsq_sensitivity.estimate(det, sets, widths, calib.cross, calib.images, nc, projections=4, verbose=False)
        sub = lsq_sensitivity.lsq_substitute(calib.cross)
        mea = measure(det, graph, sets, widths, sub, calib.images, nc, verbose=False)
        mean_mea = measure(
            det, graph, sets, widths, mean_substitute(calib.input_means()), calib.images, nc, verbose=False
        )
    return widths, est, mea, mean_mea


def test_lsq_estimate_ranks_groups_as_the_measured_lsq_distortion_does(lsq_both):
    widths, est, mea, _ = lsq_both
    w25 = [measure_points(ws)[0] for ws in widths]
    assert all(w in e for e, w in zip(est, w25))  # the 25% point is one of the evaluated widths
    a, b = [m[w] for m, w in zip(mea, w25)], [e[w] for e, w in zip(est, w25)]
    assert spearman(a, b) > 0.6, spearman(a, b)
    shuffled = torch.tensor(b)[torch.randperm(len(b), generator=torch.Generator().manual_seed(0))].tolist()
    assert spearman(a, shuffled) < 0.5  # the check can fail


def test_the_lsq_substitute_distorts_less_than_the_mean_in_most_groups(lsq_both):
    widths, _, mea, mean_mea = lsq_both
    w50 = [measure_points(ws)[1] for ws in widths]
    better = sum(m[w] <= mm[w] for m, mm, w in zip(mea, mean_mea, w50))
    assert better > 0.7 * len(widths), (better, len(widths))


def test_the_estimate_argument_picks_the_repair_simulated_and_defaults_to_the_yaml(monkeypatch):
    import inspect

    import yolo_nexp
    from yolo_nexp.cli import load_defaults
    from yolo_nexp.pruning import lsq_sensitivity
    from yolo_nexp.pruning.args import check_prune_args

    calls = []
    monkeypatch.setattr(lsq_sensitivity, "estimate", lambda *a, **k: calls.append("lsq") or [])
    monkeypatch.setattr(lsq_sensitivity, "mean_estimate", lambda *a, **k: calls.append("mean") or [])
    det = type("Det", (), {"model": [type("Head", (), {"nc": 1})()]})()
    calib = type("Calib", (), {"cross": {}, "input_means": lambda self: {}})()
    for which in ("lsq", "mean"):
        lsq_sensitivity.sensitivity_curves(det, [], [], calib, which, [])
    assert calls == ["lsq", "mean"]
    plugin, _ = load_defaults()
    assert plugin["estimate"] == lsq_sensitivity.DEFAULT_ESTIMATE
    assert inspect.signature(yolo_nexp.prune).parameters["estimate"].default == lsq_sensitivity.DEFAULT_ESTIMATE
    with pytest.raises(ValueError, match="estimate: unknown 'median'"):
        check_prune_args(estimate="median")


def test_an_lsq_estimate_prune_records_the_covariances_without_the_lsq_repair():
    import yolo_nexp

    report = yolo_nexp.prune(
        YOLO("yolov8n.yaml"), macs=0.2, repair="mean", estimate="lsq", source="noise", imgsz=64, batches=1,
        batch=2, passes=1, verbose=False,
    )  # fmt: skip
    assert 0.1 < report.macs_reduction < 0.3


def test_projected_gradients_closed_early_leaves_no_hook_and_restores_grad_flags():
    from yolo_nexp.pruning.linear_sensitivity import projected_gradients

    det = detection_model(YOLO("yolov8n.yaml"))
    convs = [m for m in det.modules() if isinstance(m, torch.nn.Conv2d)][1:4]
    det.model[0].conv.weight.requires_grad_(False)  # a flag that is not the default comes back as it was
    flags = {n: p.requires_grad for n, p in det.named_parameters()}  # (DFL's conv is frozen already)
    gen = projected_gradients(det, convs, [torch.rand(1, 3, 64, 64)] * 2, det.model[-1].nc, verbose=False)
    k, inputs, grads = next(gen)
    assert k == 0 and set(grads) == set(convs) and all(grads[c].shape == inputs[c].shape for c in convs)
    assert not any(p.requires_grad for p in det.parameters())  # frozen while it runs
    gen.close()
    assert all(not c._forward_pre_hooks for c in convs)
    assert {n: p.requires_grad for n, p in det.named_parameters()} == flags
    assert any(flags.values()) and not flags["model.0.conv.weight"]


def test_lsq_moment_chunks_equal_the_whitened_sum_over_positions():
    from torch import nn

    from yolo_nexp.pruning import lsq_sensitivity
    from yolo_nexp.pruning.linear_sensitivity import projected_gradients

    det = detection_model(informative(YOLO("yolov8n.yaml"), imgsz=64))
    with c2f_split(det):
        calib = calibrate(det, "noise", 2, 64, 2, 0, cross=True, keep_images=1, verbose=False)
        convs = [c for c in det.modules() if isinstance(c, nn.Conv2d) and c.groups == 1]
        prec = lsq_sensitivity.precisions({c: calib.cross[c] for c in convs})
        chunks = list(lsq_sensitivity.moment_chunks(det, convs, calib.cross, prec, calib.images, 80, verbose=False))
        got = {c: torch.cat([m[c] for m in chunks]) for c in chunks[0]}
        want = {c: [] for c in convs}  # D = sum over positions of (P e) u^T, whitening every position first
        for _, inputs, grads in projected_gradients(det, convs, calib.images, 80, verbose=False):
            for c, u in grads.items():
                white = torch.einsum(
                    "gc,bchw->bghw", prec[c], (inputs[c] - calib.cross[c].mean.view(1, -1, 1, 1)).double()
                )
                want[c].append(torch.einsum("bghw,bihw->bgi", white, u.double()))
    assert got.keys() == {c for c, d in want.items() if d}
    for c, d in got.items():
        ref = torch.cat(want[c])
        assert float((d - ref).norm() / ref.norm()) < 5e-3  # float32 products against float64 (a wrong sum: ~1)


def test_batches_are_run_in_chunks_of_at_most_four_640_px_images():
    from yolo_nexp.utils import chunks

    assert [len(c) for c in chunks(torch.zeros(16, 3, 640, 640))] == [4, 4, 4, 4]
    assert [len(c) for c in chunks(torch.zeros(6, 3, 1280, 1280))] == [1] * 6  # never fewer than one image
    assert [len(c) for c in chunks(torch.zeros(8, 3, 64, 64))] == [8]
