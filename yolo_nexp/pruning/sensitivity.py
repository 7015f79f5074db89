"""Per-group sensitivity: how much the detector's output moves when a group loses its least important channels.

Removal with the repair is simulated without touching the model: the consumers of the channels that would go
receive what the repair makes of them instead (a forward pre-hook; for the mean repair, the channels'
calibration means). The distortion compares the head's decoded output with the dense model's on the same
calibration images: class probabilities everywhere (a new false positive counts as much as a lost detection),
boxes and any task outputs (mask coefficients, keypoints, angles) weighted by the dense model's confidence.

Only the part of the network a group can change is run again: the outputs of every top-level layer on the
measurement images are kept from one dense forward pass, and each trial starts at the first layer that holds
one of the group's consumers (a head group runs the head alone).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from ultralytics.utils import TQDM

from yolo_nexp.pruning.groups import IN_HANDLERS, PrunableGroup
from yolo_nexp.utils import mode

FRACTIONS = (0.25, 0.5, 0.75)  # fractions of a group's channels removed when measuring it


class LayerCache:
    """Every top-level layer's output on some images, so that a forward pass can start at any layer.

    Args:
        model (nn.Module): An Ultralytics model (``model.model`` is its list of layers, each with ``f`` and ``i``).
        images (list[torch.Tensor]): The batches to keep outputs for.
    """

    def __init__(self, model: nn.Module, images: list[torch.Tensor]):
        """Run the model once on every batch, keeping each layer's output."""
        self.model = model
        self.layer_of = {m: i for i, layer in enumerate(model.model) for m in layer.modules()}
        self.outputs = [self._run(x, 0, []) for x in images]
        self.reference = [_decoded(y[-1]) for y in self.outputs]

    def _run(self, x, start: int, y: list) -> list:
        """Layer outputs from layer ``start`` on, given the outputs ``y`` of the layers before it."""
        y = list(y[:start])
        with torch.no_grad(), mode(self.model):
            for layer in self.model.model[start:]:
                if layer.f != -1:
                    x = y[layer.f] if isinstance(layer.f, int) else [x if j == -1 else y[j] for j in layer.f]
                elif y:
                    x = y[-1]
                x = layer(x)
                y.append(x)
        return y

    def head_outputs(self, start: int) -> list[torch.Tensor]:
        """The decoded head output per batch, rerunning the network from layer ``start``."""
        return [_decoded(self._run(y[start - 1] if start else None, start, y)[-1]) for y in self.outputs]

    def tail(self, start: int, copies: int = 1, index: int = 0) -> torch.Tensor:
        """The decoded head output of batch ``index`` rerun from layer ``start`` on ``copies`` stacked copies of it.

        Copy ``k`` is rows ``k * B`` to ``(k + 1) * B``, so that hooks can give every copy its own inputs (one pass
        for several trials). Only the kept outputs the rerun reads are copied.
        """
        y = self.outputs[index]
        reads = {start - 1} | {
            j for layer in self.model.model[start:] for j in ([layer.f] if isinstance(layer.f, int) else layer.f)
        }
        prefix = [y[j].repeat(copies, 1, 1, 1) if j in reads else None for j in range(start)]
        return _decoded(self._run(prefix[start - 1] if start else None, start, prefix)[-1])

    def first_layer(self, convs) -> int:
        """The first top-level layer that holds one of ``convs``."""
        return min(self.layer_of[c] for c in convs)


def _decoded(out) -> torch.Tensor:
    """The decoded head output (B, 4 + nc + extra, anchors) of an eval-mode forward."""
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out[0] if isinstance(out, (tuple, list)) else out  # Segment: (decoded, prototypes)


def distortion(out: torch.Tensor, ref: torch.Tensor, nc: int) -> float:
    """How far ``out`` is from the dense model's ``ref``: class-probability error plus confidence-weighted box
    (relative to the box's size) and task-output (relative to their spread) errors, per anchor."""
    p_out, p_ref = out[:, 4 : 4 + nc], ref[:, 4 : 4 + nc]
    conf = p_ref.max(1).values  # (B, anchors)
    cls = (p_out - p_ref).pow(2).sum(1).mean()
    size = ref[:, 2:4].pow(2).sum(1).clamp(min=1.0)
    box = (conf * (out[:, :4] - ref[:, :4]).pow(2).sum(1) / size).mean()
    extra = torch.zeros(())
    if ref.shape[1] > 4 + nc:
        e_out, e_ref = out[:, 4 + nc :], ref[:, 4 + nc :]
        spread = e_ref.var((0, 2), keepdim=True).clamp(min=1e-6)
        extra = (conf * ((e_out - e_ref).pow(2) / spread).mean(1)).mean()
    return float(cls + box + extra)


def removed_inputs(graph, linked: list[PrunableGroup], width: int) -> dict[nn.Conv2d, list[int]]:
    """Per consumer conv, the input channels it loses when every group of ``linked`` is cut to ``width``."""
    removed: dict[nn.Conv2d, set[int]] = {}
    for g in linked:
        group = graph.get_pruning_group(g.module, g.handler, g.order[: g.size - width].tolist())
        for item in group:
            if item.dep.handler in IN_HANDLERS:
                removed.setdefault(item.dep.target.module, set()).update(item.idxs)
    return {conv: sorted(idxs) for conv, idxs in removed.items()}


@contextmanager
def replaced(removed: dict[nn.Conv2d, list[int]], substitute):
    """While active, each consumer's removed input channels receive ``substitute(conv, x, index)`` instead."""

    def hook(conv, args):
        x = args[0].clone()
        index = indices[conv]
        x[:, index] = substitute(conv, args[0], index).to(x)
        return (x, *args[1:])

    indices = {conv: torch.tensor(idxs, dtype=torch.long) for conv, idxs in removed.items()}
    handles = [conv.register_forward_pre_hook(hook) for conv in removed]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def mean_substitute(means: dict[nn.Module, torch.Tensor]):
    """What the mean repair makes of removed channels: their calibration means."""
    return lambda conv, x, index: means[conv][index.to(means[conv].device)].view(1, -1, 1, 1)


def measure_points(ws: list[int]) -> list[int]:
    """The allowed widths nearest to each of :data:`FRACTIONS` removed, widest first."""
    if len(ws) < 2:
        return []
    return sorted({min(ws[1:], key=lambda w: abs(1 - w / ws[0] - f)) for f in FRACTIONS}, reverse=True)


def measure(model, graph, sets, widths, substitute, images, nc: int, verbose: bool = True) -> list[dict[int, float]]:
    """Per linked set, the distortion at the allowed widths nearest to each of :data:`FRACTIONS` removed.

    Args:
        model (nn.Module): The (split) detection model, unpruned.
        graph: Torch-Pruning's dependency graph of ``model``.
        sets (list[list[PrunableGroup]]): Linked sets of groups, their channel order already set.
        widths (list[list[int]]): Allowed widths of each set, widest first.
        substitute: ``substitute(conv, x, index)``, what a consumer receives for its removed input channels.
        images (list[torch.Tensor]): Calibration batches to measure on.
        nc (int): Number of classes of the head.
        verbose (bool): Show a progress bar.
    """
    cache = LayerCache(model, images)
    results = []
    for linked, ws in TQDM(list(zip(sets, widths)), desc="sensitivity", disable=not verbose):
        curve = {}
        for w in measure_points(ws):
            removed = removed_inputs(graph, linked, w)
            if not removed:
                curve[w] = 0.0
                continue
            with replaced(removed, substitute):
                outs = cache.head_outputs(cache.first_layer(removed))
            curve[w] = sum(distortion(o, r, nc) for o, r in zip(outs, cache.reference)) / len(outs)
        results.append(curve)
    return results
