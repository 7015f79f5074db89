"""Sensitivity of every group at every width from a few backward passes: a first-order (Gauss-Newton) estimate.

Measuring each group's distortion (:mod:`yolo_nexp.pruning.sensitivity`) costs forward passes per group and
width. To first order, replacing a consumer's input channels ``j`` by their means moves the head output by
``J delta`` with ``delta_j = mean_j - x_j`` and ``J`` the Jacobian of the output with respect to that input,
so the distortion (a weighted squared error) is ``|| W^1/2 J delta ||^2``. Its expectation under a random
projection ``v ~ N(0, I)`` of the output is ``(v^T W^1/2 J delta)^2 = (u . delta)^2`` with ``u = J^T W^1/2 v``,
which one backward pass gives at every consumer at once. So per image and projection each group channel ``c``
gets a scalar ``t[c] = sum over its consumers and positions of u * delta``, and the distortion of removing
any set ``R`` of channels is estimated by ``(sum_{c in R} t[c])^2`` averaged over images and projections:
every width of every group from the same passes, and of several groups together (cross terms included).

Cost: one forward and ``projections`` backward passes on the measurement images. The estimate is exact for a
linear network and ranks groups as the measured distortion does where the network is close to linear around
the cut; ``benchmarks/prune_cost.py`` compares the two on a real model.
"""

from __future__ import annotations

from contextlib import closing

import torch
from torch import nn
from ultralytics.utils import TQDM

from yolo_nexp.pruning.groups import IN_HANDLERS, PrunableGroup
from yolo_nexp.utils import chunks, mode


def output_weights(ref: torch.Tensor, nc: int) -> torch.Tensor:
    """Per-element weights whose weighted squared error, summed, is :func:`sensitivity.distortion` per image."""
    anchors = ref.shape[-1]
    conf = ref[:, 4 : 4 + nc].max(1, keepdim=True).values
    size = ref[:, 2:4].pow(2).sum(1, keepdim=True).clamp(min=1.0)
    w = torch.ones_like(ref)
    w[:, :4] = conf / size
    if ref.shape[1] > 4 + nc:
        spread = ref[:, 4 + nc :].var((0, 2), keepdim=True).clamp(min=1e-6)
        w[:, 4 + nc :] = conf / (spread * (ref.shape[1] - 4 - nc))
    return w / anchors


def consumer_reads(groups: list[PrunableGroup]) -> dict[nn.Conv2d, list[tuple[int, int, int]]]:
    """Per consumer conv: (group index, input channel, group channel) for every group channel it reads."""
    reads = {}
    for i, g in enumerate(groups):
        for item in g.group:
            if item.dep.handler in IN_HANDLERS and isinstance(item.dep.target.module, nn.Conv2d):
                for idx, root in zip(item.idxs, item.root_idxs):
                    reads.setdefault(item.dep.target.module, []).append((i, idx, root))
    return reads


def projected_gradients(
    model, convs, images, nc: int, projections: int = 2, seed: int = 0, desc="sensitivity", verbose=True
):
    """Per batch and random output projection, every consumer's input and the projection's gradient there.

    The output is weighted by :func:`output_weights` and projected on ``v ~ N(0, I)``; one backward pass gives
    ``u = J^T W^1/2 v`` at every consumer of ``convs`` at once (see the module). Parameters do not require
    gradients meanwhile and get their flags back, and the hooks are removed, when the generator ends or is closed
    (callers wrap it in ``contextlib.closing``).

    Args:
        model (nn.Module): The (split) detection model.
        convs (Iterable[nn.Conv2d]): The consumers whose inputs and gradients are wanted.
        images (list[torch.Tensor]): Batches to run.
        nc (int): Number of classes of the head.
        projections (int): Random output projections (backward passes) per batch.
        seed (int): Seed of the projections.
        desc (str): Label of the progress bar.
        verbose (bool): Show a progress bar.

    Yields:
        tuple[int, dict, dict]: Per chunk of a batch (:func:`yolo_nexp.utils.chunks`), the projection's index (0 first: the inputs
        are new), each consumer's detached input, and each consumer's gradient ``u`` (consumers the decoded output
        does not depend on, such as Segment's prototypes, are left out).
    """
    gen = torch.Generator().manual_seed(seed)
    saved: dict[nn.Conv2d, torch.Tensor] = {}

    def pre_hook(conv, args):
        # a node of its own, so its gradient comes from this consumer only; an input no gradient flows to yet (the
        # first consumers: parameters are frozen) becomes a leaf, so no pass runs back to the images
        x = args[0].view_as(args[0]) if args[0].requires_grad else args[0].detach().requires_grad_()
        saved[conv] = x
        return (x, *args[1:])

    handles = [conv.register_forward_pre_hook(pre_hook) for conv in convs]
    params = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in params:
            p.requires_grad_(False)
        with mode(model), torch.enable_grad():
            for batch in TQDM([c for b in images for c in chunks(b)], desc=desc, disable=not verbose):
                model.model[-1].shape = None  # the head's anchors may be cached from an inference-mode pass
                out = model(batch.clone())  # calibration images may be inference tensors: they cannot require grad
                out = out[0] if isinstance(out, (tuple, list)) else out
                out = out[0] if isinstance(out, (tuple, list)) else out
                weights = output_weights(out.detach(), nc).sqrt()
                consumers, tensors = list(saved), list(saved.values())
                inputs = {conv: t.detach() for conv, t in saved.items()}
                for k in range(projections):
                    v = torch.randn(out.shape, generator=gen).to(out)
                    # autograd.grad, not backward + retain_grad: no gradient accumulated into every kept tensor
                    # (the sensitivity of yolov8s at 640 took 29-30 s instead of 36)
                    grads = torch.autograd.grad(
                        (out * weights * v).sum(), tensors, retain_graph=k < projections - 1, allow_unused=True
                    )
                    yield k, inputs, {conv: g for conv, g in zip(consumers, grads) if g is not None}
                saved.clear()
    finally:
        for h in handles:
            h.remove()
        for p, flag in params.items():
            p.requires_grad_(flag)


def channel_effects(model, groups, means, images, nc: int, projections: int = 2, seed: int = 0, verbose=True):
    """Per group, ``t`` of shape (samples, group channels): the first-order output change of removing each channel.

    Args:
        model (nn.Module): The (split) detection model, unpruned.
        groups (list[PrunableGroup]): The prunable groups.
        means (dict[nn.Conv2d, torch.Tensor]): Calibration mean of every conv input channel.
        images (list[torch.Tensor]): Batches to estimate on.
        nc (int): Number of classes of the head.
        projections (int): Random output projections (backward passes) per batch.
        seed (int): Seed of the projections.
        verbose (bool): Show a progress bar.
    """
    reads = consumer_reads(groups)
    index = {
        conv: (torch.tensor([r[0] for r in rs]), torch.tensor([r[1] for r in rs]), torch.tensor([r[2] for r in rs]))
        for conv, rs in reads.items()
    }
    effects = [[] for _ in groups]
    # closing: an error here removes the hooks at once, not when the traceback lets the generator go
    with closing(projected_gradients(model, reads, images, nc, projections, seed, verbose=verbose)) as gradients:
        for _, inputs, grads in gradients:
            samples = next(iter(inputs.values())).shape[0]
            per_group = [torch.zeros(samples, g.size) for g in groups]
            for conv, u in grads.items():
                delta = means[conv].to(u).view(1, -1, 1, 1) - inputs[conv]
                s = (u * delta).sum((2, 3)).float().cpu()  # (B, input channels)
                group_idx, ch, root = index[conv]
                for i in group_idx.unique().tolist():
                    sel = group_idx == i
                    per_group[i].index_add_(1, root[sel], s[:, ch[sel]])
            for i, e in enumerate(per_group):
                effects[i].append(e)
    return [torch.cat(e) for e in effects]


def estimate(model, sets, widths, means, images, nc: int, projections: int = 2, seed: int = 0, verbose=True):
    """Per linked set, the estimated distortion at every allowed width (same form as ``sensitivity.measure``).

    The groups of a set lose their least important channels together, so their effects add before squaring.
    """
    groups = [g for linked in sets for g in linked]
    effects = iter(channel_effects(model, groups, means, images, nc, projections, seed, verbose))
    curves = []
    for linked, ws in zip(sets, widths):
        # cumulative effect of removing the first r channels of each group's order, r = 0 .. size
        cum = sum(torch.nn.functional.pad(torch.cumsum(next(effects)[:, g.order], 1), (1, 0)) for g in linked)
        d = cum.pow(2).mean(0)
        curves.append({w: float(d[ws[0] - w]) for w in ws[1:]})
    return curves
