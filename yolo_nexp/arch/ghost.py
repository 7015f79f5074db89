"""Ghost blocks (YOLOv8-ghost): GhostConv, GhostBottleneck, C3Ghost.

A ``GhostConv`` computes ``y = cv1(x)`` and outputs ``cat(y, cv2(y))`` with ``cv2`` depthwise: output channels
``j`` and ``j + c_`` both come from ``y``'s channel ``j``. Torch-Pruning follows this by itself (the depthwise
conv ties its input and output channels; the concat maps both slices back to ``cv1``).

What it cannot see is the residual stream of C3Ghost: each ``GhostBottleneck`` adds a GhostConv's output to
its input, ``C3Ghost.cv1``'s output, so stream channels ``j`` and ``j + c_`` are produced by the same
channel of every bottleneck's last GhostConv. Rooted at ``C3Ghost.cv1``, one group would hold both and
could lose one without the other, which leaves the model inconsistent. Splitting ``cv1`` in halves for
pruning makes one group channel stand for the pair, so they always go together; the halves stay equal
and fold back into a stock ``C3Ghost``.
"""

from __future__ import annotations

import torch
from ultralytics.nn.modules import C3Ghost

from yolo_nexp.arch.csp import HalvesSplit


class C3GhostSplit(HalvesSplit):
    """C3Ghost with ``cv1`` split in halves; both halves sit in one group (tied through the ghost residuals)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same computation as ``C3.forward``."""
        return self.cv3(torch.cat((self.m(torch.cat(self.halves(x), 1)), self.cv2(x)), 1))


GHOST_SPLITS: dict[type, type] = {C3Ghost: C3GhostSplit}
