"""Repair on removal: what a removed channel fed its consumers on average is folded into them.

A removed input channel ``j`` of a consumer conv used to add ``W[:, j] * x_j`` to its output. Replacing
``x_j`` by its calibration mean ``m_j`` turns that into a constant per output channel,
``shift = sum over the kernel of W[:, j] * m_j``, which the consumer can absorb exactly (away from padded
borders): its BatchNorm's ``running_mean -= shift``, or its bias ``+= shift`` where it has no BatchNorm
(Detect's output convs). Without this, removing an always-on SiLU channel shifts every consumer by
``W * mean`` and a trained detector collapses; and such a channel is what NEXP prunes first, since a
channel that fires on every image separates no two of them (its NEXP is 0).

The means are those each consumer actually receives (through concats, residual adds, SPPF's max-pools,
upsampling), recorded by the calibration pass; they are re-indexed as consumers lose input channels.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from yolo_nexp.arch.family import bn_of_conv
from yolo_nexp.pruning.groups import IN_HANDLERS
from yolo_nexp.utils import mode

REPAIRS = ("mean", "lsq", "none")  # lsq: yolo_nexp.pruning.lsq_repair


class MeanFolder:
    """Folds removed input channels' means into their consumers, group by group, as pruning proceeds.

    Args:
        model (nn.Module): The model being pruned (to find the BatchNorm after each conv).
        input_means (dict[nn.Conv2d, torch.Tensor]): Mean of every input channel of every conv, dense indexing.
    """

    def __init__(self, model: nn.Module, input_means: dict[nn.Module, torch.Tensor]):
        """Copy the means: they are re-indexed as channels go."""
        self.means = {conv: m.detach().clone() for conv, m in input_means.items()}
        self.bn_of = bn_of_conv(model)

    @torch.no_grad()
    def __call__(self, group) -> None:
        """Fold the means of the input channels ``group`` is about to remove, then forget them."""
        for item in group:
            conv, idxs = item.dep.target.module, item.idxs
            if item.dep.handler not in IN_HANDLERS or conv not in self.means:
                continue
            index = torch.as_tensor(idxs, dtype=torch.long, device=self.means[conv].device)
            if item.dep.handler == tp.prune_conv_in_channels and conv.groups == 1:
                self._fold(conv, index)
            keep = torch.ones(len(self.means[conv]), dtype=torch.bool, device=index.device)
            keep[index] = False
            self.means[conv] = self.means[conv][keep]

    def _fold(self, conv: nn.Conv2d, index: torch.Tensor) -> None:
        """Absorb ``sum_k W[:, j, k] * m_j`` over the removed inputs ``j`` into the consumer's BN or bias."""
        w = conv.weight.detach()[:, index.to(conv.weight.device)].sum((2, 3))  # (out, removed)
        shift = w @ self.means[conv][index].to(w)
        bn = self.bn_of.get(conv)
        if bn is not None:
            bn.running_mean.sub_(shift.to(bn.running_mean))
        elif conv.bias is not None:
            conv.bias.add_(shift.to(conv.bias))
        else:
            conv.bias = nn.Parameter(shift.clone())


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, images: list[torch.Tensor]) -> None:
    """Recompute every BatchNorm's running statistics on ``images`` (a cumulative average, weights untouched)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    try:
        with mode(model, training=True):
            for batch in images:
                model(batch)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


def check_repair(repair: str) -> None:
    """Raise ValueError naming the choices if ``repair`` is unknown."""
    if repair not in REPAIRS:
        raise ValueError(
            f"repair: unknown '{repair}', choose one of {', '.join(REPAIRS)} (mean folds removed channels' means into their consumers, lsq predicts them from the kept channels)."
        )
