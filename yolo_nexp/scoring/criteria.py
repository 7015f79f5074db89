"""Importance criteria as Torch-Pruning importance objects: ``imp(group) -> tensor[channels]``, low is pruned first.

Magnitude criteria are Torch-Pruning's own; the NEXP family is written here:

- ``nexp``: the binary NEXP score of :mod:`yolo_nexp.scoring.nexp` (the mean Hamming distance between the
  channel's firing maps for two different images, ``2 k (N - k) / (N (N - 1))`` averaged over positions);
- ``nexpc``: the same pairwise distance on the raw activations (squared, so it equals ``nexp`` on binary
  maps): it also sees how far apart the maps are, not only whether they cross zero;
- ``nexp_use``: what a consumer loses when the channel goes and its mean is folded in (the repair): the
  spread of the channel's values as each consumer receives them (half the mean squared distance between
  two of its samples) times the consumer's BN-normalised weight energy on it, summed over consumers;
- ``nexp_lsq``: the same loss for the least-squares repair: only the part of the channel that the channels
  kept cannot predict counts, channels removed greedily with the refit updated (:mod:`yolo_nexp.scoring.surgeon`).

Rival criteria, for comparison: ``taylor`` and ``hessian`` (Torch-Pruning's, on the gradients of a
self-supervised detection loss, :mod:`yolo_nexp.scoring.gradients`), ``lamp`` and ``fpgm`` (Torch-Pruning's, on
the weights) and ``shapley`` (each channel's Shapley value of the output distortion, :mod:`yolo_nexp.scoring.shapley`).
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from yolo_nexp.arch.family import bn_of_conv, conv_blocks
from yolo_nexp.scoring.gradients import SizedReduce, hessian_importance, taylor_importance
from yolo_nexp.scoring.nexp import nexp_continuous
from yolo_nexp.scoring.shapley import ShapleyImportance
from yolo_nexp.scoring.surgeon import SurgeonImportance

CRITERIA = ("nexp_lsq", "nexp_use", "nexp", "nexpc", "hybrid", "l1", "l2", "tp", "bn", "random")  # default first
CRITERIA += ("taylor", "hessian", "lamp", "fpgm", "shapley")  # rivals: Torch-Pruning's gradient and weight ones
# What each data-driven criterion needs from the calibration pass: the name of the calibrate() flag that records
# it (see yolo_nexp.scoring.calibration.calibrate; the pruner turns NEEDS[criterion] into that flag), or "images"
# for the kept batches alone (calibrate's keep_images; how many: kept_batches()).
NEEDS = {"nexp": "firing", "hybrid": "firing", "nexpc": "spread", "nexp_use": "inputs", "nexp_lsq": "cross"}
NEEDS |= {"taylor": "images", "hessian": "images", "shapley": "inputs"}  # shapley also reads a kept batch
# Calibration batches each criterion reads again after the calibration pass; None: every one of them.
KEPT_BATCHES = {"taylor": None, "hessian": None, "shapley": 1}
_OUT_CHANNEL_HANDLERS = (tp.prune_conv_out_channels, tp.prune_depthwise_conv_out_channels)


class ProducerScoreImportance(tp.importance.Importance):
    """Per group channel, the mean score of every member conv that produces it (a coupled group's NEXP).

    Args:
        scores (dict[nn.Conv2d, torch.Tensor]): A score per output channel of each scored ``nn.Conv2d``.
    """

    def __init__(self, scores: dict[nn.Module, torch.Tensor]):
        """Keep the per-conv scores, keyed by the ``nn.Conv2d`` module object."""
        self.scores = scores

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        """Mean score of the producers of each root channel of ``group`` (None if no member was scored)."""
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


class ConsumerUseImportance(tp.importance.Importance):
    """Expected error a channel's removal leaves in its consumers: sum over consumers of ``var_j * ||s * W[:, j]||^2``.

    ``var_j`` is the variance of input channel ``j`` as the consumer receives it (over images and positions:
    what folding its mean into the consumer cannot restore), ``W[:, j]`` the consumer's weights on it and ``s``
    the scale of the consumer's BatchNorm (``gamma / sqrt(running_var + eps)``, 1 without one), so the error is
    measured in the consumer's normalised pre-activations, comparable across layers.

    Args:
        input_var (dict[nn.Conv2d, torch.Tensor] | None): Variance per input channel of each conv; None weighs
            every input by 1 (pure consumer weight energy).
        model (nn.Module): The model, to find the BatchNorm after each consumer conv.
    """

    def __init__(self, input_var: dict[nn.Module, torch.Tensor] | None, model: nn.Module):
        """Map each conv of an Ultralytics ``Conv`` block to its BatchNorm."""
        self.input_var = input_var
        self.bn_of = bn_of_conv(model)

    def output_scale(self, conv: nn.Conv2d) -> torch.Tensor:
        """Per output channel, how much the BatchNorm after ``conv`` scales its pre-activation."""
        bn = self.bn_of.get(conv)
        if bn is None:
            return torch.ones(conv.out_channels, device=conv.weight.device)
        return (bn.weight / (bn.running_var + bn.eps).sqrt()).detach()

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        """Summed consumer error per root channel of ``group`` (None if nothing in the group consumes it)."""
        total = None
        for item in group:
            conv = item.dep.target.module
            if item.dep.handler != tp.prune_conv_in_channels or conv.groups != 1 or None in item.root_idxs:
                continue
            idxs = torch.as_tensor(item.idxs, dtype=torch.long, device=conv.weight.device)
            energy = (conv.weight[:, idxs].pow(2).sum((2, 3)) * self.output_scale(conv)[:, None].pow(2)).sum(0)
            if self.input_var is not None and conv in self.input_var:
                energy = energy * self.input_var[conv].to(energy.device)[idxs]
            if total is None:
                total = torch.zeros(len(group[0].idxs), dtype=torch.float64)
            total.index_add_(0, torch.as_tensor(item.root_idxs, dtype=torch.long), energy.double().cpu())
        return None if total is None else total.float()


class HybridImportance(tp.importance.Importance):
    """``alpha * nexp~ + (1 - alpha) * magnitude~``, each term normalised within the group to mean 1.

    Args:
        nexp (ProducerScoreImportance): The NEXP term.
        alpha (float): Weight of NEXP; 1 is pure NEXP, 0 pure magnitude (group L2 norm).
    """

    def __init__(self, nexp: ProducerScoreImportance, alpha: float = 0.5):
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


class FPGMImportance(SizedReduce, tp.importance.FPGMImportance):
    """Torch-Pruning's ``FPGMImportance``, one score per group channel (see :class:`~yolo_nexp.scoring.gradients.SizedReduce`)."""


def _mean_one(x: torch.Tensor) -> torch.Tensor:
    """Scale to mean 1 (all-zero stays zero)."""
    return x / x.mean().clamp(min=1e-12)


def kept_batches(criterion: str, batches: int) -> int:
    """How many of the ``batches`` calibration batches ``criterion`` needs kept (calibrate's ``keep_images``)."""
    if criterion not in KEPT_BATCHES:
        return 0
    kept = KEPT_BATCHES[criterion]
    return batches if kept is None else min(kept, batches)


def check_criterion(criterion: str) -> None:
    """Raise ValueError naming the choices if ``criterion`` is unknown."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion: unknown '{criterion}', choose one of {', '.join(CRITERIA)}.")


def build_importance(criterion: str, model: nn.Module, calib=None, alpha: float = 0.5, seed: int = 0):
    """The importance object for ``criterion``.

    Args:
        criterion (str): One of :data:`CRITERIA`.
        model (nn.Module): The (split) model being pruned; scores are keyed by its modules.
        calib (Calibration | None): The calibration statistics the criterion needs (see :data:`NEEDS`), and the
            batches it keeps (see :func:`kept_batches`).
        alpha (float): NEXP weight of the hybrid criterion.
        seed (int): Seed of the ``shapley`` criterion's permutations.

    Raises:
        ValueError: If ``criterion`` is unknown, or needs calibration statistics and ``calib`` is None.
    """
    check_criterion(criterion)
    if criterion in NEEDS and calib is None:
        raise ValueError(f"criterion '{criterion}' needs calibration statistics.")
    if criterion == "nexp_use":
        return ConsumerUseImportance({conv: m.var for conv, m in calib.inputs.items()}, model)
    if criterion == "nexp_lsq":
        if not calib.cross:
            raise ValueError("criterion 'nexp_lsq' needs the input covariances (calibrate(..., cross=True)).")
        return SurgeonImportance(calib.cross, ConsumerUseImportance(None, model).output_scale)
    if criterion in ("nexp", "hybrid", "nexpc"):
        blocks = conv_blocks(model)
        if criterion == "nexpc":
            per_conv = {blocks[name].conv: nexp_continuous(m.var.cpu()) for name, m in calib.spread.items()}
        else:
            per_conv = {blocks[name].conv: counter.score() for name, counter in calib.firing.items()}
        nexp = ProducerScoreImportance(per_conv)
        return HybridImportance(nexp, alpha) if criterion == "hybrid" else nexp
    if criterion in ("l1", "l2"):  # norm of the producing filters only, the classic filter-norm criterion
        return tp.importance.GroupMagnitudeImportance(p=int(criterion[1]), group_reduction="first", normalizer=None)
    if criterion == "tp":  # group L2 norm over every coupled layer, as Torch-Pruning's YOLOv8 example prunes
        return tp.importance.GroupMagnitudeImportance(p=2)
    if criterion == "bn":
        return tp.importance.BNScaleImportance()
    if criterion == "random":
        return tp.importance.RandomImportance()
    if criterion in ("taylor", "hessian", "shapley") and not calib.images:
        raise ValueError(f"criterion '{criterion}' needs calibration images kept (calibrate(..., keep_images=...)).")
    if criterion == "taylor":  # |w * dL/dw| summed over each channel's weights, mean over the coupled layers
        return taylor_importance(model, calib.images)
    if criterion == "hessian":  # w^2 * mean per-sample (dL/dw)^2, the diagonal-Fisher Optimal Brain Damage
        return hessian_importance(model, calib.images)
    if criterion == "lamp":  # group L2 (as tp) over the sum of the scores not below it in its group
        return tp.importance.LAMPImportance(p=2)
    if criterion == "fpgm":  # summed distance of each filter's |w|^2 to the others': nearest the geometric median go
        return FPGMImportance(p=2)
    if criterion == "shapley":
        return ShapleyImportance(model, calib.input_means(), calib.images[0], model.model[-1].nc, seed)
    raise ValueError(f"criterion '{criterion}' is listed in CRITERIA but has no importance object here.")
