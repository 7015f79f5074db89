"""Least-squares repair: a removed channel is predicted from the channels its consumer keeps, and folded in.

The mean repair (:class:`~yolo_nexp.pruning.repair.MeanFolder`) replaces a removed input channel ``x_R`` of a
consumer by its calibration mean. Channels of one layer are correlated, so most of what ``x_R`` carries can be
predicted from the channels that stay: the least-squares predictor ``x_R ~ beta^T x_K + c`` (``beta`` from the
input covariance the calibration pass records, ``c`` the mean that is left) is applied at every position, so
each kernel tap absorbs it exactly: ``W[:, K] += W[:, R] beta^T`` tap by tap, and ``c`` is folded into the
consumer's BatchNorm or bias as the mean repair does. This is the closed-form refit of channel pruning (He et
al. 2017) restricted to predicting each input from the others at the same position; with ``beta = 0`` it is
the mean repair. Grouped and depthwise consumers keep the mean repair.
"""

from __future__ import annotations

import torch
from torch import nn

from yolo_nexp.pruning.groups import IN_HANDLERS
from yolo_nexp.pruning.repair import MeanFolder

RIDGE = 1e-3  # ridge on the kept channels' covariance, relative to its mean variance: keeps the solve stable


class LeastSquaresFolder(MeanFolder):
    """Folds removed input channels into their consumers by least squares, group by group, as pruning proceeds.

    Args:
        model (nn.Module): The model being pruned.
        covariances (dict[nn.Conv2d, CrossMoments]): Input mean and covariance of every conv, dense indexing.
    """

    def __init__(self, model: nn.Module, covariances: dict):
        """Copy the statistics: they are re-indexed as channels go."""
        super().__init__(model, {conv: c.mean.float() for conv, c in covariances.items()})
        self.cov = {conv: c.cov.double() for conv, c in covariances.items()}

    @torch.no_grad()
    def __call__(self, group) -> None:
        """Fold what the input channels ``group`` is about to remove carried, then forget their statistics."""
        removed: dict[nn.Conv2d, set[int]] = {}
        for item in group:
            conv = item.dep.target.module
            if item.dep.handler in IN_HANDLERS and conv in self.means:
                removed.setdefault(conv, set()).update(item.idxs)
        for conv, idxs in removed.items():
            index = torch.tensor(sorted(idxs), dtype=torch.long)
            keep = torch.ones(len(self.means[conv]), dtype=torch.bool)
            keep[index] = False
            if conv.groups == 1 and keep.any():
                self._refit(conv, index, keep)
            elif conv.groups == 1:
                self._fold(conv, index)
            self.means[conv] = self.means[conv][keep]
            self.cov[conv] = self.cov[conv][keep][:, keep]

    def _refit(self, conv: nn.Conv2d, index: torch.Tensor, keep: torch.Tensor) -> None:
        """``W[:, K] += W[:, R] beta^T`` tap by tap, then fold the means left over, ``c = m_R - beta^T m_K``."""
        cov = self.cov[conv]
        kk, kr = cov[keep][:, keep], cov[keep][:, index]
        ridge = RIDGE * kk.diagonal().mean().clamp(min=1e-12)
        beta = torch.linalg.solve(kk + ridge * torch.eye(len(kk), dtype=kk.dtype), kr)  # (kept, removed)
        w = conv.weight
        w_r = w.detach()[:, index.to(w.device)].double()  # (out, removed, kh, kw)
        update = torch.einsum("orhw,kr->okhw", w_r, beta.to(w_r.device))
        kept_index = keep.nonzero().flatten().to(w.device)
        w.data[:, kept_index] += update.to(w.dtype)
        mean = self.means[conv]
        residual_mean = mean[index].double() - beta.T @ mean[keep].double()
        original = mean[index].clone()
        mean[index] = residual_mean.to(mean.dtype)  # what _fold folds: the part no kept channel predicts
        self._fold(conv, index)
        mean[index] = original
