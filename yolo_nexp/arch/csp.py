"""CSP blocks whose first conv is split in halves: C2f, C3k2 (a C2f subclass) and C2.

Their forward splits ``cv1``'s output in two with ``chunk``, which cuts at the middle of however many
channels ``cv1`` has: removing channels of one half would move the cut and mix the halves. The halves feed
different consumers, so they are ranked as separate groups that must keep equal widths. For pruning each
block is rewritten as a split module with two convs, ``cv0`` (first half) and ``cv1`` (second half), an
exact reparametrisation; afterwards it is folded back into its *original* class with its original
attributes, so that saved checkpoints hold only Ultralytics and torch classes.

C3 and C3k need nothing: their two branches are separate convs joined by a concat, which Torch-Pruning
follows by itself. C3Ghost is split too, for another reason (see :mod:`yolo_nexp.arch.ghost`), with the
:class:`HalvesSplit` defined here.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from ultralytics.nn.modules import C2, C2f, C3k2, Conv


def slice_conv(block: Conv, start: int, stop: int) -> Conv:
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


def concat_convs(first: Conv, second: Conv) -> Conv:
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


class HalvesSplit(nn.Module):
    """A block with its ``cv1`` split into ``cv0`` (first half of the outputs) and ``cv1`` (second half).

    Exists only while pruning; :meth:`fold` turns it back into the original class, with the original attributes
    and submodules in their original order. Subclasses define only :meth:`forward` (how the halves are used).

    Args:
        block (nn.Module): The stock block; its other submodules are shared, not copied.
    """

    def __init__(self, block: nn.Module):
        """Reparametrise ``block`` exactly."""
        super().__init__()
        half = block.cv1.conv.out_channels // 2
        self.stock_class = type(block)
        self.stock_order = list(block._modules)
        # Plain attributes of the original (c, and i/f/type/np that DetectionModel's forward reads).
        self.stock_attrs = {k: v for k, v in vars(block).items() if not k.startswith("_") and k != "training"}
        for key in ("i", "f", "type", "np"):
            if key in self.stock_attrs:
                setattr(self, key, self.stock_attrs[key])
        self.cv0 = slice_conv(block.cv1, 0, half)
        self.cv1 = slice_conv(block.cv1, half, 2 * half)
        for name, child in block.named_children():
            if name != "cv1":
                setattr(self, name, child)

    def halves(self, x: torch.Tensor) -> list[torch.Tensor]:
        """What the stock block's ``cv1(x)`` splits into."""
        return [self.cv0(x), self.cv1(x)]

    def fold(self) -> nn.Module:
        """The original class, equivalent to this module (both halves must have kept the same width)."""
        c0, c1 = self.cv0.conv.out_channels, self.cv1.conv.out_channels
        if c0 != c1:
            name = self.stock_class.__name__
            raise RuntimeError(f"cannot fold {name}: its halves were pruned to different widths ({c0} and {c1}).")
        block = self.stock_class.__new__(self.stock_class)
        nn.Module.__init__(block)
        block.__dict__.update(self.stock_attrs)
        if "c" in self.stock_attrs:
            block.c = c0
        for name in self.stock_order:
            setattr(block, name, concat_convs(self.cv0, self.cv1) if name == "cv1" else getattr(self, name))
        block.train(self.training)
        if "np" in self.stock_attrs:
            block.np = sum(p.numel() for p in block.parameters())
        return block


class C2fSplit(HalvesSplit):
    """C2f or C3k2 with ``cv1`` split in halves: the second half feeds the bottlenecks, every output is concatenated.

    The two halves are separate groups that must keep equal widths (``yolo_nexp.pruning.groups.linked_sets``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same computation as ``C2f.forward``."""
        y = self.halves(x)
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class C2Split(C2fSplit):
    """C2 split for pruning: the first half runs through the bottlenecks, the second goes straight to the concat."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same computation as ``C2.forward``."""
        return self.cv2(torch.cat((self.m(self.cv0(x)), self.cv1(x)), 1))


# Stock class -> its split form. Exact types: a subclass with another forward must not be split silently.
SPLITS: dict[type, type] = {C2f: C2fSplit, C3k2: C2fSplit, C2: C2Split}
