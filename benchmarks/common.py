"""Helpers shared by the benchmark scripts (and the export tests)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def informative(model, batches: int = 4, imgsz: int = 64, seed: int = 0):
    """Make a randomly initialised YOLO give input-dependent scores: recalibrate BatchNorm, zero the head's priors.

    In a model built from yaml, activations shrink layer by layer to ~1e-7 at the head and every anchor
    gets the same score (Ultralytics' class prior, about -11.5), so NMS picks among ties arbitrarily and
    comparing detections would be meaningless. Recomputing BatchNorm statistics on noise keeps every
    layer's output at unit scale; zeroing the prior lets the features decide the scores. Weights of the
    convs are untouched, so speed and MACs are those of the model.
    """
    det = model.model if hasattr(model, "model") and isinstance(model.model, nn.Module) else model
    gen = torch.Generator().manual_seed(seed)
    for m in det.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    det.train()
    for _ in range(batches):
        det(torch.rand(2, 3, imgsz, imgsz, generator=gen))
    det.eval()
    head = det.model[-1]
    for seq in (*head.cv2, *head.cv3):
        seq[-1].bias.zero_()
    return model
