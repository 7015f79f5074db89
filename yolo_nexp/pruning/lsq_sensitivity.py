"""First-order sensitivity for the least-squares repair: what the output loses when removed channels are predicted.

:mod:`.linear_sensitivity` estimates the distortion of removing channels ``R`` of a consumer's input when they
are replaced by their means (``delta_R = m_R - x_R``). The least-squares repair (:mod:`.lsq_repair`) replaces
them by their prediction from the channels kept, ``x_R ~ m_R + beta^T (x_K - m_K)``; with ``P`` the inverse
of the (ridged) input covariance, that prediction is ``m_R - P_RR^-1 P_RK (x_K - m_K)``, so

    delta_R = -P_RR^-1 (P e)_R,     e = x - m.

The output moves by ``u . delta`` to first order (``u`` the gradient of a random projection of the output at
the consumer's input, as in :mod:`.linear_sensitivity`), summed over positions:
``t_R = -tr(P_RR^-1 D_RR)`` with ``D = sum_positions (P e) u^T``, one (inputs x inputs) matrix per consumer and
sample. The distortion of ``R`` is the mean of ``(sum over consumers of t_R)^2`` over images and projections.
Unlike the mean repair's, this is not a cumulative sum over the channel order, so it is evaluated at a few
widths per set (:data:`FRACTIONS`), which the allocation interpolates between.
"""

from __future__ import annotations

from contextlib import closing

import torch
from torch import nn

from yolo_nexp.pruning.linear_sensitivity import consumer_reads, projected_gradients
from yolo_nexp.pruning.linear_sensitivity import estimate as mean_estimate
from yolo_nexp.pruning.lsq_repair import RIDGE

ESTIMATES = ("mean", "lsq")  # the repair the sensitivity allocation's distortion estimate simulates
# configs/default.yaml's ``estimate`` (a test checks). On the real-model benchmark (2 seeds, 4 passes) nexp_lsq with
# this estimate kept 97/64/25% of mAP50-95 at -10/-25/-46% MACs where nexp_use with the mean one kept 93/63/21%.
DEFAULT_ESTIMATE = "lsq"
FRACTIONS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 3 / 4, 0.9)  # of a set's channels, where it is evaluated


def precisions(cross: dict) -> dict[nn.Conv2d, torch.Tensor]:
    """Inverse of each consumer's input covariance, ridged as the repair ridges the kept channels' covariance."""
    out = {}
    for conv, moments in cross.items():
        h = moments.cov.double().cpu()
        out[conv] = torch.linalg.inv(
            h + RIDGE * h.diagonal().mean().clamp(min=1e-12) * torch.eye(len(h), dtype=h.dtype)
        )
    return out


def moment_chunks(model, convs, cross, prec, images, nc: int, projections: int = 2, seed: int = 0, verbose=True):
    """Per chunk of images and projection, every consumer's ``D`` of shape (chunk, inputs, inputs):
    ``sum_positions (P e) u^T`` (see the module).

    Computed as ``P (sum_positions e u^T)``: one (inputs x positions) product per sample and projection, where
    whitening ``e`` first would cost another one per sample. A generator, so that callers reduce each chunk as it
    comes and memory does not grow with the number of images.
    """
    with closing(projected_gradients(model, convs, images, nc, projections, seed, "sensitivity (lsq)", verbose)) as gen:
        for k, inputs, grads in gen:  # closing: an error in the caller removes the hooks at once
            if k == 0:  # e per consumer does not depend on the projection: once per chunk
                centred = {
                    conv: (x - cross[conv].mean.to(x).view(1, -1, 1, 1)).flatten(2) for conv, x in inputs.items()
                }
            moments = {}
            for conv, u in grads.items():
                e_u = torch.bmm(centred[conv], u.flatten(2).transpose(1, 2))  # (B, inputs, inputs)
                moments[conv] = torch.einsum("gc,bci->bgi", prec[conv].to(e_u), e_u).double().cpu()
            yield moments


def evaluation_widths(ws: list[int]) -> list[int]:
    """The allowed widths nearest to each of :data:`FRACTIONS` removed, widest first."""
    if len(ws) < 2:
        return []
    return sorted({min(ws[1:], key=lambda w: abs(1 - w / ws[0] - f)) for f in FRACTIONS}, reverse=True)


def estimate(model, sets, widths, cross, images, nc: int, projections: int = 2, seed: int = 0, verbose=True):
    """Per linked set, the estimated distortion under the least-squares repair at :func:`evaluation_widths`.

    Args:
        model (nn.Module): The (split) detection model, unpruned.
        sets (list[list[PrunableGroup]]): Linked sets, their channel order already set.
        widths (list[list[int]]): Allowed widths of each set, widest first.
        cross (dict[nn.Conv2d, CrossMoments]): Input mean and covariance of every conv (calibration).
        images (list[torch.Tensor]): Batches to estimate on.
        nc (int): Number of classes of the head.
        projections (int): Random output projections (backward passes) per batch.
        seed (int): Seed of the projections.
        verbose (bool): Show a progress bar.

    Returns:
        (list[dict[int, float]]): Per set, distortion at some widths (the same form as ``sensitivity.measure``).
    """
    effects = set_effects(model, sets, widths, cross, images, nc, projections, seed, verbose)
    return [{w: float(t.pow(2).mean()) for w, t in per_width.items()} for per_width in effects]


def set_effects(model, sets, widths, cross, images, nc: int, projections: int = 2, seed: int = 0, verbose=True):
    """Per linked set and :func:`evaluation_widths` width, ``t`` of shape (samples,): the first-order output change
    of cutting the set to that width, one value per image and projection (:func:`estimate` takes its mean square).
    Each chunk's moments are reduced to ``t`` as they come: memory stays flat in the number of images.

    Arguments as :func:`estimate`'s.
    """
    groups = [g for linked in sets for g in linked]
    reads = {conv: rs for conv, rs in consumer_reads(groups).items() if conv in cross and conv.groups == 1}
    prec = precisions({conv: cross[conv] for conv in reads})
    terms = removal_terms(sets, widths, reads, prec)
    parts = [{w: [] for w in per_width} for per_width in terms]
    for moments in moment_chunks(model, list(reads), cross, prec, images, nc, projections, seed, verbose):
        samples = len(next(iter(moments.values()))) if moments else 1
        for per_width, out in zip(terms, parts):
            for w, items in per_width.items():
                t = torch.zeros(samples, dtype=torch.float64)
                for conv, idx, inv in items:
                    if conv in moments:  # tr(inv @ d) = sum(inv * d^T): r^2 a sample
                        t = t - (inv * moments[conv][:, idx][:, :, idx].transpose(1, 2)).sum((1, 2))
                out[w].append(t)
    return [{w: torch.cat(ts) if ts else torch.zeros(1, dtype=torch.float64) for w, ts in o.items()} for o in parts]


def removal_terms(sets, widths, reads, prec) -> list[dict[int, list]]:
    """Per linked set and :func:`evaluation_widths` width, ``(consumer, removed inputs, inverse of P_RR)`` for every
    consumer that loses inputs: what :func:`set_effects` needs of each chunk's moments."""
    first, terms = 0, []
    for linked, ws in zip(sets, widths):
        members = range(first, first + len(linked))
        first += len(linked)
        mine = {conv: [r for r in rs if r[0] in members] for conv, rs in reads.items()}
        mine = {conv: rs for conv, rs in mine.items() if rs}
        per_width = {}
        for w in evaluation_widths(ws):
            gone = {i: set(g.order[: g.size - w].tolist()) for i, g in zip(members, linked)}
            items = []
            for conv, rs in mine.items():
                idx = torch.tensor(sorted({ch for i, ch, root in rs if root in gone[i]}), dtype=torch.long)
                if len(idx):
                    items.append((conv, idx, torch.linalg.inv(prec[conv][idx][:, idx])))
            per_width[w] = items
        terms.append(per_width)
    return terms


def lsq_substitute(cross: dict):
    """What the least-squares repair makes of removed channels, for ``sensitivity.measure``: their prediction
    ``m_R + beta^T (x_K - m_K)`` from the kept channels, ``beta`` solved as :class:`.lsq_repair.LeastSquaresFolder` does."""

    def substitute(conv, x, index):
        cov, mean = cross[conv].cov.double(), cross[conv].mean.double()
        keep = torch.ones(len(mean), dtype=torch.bool)
        keep[index] = False
        kk, kr = cov[keep][:, keep], cov[keep][:, index]
        beta = torch.linalg.solve(kk + RIDGE * kk.diagonal().mean().clamp(min=1e-12) * torch.eye(len(kk)), kr)
        centred = x[:, keep.to(x.device)] - mean[keep].to(x).view(1, -1, 1, 1)
        return torch.einsum("kr,bkhw->brhw", beta.to(x), centred) + mean[index].to(x).view(1, -1, 1, 1)

    return substitute


def sensitivity_curves(
    det, sets, widths, calib, simulated: str, images, verbose: bool = True
) -> list[dict[int, float]]:
    """The distortion curves the ``sensitivity`` allocation orders steps by: for ``simulated="lsq"`` the least-squares
    estimate above (``calib.cross`` needed), for ``"mean"`` the mean-repair one of :mod:`.linear_sensitivity`."""
    nc = det.model[-1].nc
    if simulated == "lsq":
        return estimate(det, sets, widths, calib.cross, images, nc, verbose=verbose)
    return mean_estimate(det, sets, widths, calib.input_means(), images, nc, verbose=verbose)
