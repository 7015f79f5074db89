"""Importance criteria as Torch-Pruning importance objects: ``imp(group) -> tensor[channels]``, low is pruned first.

Magnitude-based criteria are Torch-Pruning's own; only NEXP and the hybrid are written here.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

CRITERIA = ("nexp", "hybrid", "l1", "l2", "tp", "bn", "random")
_OUT_CHANNEL_HANDLERS = (tp.prune_conv_out_channels, tp.prune_depthwise_conv_out_channels)
NEEDS_SCORES = ("nexp", "hybrid")  # criteria that need calibration data


class NexpImportance(tp.importance.Importance):
    """Group NEXP: per group channel, the mean NEXP of every member conv that produces it.

    Args:
        scores (dict[nn.Conv2d, torch.Tensor]): NEXP per output channel of each scored ``nn.Conv2d``.
    """

    def __init__(self, scores: dict[nn.Module, torch.Tensor]):
        """Keep the per-conv scores, keyed by the ``nn.Conv2d`` module object."""
        self.scores = scores

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        """Mean NEXP of the producers of each root channel of ``group`` (None if no member was scored)."""
        total = count = None
        for item in group:
            dep, idxs = item.dep, item.idxs
            layer_scores = self.scores.get(dep.target.module)
            if layer_scores is None or dep.handler not in _OUT_CHANNEL_HANDLERS or None in item.root_idxs:
                continue
            root = torch.as_tensor(item.root_idxs, dtype=torch.long)
            if total is None:
                size = len(group[0].idxs)
                total, count = torch.zeros(size, dtype=torch.float64), torch.zeros(size, dtype=torch.float64)
            total.index_add_(0, root, layer_scores[torch.as_tensor(idxs, dtype=torch.long)].double())
            count.index_add_(0, root, torch.ones(len(root), dtype=torch.float64))
        if total is None:
            return None
        return (total / count.clamp(min=1)).float()


class HybridImportance(tp.importance.Importance):
    """``alpha * nexp~ + (1 - alpha) * magnitude~``, each term normalised within the group to mean 1.

    Args:
        nexp (NexpImportance): The NEXP term.
        alpha (float): Weight of NEXP; 1 is pure NEXP, 0 pure magnitude (group L2 norm).
    """

    def __init__(self, nexp: NexpImportance, alpha: float = 0.5):
        """Combine ``nexp`` with Torch-Pruning's group L2 magnitude."""
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
        self.nexp, self.alpha = nexp, alpha
        self.magnitude = tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        """Blend of the two normalised terms."""
        n, m = self.nexp(group), self.magnitude(group)
        if n is None or m is None:
            return m if n is None else n
        return self.alpha * _mean_one(n) + (1 - self.alpha) * _mean_one(m)


def _mean_one(x: torch.Tensor) -> torch.Tensor:
    """Scale to mean 1 (all-zero stays zero)."""
    return x / x.mean().clamp(min=1e-12)


def check_criterion(criterion: str) -> None:
    """Raise ValueError naming the choices if ``criterion`` is unknown."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion: unknown '{criterion}', choose one of {', '.join(CRITERIA)}.")


def build_importance(criterion: str, conv_scores: dict[nn.Module, torch.Tensor] | None = None, alpha: float = 0.5):
    """The importance object for ``criterion``.

    Args:
        criterion (str): One of :data:`CRITERIA`.
        conv_scores (dict[nn.Conv2d, torch.Tensor] | None): NEXP per ``nn.Conv2d``, needed by nexp and hybrid.
        alpha (float): NEXP weight of the hybrid criterion.
    """
    check_criterion(criterion)
    if criterion in NEEDS_SCORES:
        if conv_scores is None:
            raise ValueError(f"criterion '{criterion}' needs NEXP scores.")
        nexp = NexpImportance(conv_scores)
        return nexp if criterion == "nexp" else HybridImportance(nexp, alpha)
    if criterion in ("l1", "l2"):  # norm of the producing filters only, the classic filter-norm criterion
        return tp.importance.GroupMagnitudeImportance(p=int(criterion[1]), group_reduction="first", normalizer=None)
    if criterion == "tp":  # group L2 norm over every coupled layer, as Torch-Pruning's YOLOv8 example prunes
        return tp.importance.GroupMagnitudeImportance(p=2)
    if criterion == "bn":
        return tp.importance.BNScaleImportance()
    return tp.importance.RandomImportance()
