"""Validation is never cut short: Ultralytics' NMS time limit is lifted inside ``uncut_nms`` and cuts are counted."""

import itertools

import torch
from ultralytics.utils import LOGGER, nms

from yolo_nexp.validation import uncut_nms


def _predictions() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(4, 6, 50, generator=gen)  # 4 images, (x, y, w, h, 2 class scores), 50 anchors
    pred[:, 2:4] = pred[:, 2:4] * 0.1 + 0.05
    return pred


def _slow_clock(monkeypatch):
    clock = itertools.count(0, 10)  # every reading of the clock is 10 s later: the limit (2.2 s) fires at once
    monkeypatch.setattr(nms.time, "time", lambda: next(clock))


def test_stock_nms_drops_images_when_slow(monkeypatch):
    _slow_clock(monkeypatch)
    out = nms.non_max_suppression(_predictions(), conf_thres=0.1)
    assert len(out[0]) > 0 and all(len(o) == 0 for o in out[1:])  # what the lifted limit must prevent


def test_uncut_nms_keeps_every_image_and_counts_cuts(monkeypatch):
    _slow_clock(monkeypatch)
    with uncut_nms() as cuts:
        out = nms.non_max_suppression(_predictions(), conf_thres=0.1)
        assert all(len(o) > 0 for o in out)
        assert cuts.count == 0
        LOGGER.warning("NMS time limit 2.200s exceeded")
        assert cuts.count == 1
    assert nms.non_max_suppression.__name__ == "non_max_suppression"  # restored
