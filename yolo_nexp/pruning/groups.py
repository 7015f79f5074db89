"""The prunable channel groups of a model, what removing their channels costs in MACs, and their removal.

Torch-Pruning's dependency graph gives the groups (a root conv's output channels with everything coupled
to them: residual adds, concat slices, consumers' input channels). Here each group learns its channel
order (least important first) and how many of its channels each member conv loses per channel removed,
so the MACs of any allocation can be computed exactly from widths, without pruning trial copies.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from yolo_nexp.arch.family import C2fSplit, never_pruned, traceable_head
from yolo_nexp.utils import mode

TRACE_SIZE = 64  # input size for tracing: any multiple of 32 gives the same graph; MACs ratios scale with it
OUT_HANDLERS = (tp.prune_conv_out_channels, tp.prune_depthwise_conv_out_channels)
IN_HANDLERS = (tp.prune_conv_in_channels, tp.prune_depthwise_conv_in_channels)


@dataclass
class PrunableGroup:
    """One group of coupled channels.

    Attributes:
        module (nn.Module): The root conv (its output channels index the group).
        handler: Torch-Pruning's out-channel pruning function for the root.
        size (int): Channels in the group.
        removed_per_channel (dict): ``{(conv, "in" | "out"): channels of that conv removed per group channel}``.
        order (torch.Tensor): Group channels, least important first (set by the pruner).
        scores (torch.Tensor): Their importance, ascending.
        group: Torch-Pruning's full group (every channel), what importance criteria score.
    """

    module: nn.Module
    handler: object
    size: int
    removed_per_channel: dict = field(default_factory=dict)
    group: object = None
    order: torch.Tensor | None = None
    scores: torch.Tensor | None = None


@contextmanager
def _trainable(model: nn.Module):
    """Let every parameter require grad (Torch-Pruning traces through autograd), then restore the flags by name.

    By name, because pruning replaces the parameter objects.
    """
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        yield model
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags.get(name, True))


def build_graph(model: nn.Module) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of a (C2f-split) detection model, traced with per-level head outputs."""
    param = next(model.parameters())
    example = torch.zeros(1, 3, TRACE_SIZE, TRACE_SIZE, device=param.device, dtype=param.dtype)
    with _trainable(model), traceable_head(model):
        return tp.DependencyGraph().build_dependency(model, example_inputs=example)


def prunable_groups(graph: tp.DependencyGraph, model: nn.Module) -> list[PrunableGroup]:
    """Every group whose root is a conv's output channels, except those the head needs (see ``never_pruned``)."""
    groups = []
    for group in graph.get_all_groups(ignored_layers=never_pruned(model), root_module_types=[nn.Conv2d]):
        dep = group[0].dep
        size = len(group[0].idxs)
        per_channel = {}
        for item in group:
            kind = "out" if item.dep.handler in OUT_HANDLERS else "in" if item.dep.handler in IN_HANDLERS else None
            if kind and isinstance(item.dep.target.module, nn.Conv2d):
                key = (item.dep.target.module, kind)
                per_channel[key] = per_channel.get(key, 0) + len(item.idxs) / size
        groups.append(PrunableGroup(dep.target.module, dep.handler, size, per_channel, group))
    return groups


def linked_sets(groups: list[PrunableGroup], model: nn.Module) -> list[list[PrunableGroup]]:
    """Groups that must keep equal widths, together: the two halves of every split C2f; every other group alone."""
    by_conv = {conv: g for g in groups for conv, kind in g.removed_per_channel if kind == "out"}
    linked, seen = [], set()
    for m in model.modules():
        if isinstance(m, C2fSplit) and m.cv0.conv in by_conv and m.cv1.conv in by_conv:
            pair = [by_conv[m.cv0.conv], by_conv[m.cv1.conv]]
            linked.append(pair)
            seen.update(id(g) for g in pair)
    return linked + [[g] for g in groups if id(g) not in seen]


class MacsModel:
    """Exact conv MACs at ``TRACE_SIZE`` for any choice of removed channels per group."""

    def __init__(self, model: nn.Module):
        """Record every conv's output size with one forward pass."""
        self.convs: dict[nn.Conv2d, tuple[int, int, int, int, int]] = {}
        param = next(model.parameters())
        handles = [
            m.register_forward_hook(lambda m, _i, out: self.convs.__setitem__(m, self._shape(m, out)))
            for m in model.modules()
            if isinstance(m, nn.Conv2d)
        ]
        try:
            with torch.no_grad(), mode(model):
                model(torch.zeros(1, 3, TRACE_SIZE, TRACE_SIZE, device=param.device, dtype=param.dtype))
        finally:
            for h in handles:
                h.remove()
        self.dense = self.macs({})

    @staticmethod
    def _shape(conv: nn.Conv2d, out: torch.Tensor) -> tuple[int, int, int, int, int]:
        o, i_per_group, kh, kw = conv.weight.shape
        return o, i_per_group * conv.groups, conv.groups, kh * kw, out.shape[-1] * out.shape[-2]

    def macs(self, removed: dict[tuple[nn.Conv2d, str], float]) -> float:
        """Conv MACs when ``removed[(conv, "in" | "out")]`` channels are gone from each conv."""
        total = 0.0
        for conv, (o, i, g, k, hw) in self.convs.items():
            o_left, i_left = o - removed.get((conv, "out"), 0), i - removed.get((conv, "in"), 0)
            if g > 1 and g == i == o:  # depthwise: one input channel per output channel, pruned together
                total += o_left * k * hw
            else:
                total += o_left * (i_left / g) * k * hw
        return total

    def cut(self, groups: list[PrunableGroup], kept: list[int]) -> float:
        """Fraction of the dense conv MACs removed when group ``j`` keeps ``kept[j]`` channels."""
        removed: dict = {}
        for g, k in zip(groups, kept):
            for key, per in g.removed_per_channel.items():
                removed[key] = removed.get(key, 0) + per * (g.size - k)
        return 1.0 - self.macs(removed) / self.dense


def remove_channels(
    graph: tp.DependencyGraph, groups: list[PrunableGroup], kept: list[int], before_prune=None
) -> dict[nn.Conv2d, torch.Tensor]:
    """Remove the least important ``size - kept`` channels of every group; ``before_prune(group)`` runs first.

    Each group's root channels are only touched by that group, so indices planned on the dense model stay
    valid while the groups are removed one after another; Torch-Pruning maps them onto the current consumers.

    Returns:
        (dict[nn.Conv2d, torch.Tensor]): For every conv that lost output channels, the indices it kept (sorted,
            in its indexing before the removal).
    """
    kept_out = {}
    for g, k in zip(groups, kept):
        if k >= g.size:
            continue
        group = graph.get_pruning_group(g.module, g.handler, g.order[: g.size - k].tolist())
        for item in group:
            conv = item.dep.target.module
            if item.dep.handler in OUT_HANDLERS and isinstance(conv, nn.Conv2d):
                keep = torch.ones(conv.out_channels, dtype=torch.bool)
                keep[torch.as_tensor(item.idxs, dtype=torch.long)] = False
                kept_out[conv] = keep.nonzero().flatten()
        if before_prune is not None:
            before_prune(group)
        group.prune()
    return kept_out
