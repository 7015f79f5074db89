"""The ``shapley`` criterion: each channel's Shapley value of the output distortion its group's channels cause.

Within a group of ``n`` channels, the game is ``D(A)``: the distortion of the detector's output
(:func:`yolo_nexp.pruning.sensitivity.distortion`, against the dense output on the same images) when the channels
of ``A`` are absent, an absent channel being replaced at every consumer by its calibration mean (what the mean
repair folds in: :func:`~yolo_nexp.pruning.sensitivity.mean_substitute`). A channel's Shapley value is its marginal
``D(A + c) - D(A)`` averaged over the order in which the channels go; the more distortion a channel adds when it
goes, the more important it is (pruned last). When the distortion is additive over channels, the value is each
channel's solo effect ``D({c})``.

Estimate: Monte-Carlo permutation sampling, truncated. Each of :data:`SHAPLEY_PERMUTATIONS` random permutations
of the group is cut into consecutive runs of :data:`SHAPLEY_DEPTH` channels; each run is removed one channel after
the other starting from the dense model, so every channel gets one marginal per permutation, measured with 0 to
``SHAPLEY_DEPTH - 1`` random other channels of its group already absent. For groups of at most ``SHAPLEY_DEPTH``
channels this is the plain permutation estimate of the Shapley value; for larger ones it is the Shapley value of
the game restricted to coalitions of fewer than ``SHAPLEY_DEPTH`` absent channels (a truncated semivalue): removal
in the company of a few others, not of half the group. Seeded by the prune ``seed``.

The distortion is measured on the first :data:`SHAPLEY_IMAGES` images of the first kept calibration batch,
centre-cropped to at most :data:`SHAPLEY_SIZE` pixels a side. The tail of the network from the group's first
consumer layer is rerun (:class:`~yolo_nexp.pruning.sensitivity.LayerCache`), several trials stacked in one pass.

Cost: one full forward pass of the ``I = SHAPLEY_IMAGES`` cropped images, then ``SHAPLEY_PERMUTATIONS x n_g``
trials for each group ``g`` of ``n_g`` channels: in all ``P x sum_g n_g`` tail forward passes of ``I`` images
(yolov8n: 59 groups, 4960 channels; yolov8s: 9344), each from the group's first consumer layer to the head,
computed in ``sum_g ceil(P n_g / M)`` calls of ``M = max(1, SHAPLEY_PIXELS // (I h w))`` trials each. The images'
size is bounded by the crop, so the cost does not grow with ``imgsz`` beyond :data:`SHAPLEY_SIZE`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch_pruning as tp
from torch import nn

from yolo_nexp.pruning.sensitivity import LayerCache, distortion, mean_substitute, replaced

SHAPLEY_PERMUTATIONS = 1  # random permutations of each group's channels (marginals per channel)
SHAPLEY_DEPTH = 8  # truncation: a marginal is measured with at most SHAPLEY_DEPTH - 1 other channels absent
SHAPLEY_IMAGES = 1  # images of the first kept calibration batch the distortion is measured on
SHAPLEY_SIZE = 160  # centre crop of those images, pixels a side (a multiple of 32, the largest stride)
SHAPLEY_PIXELS = 64 * 64 * 64  # input pixels per tail pass: trials stacked in one pass (64 images of 64 px)
_IN_HANDLERS = (tp.prune_conv_in_channels, tp.prune_depthwise_conv_in_channels)


def permutation_shapley(
    value: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    permutations: int = SHAPLEY_PERMUTATIONS,
    depth: int = SHAPLEY_DEPTH,
    generator: torch.Generator | None = None,
    batch: int = 64,
) -> torch.Tensor:
    """Truncated Monte-Carlo permutation estimate of the Shapley values of the game ``value`` (see the module).

    Args:
        value: ``value(absent)`` for a (M, n) bool tensor of coalitions (True: the player is absent), the game's
            value of each, shape (M,); the value of no absent player is taken as 0.
        n (int): Number of players.
        permutations (int): Random permutations; each gives every player one marginal.
        depth (int): Length of the runs each permutation is cut into (``>= n``: no truncation).
        generator (torch.Generator | None): Source of the permutations.
        batch (int): Coalitions per call of ``value``.

    Returns:
        (torch.Tensor): The estimate per player, float64, shape (n,).
    """
    total = torch.zeros(n, dtype=torch.float64)
    for _ in range(permutations):
        perm = torch.randperm(n, generator=generator)
        absent = torch.zeros(n, n, dtype=torch.bool)  # row r: the coalition after the r-th removal
        first = torch.zeros(n, dtype=torch.bool)  # the row starts a run: its predecessor is the dense model
        for start in range(0, n, depth):
            run = perm[start : start + depth]
            first[start] = True
            for k in range(len(run)):
                absent[start + k, run[: k + 1]] = True
        d = torch.cat([value(absent[i : i + batch]).double().cpu() for i in range(0, n, batch)])
        before = torch.where(first, torch.zeros_like(d), d.roll(1))
        total[perm] += d - before
    return total / max(permutations, 1)


def _consumers(group) -> dict[nn.Conv2d, tuple[list[int], torch.Tensor]]:
    """Per consumer conv of ``group``: the input channels it reads from the group and the group channel of each."""
    reads: dict[nn.Conv2d, tuple[list[int], list[int]]] = {}
    for item in group:
        if item.dep.handler in _IN_HANDLERS and isinstance(item.dep.target.module, nn.Conv2d):
            if None in item.root_idxs:
                continue
            idxs, roots = reads.setdefault(item.dep.target.module, ([], []))
            idxs.extend(item.idxs)
            roots.extend(item.root_idxs)
    return {conv: (idxs, torch.tensor(roots, dtype=torch.long)) for conv, (idxs, roots) in reads.items()}


def _crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Centre crop of a (B, 3, H, W) batch to at most ``size`` a side."""
    h, w = images.shape[2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return images[:, :, top : top + min(h, size), left : left + min(w, size)]


class ShapleyImportance(tp.importance.Importance):
    """Per group channel, its Shapley value of the output distortion (see the module docstring).

    Args:
        model (nn.Module): The (split) detection model, unpruned.
        means (dict[nn.Conv2d, torch.Tensor]): Calibration mean of every conv input channel.
        images (torch.Tensor): A calibration batch; its first :data:`SHAPLEY_IMAGES` images, cropped, are used.
        nc (int): Number of classes of the head.
        seed (int): Seed of the permutations.
    """

    def __init__(self, model: nn.Module, means: dict[nn.Module, torch.Tensor], images: torch.Tensor, nc: int, seed=0):
        """Run the dense model once on the measurement images, keeping every layer's output."""
        self.images = _crop(images[:SHAPLEY_IMAGES], SHAPLEY_SIZE)
        self.cache = LayerCache(model, [self.images])
        self.means, self.nc = means, nc
        self.generator = torch.Generator().manual_seed(seed)
        b, _, h, w = self.images.shape
        self.trials = max(1, SHAPLEY_PIXELS // (b * h * w))  # trials stacked per tail pass

    def distortions(self, consumers, absent: torch.Tensor) -> torch.Tensor:
        """Distortion of each coalition of ``absent`` (M, n), in one tail pass of M stacked copies of the images."""
        m, b = absent.shape[0], self.images.shape[0]
        rows = absent.repeat_interleave(b, 0).to(self.images.device)  # row k * b + i: coalition k, image i
        mean = mean_substitute(self.means)
        masks = {conv: rows[:, roots.to(rows.device)][:, :, None, None] for conv, (_, roots) in consumers.items()}

        def substitute(conv, x, index):
            return torch.where(masks[conv], mean(conv, x, index).to(x), x[:, index])

        with replaced({conv: idxs for conv, (idxs, _) in consumers.items()}, substitute):
            out = self.cache.tail(self.cache.first_layer(consumers), copies=m)
        ref = self.cache.reference[0]
        return torch.tensor([distortion(out[k * b : (k + 1) * b], ref, self.nc) for k in range(m)])

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        """Shapley value of each root channel of ``group`` (None if nothing in the model reads the group)."""
        consumers = _consumers(group)
        if not consumers:
            return None
        return permutation_shapley(
            lambda absent: self.distortions(consumers, absent),
            len(group[0].idxs),
            permutations=SHAPLEY_PERMUTATIONS,
            depth=SHAPLEY_DEPTH,
            generator=self.generator,
            batch=self.trials,
        ).float()
