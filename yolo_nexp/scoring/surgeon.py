"""``nexp_lsq``: the error the least-squares repair leaves when a group's channels go, one channel at a time.

``nexp_use`` scores a channel by what the *mean* repair cannot restore: its spread times its consumers' weight
energy. The default repair is least squares (:mod:`yolo_nexp.pruning.lsq_repair`): a removed channel is predicted
from the channels its consumer keeps, so what is lost is only the part no kept channel predicts. For one
consumer with input covariance ``H`` (over images and positions) and weights ``M[j]`` on input channel ``j``
(every output and kernel tap, scaled by the consumer's BatchNorm as ``nexp_use`` does), removing ``j`` with the
optimal refit of the others costs ``||M[j]||^2 / P[j, j]`` with ``P = H^-1`` (the Optimal Brain Surgeon of a
linear layer), and the refit moves ``M`` and ``P`` for the next removal:

    M <- M - P[:, j] M[j] / P[j, j],        P <- P - P[:, j] P[j, :] / P[j, j].

Channels are removed greedily, cheapest first, a small block at a time (:data:`BLOCKS`), with every consumer
refit after each block, so two channels that predict each other are not both rated free. Only the Gram matrix
``G = M M^T`` and the precision, restricted to the group's own channels, are tracked (``||M[j]||^2 = G[j, j]``;
the consumer's other inputs stay and only serve as predictors), so a block costs a few (n x n) products. The
score of a channel orders channels as they were removed (the cumulative cost at the end of each block). Grouped or depthwise
consumers, which the repair folds by the mean, add ``nexp_use``'s fixed term.
"""

from __future__ import annotations

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

BLOCKS = 32  # a group's channels are removed in about this many blocks (one refit each): 16 at a time of 512
RIDGE = 1e-3  # as the repair's (lsq_repair.RIDGE): the same regularised covariance the refit will use


class SurgeonImportance(tp.importance.Importance):
    """Greedy least-squares removal cost of each group channel, summed over its consumers (see the module).

    Args:
        covariances (dict[nn.Conv2d, CrossMoments]): Input mean and covariance of every conv (calibration).
        output_scale: ``output_scale(conv)``, the per-output-channel BatchNorm scale after ``conv``
            (``ConsumerUseImportance.output_scale``), so costs are in normalised pre-activations.
    """

    def __init__(self, covariances: dict, output_scale):
        """Keep the calibration covariances and the BatchNorm scale function."""
        self.cov = covariances
        self.output_scale = output_scale
        self._consumers: dict[nn.Conv2d, tuple[torch.Tensor, torch.Tensor]] = {}  # a conv read by several groups

    def _consumer(self, conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_gram_and_precision` of ``conv``, computed once per importance object (the model does not change
        while one ranks its groups)."""
        if conv not in self._consumers:
            self._consumers[conv] = self._gram_and_precision(conv)
        return self._consumers[conv]

    def _gram_and_precision(self, conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
        """Gram matrix of the scaled weights per input channel, and the inverse of the ridged input covariance."""
        w = conv.weight.detach().double() * self.output_scale(conv).double()[:, None, None, None]
        rows = w.transpose(0, 1).reshape(w.shape[1], -1).cpu()  # (inputs, outputs x taps)
        h = self.cov[conv].cov.double().cpu()
        h = h + RIDGE * h.diagonal().mean().clamp(min=1e-12) * torch.eye(len(h), dtype=h.dtype)
        return rows @ rows.T, torch.linalg.inv(h)

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        """Cumulative removal cost per root channel of ``group`` (None if no consumer conv reads it)."""
        size = len(group[0].idxs)
        consumers, fixed = [], torch.zeros(size, dtype=torch.float64)
        for item in group:
            conv = item.dep.target.module
            if item.dep.handler != tp.prune_conv_in_channels or None in item.root_idxs or conv not in self.cov:
                continue
            idxs = torch.as_tensor(item.idxs, dtype=torch.long)
            roots = torch.as_tensor(item.root_idxs, dtype=torch.long)
            if conv.groups != 1:  # folded by the mean: nexp_use's spread x weight energy, fixed
                if conv.groups == conv.in_channels == conv.out_channels:  # depthwise: input j feeds output j alone
                    w = conv.weight.detach().pow(2).sum((1, 2, 3)) * self.output_scale(conv).pow(2)
                    var = self.cov[conv].cov.diagonal()
                    fixed.index_add_(0, roots, (w.double().cpu() * var.double().cpu())[idxs])
                continue
            gram, prec = self._consumer(conv)
            consumers.append((gram[idxs][:, idxs].clone(), prec[idxs][:, idxs].clone(), roots))
        if not consumers and not fixed.any():
            return None
        return _greedy_order_costs(consumers, fixed, size, max(1, size // BLOCKS)).float()


def _greedy_order_costs(consumers: list, fixed: torch.Tensor, size: int, block: int = 1) -> torch.Tensor:
    """Remove root channels ``block`` at a time, cheapest total cost first, refitting every consumer after each
    block; per channel a score that orders channels as they were removed, equal to the cumulative cost of the
    removals up to it at the end of each block (within a block, spread by the channels' single costs).

    The loop runs in NumPy: its matrices are small (a group's channels), and torch's per-call overhead made it
    about twice as slow (thousands of refits per model).

    Args:
        consumers (list[tuple]): Per consumer ``(gram, prec, roots)``: Gram matrix and precision over the inputs
            it reads from the group, and the root channel of each of those inputs.
        fixed (torch.Tensor): A removal cost per root channel that no refit changes.
        size (int): Root channels in the group.
        block (int): Channels removed per refit.
    """
    consumers = [[np.asarray(g, np.float64), np.asarray(p, np.float64), np.asarray(r)] for g, p, r in consumers]
    fixed = np.asarray(fixed, dtype=np.float64)
    removed = np.zeros(size, dtype=bool)
    score = np.zeros(size, dtype=np.float64)
    total = 0.0
    while not removed.all():
        cost = fixed.copy()
        for gram, prec, roots in consumers:
            np.add.at(cost, roots, np.diagonal(gram) / np.maximum(np.diagonal(prec), 1e-30))
        cost[removed] = np.inf
        take = np.argsort(cost, kind="stable")[: min(block, int((~removed).sum()))]
        taken = np.zeros(size, dtype=bool)
        taken[take] = True
        added = float(fixed[take].sum())
        for c in consumers:
            gone = taken[c[2]]
            if gone.any():
                added += _remove_inputs(c, gone)
        rank = np.arange(1, len(take) + 1, dtype=np.float64) / len(take)
        score[take] = total + rank * max(added, 0.0)
        total += max(added, 0.0)
        removed |= taken
    return torch.from_numpy(score)


def _remove_inputs(consumer: list, gone: np.ndarray) -> float:
    """Refit ``consumer = [gram, prec, roots]`` (NumPy arrays) for its inputs ``gone`` (a mask) and drop them; the
    error added.

    With ``Q = P[s, s]^-1`` and ``T = P[k, s] Q`` (``s`` the inputs that go, ``k`` those that stay), the refit is
    ``M[k] <- M[k] - T M[s]``, so ``G[k, k] <- G[k, k] - T G[s, k] - G[k, s] T^T + T G[s, s] T^T`` and
    ``P[k, k] <- P[k, k] - T P[s, k]``; the error is ``tr(Q G[s, s])``.
    """
    gram, prec, roots = consumer
    s, k = np.flatnonzero(gone), np.flatnonzero(~gone)
    q = np.linalg.inv(prec[np.ix_(s, s)])
    t = prec[np.ix_(k, s)] @ q
    gsk, gss = gram[np.ix_(s, k)], gram[np.ix_(s, s)]
    added = float(np.trace(q @ gss))
    consumer[0] = gram[np.ix_(k, k)] - t @ gsk - gsk.T @ t.T + t @ gss @ t.T
    consumer[1] = prec[np.ix_(k, k)] - t @ prec[np.ix_(s, k)]
    consumer[2] = roots[k]
    return added
