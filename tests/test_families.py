"""The whole family: YOLOv8-P6, Ghost, segment/pose/OBB heads and YOLO11 prune into smaller stock models.

Exactness is checked the way tests/test_pruner.py and tests/test_repair.py check YOLOv8: channels that output
exactly zero (or a constant, with the repair) are removed without changing any output of the model (boxes,
scores, mask coefficients and prototypes, keypoints, angles), which any wrong index mapping would.
"""

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from ultralytics import YOLO
from ultralytics.nn.modules import C2, C2PSA, C3Ghost, C3k2
from ultralytics.nn.modules.block import Attention

import yolo_nexp
from yolo_nexp.arch.family import HalvesSplit
from yolo_nexp.report import macs_and_params
from yolo_nexp.testing import informative

from .conftest import IMGSZ, every_fourth_channel, replicate_padding

FAMILIES = [f"yolov8n-{v}.yaml" for v in ("p6", "ghost", "seg", "pose", "obb")] + [
    f"yolo11n{v}.yaml" for v in ("", "-seg", "-pose", "-obb")
]
OTHER_CRITERIA = {  # every block family and head meets a magnitude, a data-driven and the random criterion
    "yolov8n-p6.yaml": ("tp", "random"),
    "yolov8n-ghost.yaml": ("l1", "nexp_use", "random"),
    "yolo11n-seg.yaml": ("tp", "nexp_use"),
    "yolo11n-obb.yaml": ("l1",),
    "yolo11n-pose.yaml": ("random",),
}
EXACT = dict(ratio=0.25, round_to=1, imgsz=IMGSZ, batches=1, batch=2, allocation="uniform", passes=1, verbose=False)


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    return [t for o in out for t in _flat(o)]


def _outputs(det, x) -> list[torch.Tensor]:
    """Every decoded output of the model in eval mode: predictions, and Segment's prototypes."""
    det.eval()
    with torch.no_grad():
        return _flat(det(x)[0])


def _input(seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))  # 64: P6's stride


def _assert_outputs_close(after, before) -> None:
    assert [a.shape for a in after] == [b.shape for b in before]
    for a, b in zip(after, before):
        # float32 folding error only: decoded boxes are pixels (up to 64x a P6 stride), so 1e-3 relative; a wrong
        # fold or a lost channel moves outputs by whole units
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def _moved(after, before) -> float:
    return max((a - b).abs().max().item() for a, b in zip(after, before))


def _cut(cfg: str, constant: bool, criterion: str, repair: str):
    """A quarter of every layer's channels zero (or constant), then a quarter of each group removed: (report, before,
    after outputs). With ``bn`` exactly the chosen channels go; with ``random`` live ones do."""
    model = informative(YOLO(cfg))
    if constant:
        replicate_padding(model.model)
    every_fourth_channel(model.model, constant=constant)
    before = _outputs(model.model, _input())
    report = yolo_nexp.prune(model, criterion=criterion, repair=repair, **EXACT)
    return report, before, _outputs(model.model, _input())


@pytest.mark.parametrize("cfg", FAMILIES)
def test_removing_silent_channels_keeps_every_output(cfg):
    report, before, after = _cut(cfg, constant=False, criterion="bn", repair="none")
    assert report.macs_reduction > 0.3  # a quarter of the channels of (almost) every layer went
    _assert_outputs_close(after, before)


@pytest.mark.parametrize("cfg", ["yolov8n-ghost.yaml", "yolo11n-seg.yaml"])
def test_silent_channel_check_can_fail(cfg):
    """The same cut of live channels moves the output: the check above has teeth."""
    _, before, after = _cut(cfg, constant=False, criterion="random", repair="none")
    assert _moved(after, before) > 1e-2


@pytest.mark.parametrize("cfg", FAMILIES)
def test_constant_channels_go_with_the_repair(cfg):
    report, before, after = _cut(cfg, constant=True, criterion="bn", repair="mean")
    assert report.macs_reduction > 0.3
    _assert_outputs_close(after, before)


@pytest.mark.parametrize("cfg", ["yolov8n-ghost.yaml", "yolo11n-pose.yaml"])
def test_constant_channels_without_repair_move_the_output(cfg):
    _, before, after = _cut(cfg, constant=True, criterion="bn", repair="none")
    assert _moved(after, before) > 0.05


def _check_pruned_structure(det, dense_shapes: dict) -> None:
    """Smaller dense model of stock classes whose outputs keep their shapes, blocks folded back consistently."""
    assert not any(isinstance(m, HalvesSplit) for m in det.modules())
    assert all(type(m).__module__.split(".")[0] in ("torch", "ultralytics") for m in det.modules())
    for m in det.modules():
        if hasattr(m, "c") and hasattr(m, "cv1") and not isinstance(m, C3Ghost):
            assert m.cv1.conv.out_channels == 2 * m.c, type(m).__name__  # C2f, C3k2, C2, C2PSA
    for size, shapes in dense_shapes.items():
        assert [o.shape for o in _outputs(det, torch.rand(1, 3, size, size))] == shapes


@pytest.fixture(scope="module")
def nexp_pruned(tmp_path_factory):
    """Every family pruned at ratio 0.5 by NEXP on noise (the other criteria and the default allocation are exercised
    below and in tests/test_tasks.py), saved, with reference outputs for the reload test."""
    folder = tmp_path_factory.mktemp("families")
    pruned = {}
    for cfg in FAMILIES:
        model = informative(YOLO(cfg))
        dense = {s: [o.shape for o in _outputs(model.model, torch.rand(1, 3, s, s))] for s in (64, 128)}
        kw = dict(criterion="nexp", source="noise", allocation="uniform", imgsz=IMGSZ, batches=1, batch=4, passes=1)
        report = yolo_nexp.prune(model, ratio=0.5, **kw)  # uniform: every prunable group loses half
        path = folder / cfg.replace(".yaml", ".pt")
        model.save(path)
        saved = copy.deepcopy(model.model).half().float()  # what YOLO.save writes (fp16), as YOLO(path) reads it
        np.save(path.with_suffix(".npy"), _outputs(saved, _input(1))[0].numpy())
        pruned[cfg] = dict(model=model, report=report, dense=dense, path=path)
    return pruned


@pytest.mark.parametrize("cfg", FAMILIES)
def test_nexp_on_noise_prunes_every_family(cfg, nexp_pruned):
    model, report = nexp_pruned[cfg]["model"], nexp_pruned[cfg]["report"]
    assert report.macs_after < report.macs_before and report.params_after < report.params_before
    assert (report.macs_after, report.params_after) == macs_and_params(model.model, IMGSZ)
    _check_pruned_structure(model.model, nexp_pruned[cfg]["dense"])


@pytest.mark.parametrize("cfg,criterion", [(cfg, c) for cfg, criteria in OTHER_CRITERIA.items() for c in criteria])
def test_other_criteria_prune_every_block_family(cfg, criterion):
    model = YOLO(cfg)
    dense = {s: [o.shape for o in _outputs(model.model, torch.rand(1, 3, s, s))] for s in (64,)}
    report = yolo_nexp.prune(
        model, ratio=0.5, criterion=criterion, imgsz=IMGSZ, batches=1, batch=2, passes=1, verbose=False
    )
    assert report.macs_after < report.macs_before and report.params_after < report.params_before
    _check_pruned_structure(model.model, dense)


def test_reload_in_stock_ultralytics_without_the_plugin(nexp_pruned):
    """A fresh process that never imports yolo_nexp loads every pruned family with ``YOLO(path)`` and predicts."""
    files = {cfg: str(p["path"]) for cfg, p in nexp_pruned.items()}
    script = f"""
import json, sys
import numpy as np, torch
from ultralytics import YOLO
files, out = {json.dumps(files)}, {{}}
x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
for cfg, path in files.items():
    model = YOLO(path)
    det = model.model.eval()
    with torch.no_grad():
        y = det(x)[0]
    y = y[0] if isinstance(y, (list, tuple)) else y
    ref = np.load(path.replace(".pt", ".npy"))
    model.predict(np.zeros((64, 64, 3), np.uint8), imgsz=64, verbose=False)
    out[cfg] = dict(task=model.task, params=sum(p.numel() for p in det.parameters()),
                    diff=float(np.abs(y.numpy() - ref).max() / max(1.0, np.abs(ref).max())),
                    modules=sorted({{type(m).__module__.split(".")[0] for m in det.modules()}}))
assert "yolo_nexp" not in sys.modules
print(json.dumps(out))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    for cfg, p in nexp_pruned.items():
        assert loaded[cfg]["params"] == p["report"].params_after
        assert loaded[cfg]["modules"] == ["torch", "ultralytics"]
        assert loaded[cfg]["task"] == p["model"].task
        assert loaded[cfg]["diff"] < 1e-5  # relative to the largest output: float32 noise is ~1e-7 of it


def test_attention_internals_are_left_alone(nexp_pruned):
    """C2PSA: heads, key/value widths and the residual stream keep their size; the feed-forward hidden layer shrinks."""
    dense, det = YOLO("yolo11n.yaml").model, nexp_pruned["yolo11n.yaml"]["model"].model
    (psa_dense,), (psa,) = ([m for m in d.modules() if isinstance(m, C2PSA)] for d in (dense, det))
    assert psa.c == psa_dense.c and psa.cv1.conv.out_channels == psa_dense.cv1.conv.out_channels
    for a, b in zip(psa.m, psa_dense.m):
        for name in ("qkv", "proj", "pe"):
            assert getattr(a.attn, name).conv.weight.shape[0] == getattr(b.attn, name).conv.weight.shape[0]
        assert (a.attn.num_heads, a.attn.head_dim, a.attn.key_dim) == (
            b.attn.num_heads,
            b.attn.head_dim,
            b.attn.key_dim,
        )
        assert a.ffn[1].conv.out_channels == b.ffn[1].conv.out_channels
        assert a.ffn[0].conv.out_channels < b.ffn[0].conv.out_channels
    assert psa.cv2.conv.out_channels < psa_dense.cv2.conv.out_channels
    assert sum(isinstance(m, Attention) for m in det.modules()) == 1


@pytest.mark.parametrize("cfg", ["yolov8n-seg.yaml", "yolo11n-seg.yaml"])
def test_proto_keeps_its_output_and_first_conv(cfg, nexp_pruned):
    dense, det = YOLO(cfg).model, nexp_pruned[cfg]["model"].model
    proto, proto_dense = det.model[-1].proto, dense.model[-1].proto
    assert proto.cv3.conv.out_channels == proto_dense.cv3.conv.out_channels == det.model[-1].nm
    assert proto.cv1.conv.out_channels == proto_dense.cv1.conv.out_channels  # feeds the transposed conv
    assert proto.cv2.conv.out_channels < proto_dense.cv2.conv.out_channels


@pytest.mark.parametrize("cfg", FAMILIES)
def test_head_outputs_keep_their_width(cfg, nexp_pruned):
    dense, det = YOLO(cfg).model.model[-1], nexp_pruned[cfg]["model"].model.model[-1]
    for name in ("cv2", "cv3", "cv4"):
        if hasattr(dense, name):
            for a, b in zip(getattr(det, name), getattr(dense, name)):
                assert a[-1].out_channels == b[-1].out_channels  # the output conv
                assert sum(p.numel() for p in a.parameters()) < sum(p.numel() for p in b.parameters())  # hidden
    assert [p.shape for p in det.dfl.parameters()] == [p.shape for p in dense.dfl.parameters()]


@pytest.mark.parametrize(
    "cfg,block", [("yolo11n.yaml", C3k2), ("yolov8n-p6.yaml", C2), ("yolov8n-ghost.yaml", C3Ghost)]
)
def test_split_blocks_fold_back_into_their_own_class(cfg, block, nexp_pruned):
    dense, det = YOLO(cfg).model, nexp_pruned[cfg]["model"].model
    before = [(i, m) for i, m in enumerate(dense.model) if type(m) is block]
    after = [(i, m) for i, m in enumerate(det.model) if type(m) is block]
    assert [i for i, _ in before] == [i for i, _ in after] and after
    for (_, a), (_, b) in zip(after, before):
        assert (a.i, a.f, a.type) == (b.i, b.f, b.type)  # what DetectionModel's forward and printing read
        assert a.cv1.conv.out_channels <= b.cv1.conv.out_channels
    assert any(a.cv1.conv.out_channels < b.cv1.conv.out_channels for (_, a), (_, b) in zip(after, before))
