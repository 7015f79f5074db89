"""Repair on removal: a channel that is constant over the calibration images goes without changing the output."""

import pytest
import torch
from ultralytics import YOLO

import yolo_nexp
from yolo_nexp.testing import informative

from .conftest import every_fourth_channel, replicate_padding


def _outputs(det, x):
    det.eval()
    with torch.no_grad():
        return det(x)[0]


@pytest.mark.parametrize("scale", ["n", "s"])
@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_constant_channels_go_without_changing_the_output(scale, allocation):
    model = informative(YOLO(f"yolov8{scale}.yaml"))
    det = model.model
    replicate_padding(det)
    every_fourth_channel(det, constant=True)
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    before = _outputs(det, x)
    kw = dict(ratio=0.25, round_to=1, imgsz=64, batches=1, batch=2, allocation=allocation, verbose=False)
    report = yolo_nexp.prune(model, criterion="bn", repair="mean", **kw)  # BN scale 0 ranks them first
    assert report.macs_reduction > 0.4 and report.repair == "mean"
    torch.testing.assert_close(_outputs(det, x), before, rtol=1e-3, atol=1e-3)

    unrepaired = informative(YOLO(f"yolov8{scale}.yaml"))  # the same cut without the repair: the output moves
    replicate_padding(unrepaired.model)
    every_fourth_channel(unrepaired.model, constant=True)
    yolo_nexp.prune(unrepaired, criterion="bn", repair="none", **kw)
    assert (_outputs(unrepaired.model, x) - before).abs().max() > 0.05
