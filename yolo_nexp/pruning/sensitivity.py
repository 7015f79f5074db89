"""Per-group sensitivity: how much the detector's output moves when a group loses its least important channels.

Removal with the mean repair is simulated without touching the model: the consumers of the channels that
would go receive those channels' calibration means instead (a forward pre-hook), which is what the repair
makes of them, away from padded borders. The distortion compares the head's decoded output with the dense
model's on the same calibration images: class probabilities everywhere (a new false positive counts as much
as a lost detection), boxes and any task outputs (masks coefficients, keypoints, angles) weighted by the
dense model's confidence.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from ultralytics.utils import TQDM

from yolo_nexp.pruning.groups import IN_HANDLERS, PrunableGroup
from yolo_nexp.utils import mode

FRACTIONS = (0.25, 0.5, 0.75)  # fractions of a group's channels removed when measuring it


def head_output(model: nn.Module, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """The decoded head output (B, 4 + nc + extra, anchors) per batch, in eval mode."""
    with torch.no_grad(), mode(model):
        outs = [model(x) for x in images]
    outs = [o[0] if isinstance(o, (tuple, list)) else o for o in outs]
    return [o[0] if isinstance(o, (tuple, list)) else o for o in outs]  # Segment: (decoded, prototypes)


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


@contextmanager
def replaced_by_means(graph, linked: list[PrunableGroup], width: int, means: dict[nn.Module, torch.Tensor]):
    """While active, the consumers of the channels ``linked`` would lose at ``width`` receive their means."""
    removed: dict[nn.Module, set[int]] = {}
    for g in linked:
        group = graph.get_pruning_group(g.module, g.handler, g.order[: g.size - width].tolist())
        for item in group:
            conv = item.dep.target.module
            if item.dep.handler in IN_HANDLERS and conv in means:
                removed.setdefault(conv, set()).update(item.idxs)
    handles = []
    for conv, idxs in removed.items():
        index = torch.tensor(sorted(idxs), dtype=torch.long, device=means[conv].device)
        value = means[conv][index].view(1, -1, 1, 1)

        def hook(_m, args, index=index, value=value):
            x = args[0].clone()
            x[:, index] = value.to(x)
            return (x, *args[1:])

        handles.append(conv.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def measure(model, graph, sets, widths, means, images, nc: int, verbose: bool = True) -> list[dict[int, float]]:
    """Per linked set, the distortion at the allowed widths nearest to each of :data:`FRACTIONS` removed.

    Args:
        model (nn.Module): The (split) detection model, unpruned.
        graph: Torch-Pruning's dependency graph of ``model``.
        sets (list[list[PrunableGroup]]): Linked sets of groups, their channel order already set.
        widths (list[list[int]]): Allowed widths of each set, widest first.
        means (dict[nn.Conv2d, torch.Tensor]): Calibration mean of every conv input channel.
        images (list[torch.Tensor]): Calibration batches to measure on.
        nc (int): Number of classes of the head.
        verbose (bool): Show a progress bar.
    """
    reference = head_output(model, images)
    results = []
    for linked, ws in TQDM(list(zip(sets, widths)), desc="sensitivity", disable=not verbose):
        points = {min(ws[1:], key=lambda w: abs(1 - w / ws[0] - f)) for f in FRACTIONS} if len(ws) > 1 else set()
        curve = {}
        for w in sorted(points, reverse=True):
            with replaced_by_means(graph, linked, w, means):
                outs = head_output(model, images)
            curve[w] = sum(distortion(o, r, nc) for o, r in zip(outs, reference)) / len(outs)
        results.append(curve)
    return results
