"""Property-based tests: any ratio, rounding, criterion, scale, class count and input size gives a working model."""

import copy
import tempfile
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel

import yolo_nexp
from yolo_nexp.pruning.allocation import ALLOCATIONS
from yolo_nexp.scoring.criteria import CRITERIA


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    ratio=st.floats(0.0, 0.95),
    lower=st.floats(0.0, 1.0),
    round_to=st.sampled_from([1, 4, 8, 16]),
    criterion=st.sampled_from(CRITERIA),
    allocation=st.sampled_from(ALLOCATIONS),
    scale=st.sampled_from(["n", "s"]),
    nc=st.integers(1, 90),
    imgsz=st.sampled_from([32, 64, 96]),
)
def test_pruned_model_forwards_shrinks_monotonically_and_round_trips(
    ratio, lower, round_to, criterion, allocation, scale, nc, imgsz
):
    dense = DetectionModel(f"yolov8{scale}.yaml", nc=nc, verbose=False)
    x = torch.rand(1, 3, imgsz, imgsz)
    expected = dense.eval()(x)[0].shape
    kw = dict(
        round_to=round_to, criterion=criterion, allocation=allocation, imgsz=imgsz, batches=1, batch=2, verbose=False
    )
    less_pruned = copy.deepcopy(dense)
    report = yolo_nexp.prune(dense, ratio=ratio, **kw)
    report_lower = yolo_nexp.prune(less_pruned, ratio=ratio * lower, **kw)

    assert dense.eval()(x)[0].shape == expected == (1, 4 + nc, expected[2])
    assert report.macs_after <= report_lower.macs_after <= report.macs_before  # MACs never grow with the ratio
    assert all(a >= 1 for _, a in report.channels.values())

    yolo = YOLO(f"yolov8{scale}.yaml")
    yolo.model = dense
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.pt"
        yolo.save(path)
        loaded = YOLO(path).model.float().eval()
    assert sum(p.numel() for p in loaded.parameters()) == report.params_after
    assert loaded(x)[0].shape == expected
