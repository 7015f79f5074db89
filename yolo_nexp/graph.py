"""Ultralytics-aware dependency handling: the C2f split/fold and a traceable Detect head.

Torch-Pruning follows concat, add, upsample and max-pool by itself; two places of YOLOv8 need help
(DESIGN.md section 2):

- ``C2f`` splits ``cv1``'s output with ``chunk``, which Torch-Pruning cannot prune through. For
  pruning, each C2f is rewritten as :class:`C2fSplit` (two convs ``cv0``/``cv1``, an exact
  reparametrisation) and folded back into a stock ``C2f`` afterwards, so saved checkpoints hold
  only Ultralytics and torch classes.
- ``Detect`` concatenates all levels after a ``view``, which confuses the index mapping; while
  tracing it returns its per-level branch outputs instead.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from ultralytics.engine.model import Model
from ultralytics.nn.modules import SPPF, C2f, Concat, Conv, Detect
from ultralytics.nn.tasks import DetectionModel


def detection_model(model) -> DetectionModel:
    """The ``DetectionModel`` of an Ultralytics ``YOLO`` object (or the model itself).

    Raises:
        TypeError: If it is not a YOLOv8-style detection model: a plain ``Detect`` head and YOLOv8's blocks only.
    """
    det = model.model if isinstance(model, Model) else model
    layers = getattr(det, "model", None)
    head = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
    if not isinstance(det, DetectionModel) or type(head) is not Detect:  # Segment/Pose/OBB subclass Detect
        found = type(head).__name__ if head is not None else type(det).__name__
        raise TypeError(
            f"model: yolo-nexp prunes YOLOv8 detection models (Detect head); this one has {found}. "
            f"Use a YOLOv8 detection model, e.g. model=yolov8n.yaml or a detection .pt."
        )
    others = sorted({type(m).__name__ for m in det.model if type(m) not in YOLOV8_BLOCKS})
    if others:
        raise TypeError(
            f"model: contains {', '.join(others)}, which is not a YOLOv8 block; yolo-nexp prunes YOLOv8 detection "
            f"models (Conv, C2f, SPPF, Concat, Upsample, Detect)."
        )
    return det


def _slice_conv(block: Conv, start: int, stop: int) -> Conv:
    """A copy of an Ultralytics ``Conv`` block keeping output channels ``start:stop``."""
    out = copy.deepcopy(block)
    keep = slice(start, stop)
    out.conv.weight = nn.Parameter(block.conv.weight.data[keep].clone())
    if block.conv.bias is not None:
        out.conv.bias = nn.Parameter(block.conv.bias.data[keep].clone())
    out.conv.out_channels = stop - start
    bn = getattr(out, "bn", None)
    if bn is not None:
        for name in ("weight", "bias"):
            setattr(bn, name, nn.Parameter(getattr(block.bn, name).data[keep].clone()))
        bn.running_mean = block.bn.running_mean[keep].clone()
        bn.running_var = block.bn.running_var[keep].clone()
        bn.num_features = stop - start
    return out


def _concat_convs(first: Conv, second: Conv) -> Conv:
    """One ``Conv`` block whose output channels are ``first``'s followed by ``second``'s."""
    out = copy.deepcopy(first)
    out.conv.weight = nn.Parameter(torch.cat([first.conv.weight.data, second.conv.weight.data]))
    if first.conv.bias is not None:
        out.conv.bias = nn.Parameter(torch.cat([first.conv.bias.data, second.conv.bias.data]))
    out.conv.out_channels = first.conv.out_channels + second.conv.out_channels
    if getattr(out, "bn", None) is not None:
        for name in ("weight", "bias"):
            setattr(
                out.bn, name, nn.Parameter(torch.cat([getattr(first.bn, name).data, getattr(second.bn, name).data]))
            )
        out.bn.running_mean = torch.cat([first.bn.running_mean, second.bn.running_mean])
        out.bn.running_var = torch.cat([first.bn.running_var, second.bn.running_var])
        out.bn.num_features = out.conv.out_channels
    return out


class C2fSplit(nn.Module):
    """C2f with ``cv1`` split into two convs (``cv0``: first half, ``cv1``: second half), prunable by Torch-Pruning.

    Exists only while pruning; :meth:`fold` turns it back into a stock ``C2f``.
    """

    def __init__(self, c2f: C2f):
        """Reparametrise ``c2f`` exactly; ``cv2`` and the bottlenecks are shared, not copied."""
        super().__init__()
        c = c2f.c
        self.cv0 = _slice_conv(c2f.cv1, 0, c)
        self.cv1 = _slice_conv(c2f.cv1, c, 2 * c)
        self.cv2 = c2f.cv2
        self.m = c2f.m
        # Plain attributes of the original (c, and i/f/type/np that DetectionModel's forward reads).
        self.stock_attrs = {k: v for k, v in vars(c2f).items() if not k.startswith("_") and k != "training"}
        for key in ("i", "f", "type", "np"):
            if key in self.stock_attrs:
                setattr(self, key, self.stock_attrs[key])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same computation as ``C2f.forward``."""
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))

    def fold(self) -> C2f:
        """A stock ``C2f`` equivalent to this module (both halves must have kept the same width)."""
        c0, c1 = self.cv0.conv.out_channels, self.cv1.conv.out_channels
        if c0 != c1:
            raise RuntimeError(f"cannot fold C2f: its halves were pruned to different widths ({c0} and {c1}).")
        c2f = C2f.__new__(C2f)
        nn.Module.__init__(c2f)
        c2f.__dict__.update(self.stock_attrs)
        c2f.c = c0
        c2f.cv1 = _concat_convs(self.cv0, self.cv1)
        c2f.cv2 = self.cv2
        c2f.m = self.m
        c2f.train(self.training)
        if "np" in self.stock_attrs:
            c2f.np = sum(p.numel() for p in c2f.parameters())
        return c2f


# Top-level blocks of YOLOv8 detection models (n/s/m/l/x, p2/p6): the dependencies handled here.
YOLOV8_BLOCKS = (Conv, C2f, C2fSplit, SPPF, Concat, nn.Upsample, Detect)


def _replace_modules(model: nn.Module, kind: type, convert) -> int:
    """Replace every submodule of type ``kind`` by ``convert(module)``; returns how many were replaced."""
    targets = [(name, m) for name, m in model.named_modules() if type(m) is kind]
    for name, m in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, convert(m))
    return len(targets)


@contextmanager
def c2f_split(model: nn.Module) -> Iterator[nn.Module]:
    """Split every C2f into a :class:`C2fSplit` for the duration of the block, then fold them back (also on error)."""
    _replace_modules(model, C2f, C2fSplit)
    try:
        yield model
    finally:
        _replace_modules(model, C2fSplit, C2fSplit.fold)


def _per_level_forward(head: Detect):
    """A Detect forward that returns its branch outputs per level, so tracing sees no cross-level view/cat."""

    def forward(x: list[torch.Tensor]) -> list[torch.Tensor]:
        return [branch[i](x[i]) for branch in (head.cv2, head.cv3) for i in range(head.nl)]

    return forward


@contextmanager
def traceable_head(model: DetectionModel) -> Iterator[Detect]:
    """Let the Detect head return per-level outputs for the duration of the block."""
    head = model.model[-1]
    head.forward = _per_level_forward(head)
    try:
        yield head
    finally:
        del head.forward  # back to the class method


def never_pruned(model: DetectionModel) -> list[nn.Module]:
    """Layers whose output channels must be kept: the last conv of each Detect branch, and DFL."""
    head = model.model[-1]
    return [branch[i][-1] for branch in (head.cv2, head.cv3) for i in range(head.nl)] + [head.dfl]


def conv_blocks(model: nn.Module) -> dict[str, Conv]:
    """Every Ultralytics ``Conv`` block (Conv2d + BN + act, DWConv included) by module name: the prunable units."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Conv)}


def conv_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every Ultralytics ``Conv`` block, by module name."""
    return {name: m.conv.out_channels for name, m in conv_blocks(model).items()}


def is_pruned(model: DetectionModel) -> bool:
    """Whether ``model``'s layer widths differ from what its own ``yaml`` builds (the dense architecture)."""
    dense = DetectionModel(copy.deepcopy(model.yaml), nc=model.model[-1].nc, verbose=False)
    return conv_widths(dense) != conv_widths(model)
