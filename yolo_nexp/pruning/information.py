"""Allocation by information concentration (Chen & Wang, "An Effective Information Theoretic Framework for
Channel Pruning", IEEE TNNLS 2024, arXiv 2408.16772).

What comes from the paper (read here only in its abstract and a published summary of it; its method section's
equations could not be read in this offline environment): a conv layer's information is measured by two
indicators of its output feature maps, their **rank** (a matrix as a system of linear equations: a higher
rank, more solutions, more uncertainty) and their **entropy** (the expected amount of information); a fusion
function makes a compromise of the two, the layer's *information concentration*; and the layer-wise pruning
ratios are pre-defined with it as the reference: a layer with a lower concentration holds less information
and can lose more channels. (The paper then ranks channels by Shapley values; here the ranking stays the
criterion's.)

What this module chose, where that text does not fix it (each choice is one constant or one line below; the
paper's own definitions may differ):

- **Rank** (:class:`yolo_nexp.scoring.feature_information.FeatureInformation`): as HRank, the matrix rank of each
  image's H x W map of a channel (``torch.linalg.matrix_rank``'s default tolerance), averaged over the first 4
  images of every calibration batch (HRank found a filter's mean map rank stable across images; the rank is
  the costly part); divided by ``min(H, W)`` so that layers of different resolutions compare (a 160 x 160 map
  can reach rank 160, a 20 x 20 one 20). The layer's rank is the mean over its channels.
- **Entropy**: per channel, the Shannon entropy of a histogram of its values over every image and position
  (at most 32 bins, fewer by the square-root rule when the first batch has fewer than 1024 values per channel;
  edges from the first batch's range), divided by ``log(bins)``; the layer's is the mean over its channels.
  Both indicators are therefore in [0, 1] and on the same footing before they are fused.
- **Fusion** (:func:`fuse`): the harmonic mean ``2 R E / (R + E)``: a compromise that is high only when both
  indicators are (a layer with full-rank but near-constant maps, or noisy but rank-1 maps, is not rich).
- **Ratio rule** (:func:`target_ratios`): a layer's pruning ratio is proportional to ``1 - IC``, scaled so
  that the layers' ratios together meet the target: ``r_l = t (1 - IC_l) / mean(1 - IC)`` (at most
  :data:`~yolo_nexp.pruning.allocation.MAX_REMOVED`, no group below its ``round_to`` floor). Equal
  concentrations give the uniform allocation.

A target is reached as by the other allocations (see :mod:`.allocation`): the rule becomes an order of removal
steps, each keyed by the level ``t`` at which the rule asks for it (:func:`information_order`), so any prefix
removes from every set about its share, and ``steps_for_ratio`` / ``steps_for_macs`` hit a ratio or MACs target
unchanged. Linked sets (the two halves of a C2f) take the mean concentration of their groups' convs.
"""

from __future__ import annotations

from torch import nn

from yolo_nexp.arch.family import conv_blocks
from yolo_nexp.pruning.allocation import MAX_REMOVED
from yolo_nexp.pruning.groups import PrunableGroup

MIN_WEIGHT = 1e-3  # a layer at full concentration (1 - IC = 0) is still pruned, last, rather than never


def fuse(rank: float, entropy: float) -> float:
    """Information concentration of a layer from its normalised rank and entropy (both in [0, 1]).

    Returns:
        (float): The harmonic mean of the two, in [0, 1]; 0 when either is 0.
    """
    return 2.0 * rank * entropy / (rank + entropy) if rank + entropy > 0 else 0.0


def conv_concentration(model: nn.Module, information: dict) -> dict[nn.Conv2d, float]:
    """Information concentration of every ``Conv`` block recorded by ``calibrate(information=True)``.

    Args:
        model (nn.Module): The (split) detection model the statistics were recorded on.
        information (dict[str, FeatureInformation]): Per block name, its streamed rank and entropy.

    Returns:
        (dict[nn.Conv2d, float]): Per block's ``nn.Conv2d``, the fusion of its mean channel rank and entropy.
    """
    blocks = conv_blocks(model)
    return {
        blocks[name].conv: fuse(float(stats.rank.mean()), float(stats.entropy.mean()))
        for name, stats in information.items()
        if name in blocks and stats.n > 0
    }


def set_concentration(sets: list[list[PrunableGroup]], per_conv: dict[nn.Conv2d, float]) -> list[float]:
    """Per linked set, the mean concentration of the convs whose output channels it removes.

    A group's channels can be the outputs of several convs (a residual add couples them); all of them carry
    what the group holds. A set none of whose convs was recorded gets the mean of the others (a neutral share).
    """
    values = []
    for linked in sets:
        known = [per_conv[c] for g in linked for c, kind in g.removed_per_channel if kind == "out" and c in per_conv]
        values.append(sum(known) / len(known) if known else None)
    seen = [v for v in values if v is not None]
    neutral = sum(seen) / len(seen) if seen else 0.5
    return [neutral if v is None else v for v in values]


def _weights(concentration: list[float]) -> list[float]:
    """Each set's share of the removal, ``1 - IC`` relative to the mean (1 everywhere for equal concentrations)."""
    raw = [max(1.0 - c, MIN_WEIGHT) for c in concentration]
    mean = sum(raw) / len(raw) if raw else 1.0
    return [r / mean for r in raw]


def target_ratios(concentration: list[float], level: float) -> list[float]:
    """The paper's rule at overall level ``level``: layer ratios proportional to ``1 - IC``, capped.

    Args:
        concentration (list[float]): Information concentration of each set, in [0, 1].
        level (float): The mean ratio asked of the layers (``t`` in the module docstring).

    Returns:
        (list[float]): The fraction of channels each set should lose.
    """
    return [min(level * w, MAX_REMOVED) for w in _weights(concentration)]


def information_order(widths: list[list[int]], concentration: list[float]) -> list[tuple[int, int]]:
    """Steps ``(set index, width after)`` by the level at which the rule asks for them.

    The step that leaves set ``i`` having removed the fraction ``f`` is asked for once ``t * w_i >= f``, i.e. at
    ``t = f / w_i``: sorting by it takes, at every prefix, the next step of the set furthest below its share.
    Ties go to the smaller fraction, then the set order (as in :func:`~.allocation.uniform_order`).
    """
    weights = _weights(concentration)
    steps = [(1 - w / ws[0], i, w) for i, ws in enumerate(widths) for w in ws[1:]]
    return [(i, w) for _, _, i, w in sorted((f / weights[i], f, i, w) for f, i, w in steps)]
