"""Repair on removal: a channel that is constant over the calibration images goes without changing the output."""

import pytest
import torch
from torch import nn
from ultralytics import YOLO

import yolo_nexp
from benchmarks.common import informative
from yolo_nexp.graph import conv_blocks, never_pruned


def _outputs(det, x):
    det.eval()
    with torch.no_grad():
        return det(x)[0]


def _replicate_padding(det) -> None:
    """Pad by repeating the border: a constant channel then contributes the same everywhere, borders included,
    so folding its mean is exact and any difference in the output is a repair error, not a border effect."""
    for m in det.modules():
        if isinstance(m, nn.Conv2d) and max(m.padding) > 0:
            m.padding_mode = "replicate"


def _make_every_fourth_channel_constant(det, seed: int = 0) -> None:
    """Channels 1, 5, 9, ... of every prunable Conv block output a constant (BN scale 0, a random non-zero shift):
    removing them without repair shifts every consumer (conv blocks, C2f and SPPF concats, residual adds, neck
    concats, Detect's output convs with a bias)."""
    gen = torch.Generator().manual_seed(seed)
    fixed = {id(m) for m in never_pruned(det)}
    with torch.no_grad():
        for block in conv_blocks(det).values():
            if id(block.conv) not in fixed:
                const = torch.arange(block.conv.out_channels) % 4 == 1
                block.bn.weight[const] = 0.0
                block.bn.bias[const] = 0.5 + torch.rand(int(const.sum()), generator=gen)


@pytest.mark.parametrize("scale", ["n", "s"])
@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_constant_channels_go_without_changing_the_output(scale, allocation):
    model = informative(YOLO(f"yolov8{scale}.yaml"))
    det = model.model
    _replicate_padding(det)
    _make_every_fourth_channel_constant(det)
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    before = _outputs(det, x)
    kw = dict(ratio=0.25, round_to=1, imgsz=64, batches=1, batch=2, allocation=allocation, verbose=False)
    report = yolo_nexp.prune(model, criterion="bn", repair="mean", **kw)  # BN scale 0 ranks them first
    assert report.macs_reduction > 0.4 and report.repair == "mean"
    torch.testing.assert_close(_outputs(det, x), before, rtol=1e-3, atol=1e-3)

    unrepaired = informative(YOLO(f"yolov8{scale}.yaml"))  # the same cut without the repair: the output moves
    _replicate_padding(unrepaired.model)
    _make_every_fourth_channel_constant(unrepaired.model)
    yolo_nexp.prune(unrepaired, criterion="bn", repair="none", **kw)
    assert (_outputs(unrepaired.model, x) - before).abs().max() > 0.05
