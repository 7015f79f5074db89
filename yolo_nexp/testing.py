"""Stand-ins for trained models in the test suite and the benchmarks, kept in one place for both.

Nothing in the pruning pipeline uses this module; it ships with the package so that ``tests/`` and
``benchmarks/`` can share it without importing each other.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def informative(model, batches: int = 4, imgsz: int = 64, seed: int = 0, gain: float = 0.7):
    """Make a randomly initialised YOLO give input-dependent scores: recalibrate BatchNorm, zero the head's priors.

    In a model built from yaml, activations shrink layer by layer to ~1e-7 at the head and every anchor
    gets the same score (Ultralytics' class prior, about -11.5), so NMS picks among ties arbitrarily and
    comparing detections would be meaningless. Recomputing BatchNorm statistics on noise brings every
    layer back to a useful scale; ``gain`` < 1 keeps the random network out of the chaotic regime where
    fp32 rounding differences grow layer by layer (gain 1 gave 4e-4 score differences between PyTorch
    and onnxruntime for yolov8n, 0.7 gives 2e-7). Zeroing the prior lets the features decide the scores.
    Conv weights are untouched, so speed and MACs are those of the model.

    Args:
        model (ultralytics.YOLO | nn.Module): A detection-family model (or its ``YOLO`` object), changed in place.
        batches (int): Noise batches (of 2 images) the BatchNorm statistics are recomputed on.
        imgsz (int): Size of the noise images.
        seed (int): Seed of the noise.
        gain (float): Factor on every BatchNorm's weight after recalibration.

    Returns:
        (ultralytics.YOLO | nn.Module): ``model`` itself.
    """
    det = model.model if hasattr(model, "model") and isinstance(model.model, nn.Module) else model
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in det.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    det.train()
    for _ in range(batches):
        det(torch.rand(2, 3, imgsz, imgsz, generator=gen))
    det.eval()
    for m in norms:
        m.weight.mul_(gain)
    head = det.model[-1]
    for seq in (*head.cv2, *head.cv3):
        seq[-1].bias.zero_()
    return model
