"""Structured pruning of an Ultralytics YOLOv8 detection model: score, rank, remove whole channel groups."""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager

import torch
import torch_pruning as tp
from torch import nn
from ultralytics.engine.model import Model
from ultralytics.utils import LOGGER

from .criteria import NEEDS_SCORES, build_importance, check_criterion
from .graph import C2fSplit, c2f_split, conv_widths, detection_model, never_pruned, traceable_head
from .nexp import score
from .report import PruneReport, macs_and_params

TRACE_SIZE = 64  # input size for tracing and the MACs search: any multiple of 32 gives the same graph and MACs ratios
MAX_RATIO = 0.95  # the MACs-target search looks for a ratio in [0, MAX_RATIO]


class ChannelPruner(tp.pruner.BasePruner):
    """Torch-Pruning's pruner, except that rounding never removes a whole group.

    Torch-Pruning rounds the kept channels down to a multiple of ``round_to``; when fewer than
    ``round_to`` would remain it rounds to zero and then skips the group entirely. Here a group keeps
    at least ``round_to`` channels (or all it has, if fewer).
    """

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        keep = current_channels - n_pruned
        keep = max(keep - keep % round_to, min(round_to, current_channels))
        return current_channels - keep


def check_prune_args(
    ratio=None, macs=None, criterion: str = "nexp", alpha: float = 0.5, round_to: int = 8, batches: int = 4
) -> None:
    """Validate pruning arguments before any work is done; every message names the argument and what to give.

    Raises:
        ValueError: For the first argument that is out of range or of the wrong type.
    """

    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if ratio is not None and macs is not None:
        raise ValueError("ratio and macs: give one of them, not both (ratio removes channels, macs targets MACs).")
    if ratio is not None and not (number(ratio) and 0.0 <= ratio < 1.0):
        raise ValueError(f"ratio must be a number in [0, 1), e.g. ratio=0.5; got {ratio!r}.")
    if macs is not None and not (number(macs) and 0.0 < macs < 1.0):
        raise ValueError(f"macs must be the fraction of MACs to remove, in (0, 1), e.g. macs=0.46; got {macs!r}.")
    check_criterion(criterion)
    if not (number(alpha) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1] (1 = pure NEXP); got {alpha!r}.")
    if not (isinstance(round_to, int) and not isinstance(round_to, bool) and round_to >= 1):
        raise ValueError(f"round_to must be a whole number >= 1 (1 disables rounding); got {round_to!r}.")
    if not (isinstance(batches, int) and not isinstance(batches, bool) and batches >= 1):
        raise ValueError(f"batches must be a whole number >= 1; got {batches!r}.")


@contextmanager
def _trainable(model: nn.Module):
    """Let every parameter require grad (Torch-Pruning traces through autograd), then restore the flags by name.

    By name, because pruning replaces the parameter objects.
    """
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        yield model
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags.get(name, True))


def _sync_checkpoint(model, det: nn.Module) -> None:
    """Keep a ``YOLO`` object's checkpoint dict consistent with its pruned module.

    The EMA and optimizer state of a loaded checkpoint belong to the dense model, so they go. And
    ``YOLO.train()`` hands its in-memory module to the trainer only when ``ckpt`` is non-empty (otherwise
    it rebuilds from the yaml), so a model built from a yaml gets one.
    """
    if isinstance(model, Model):
        model.ckpt = {**(model.ckpt or {}), "model": det, "ema": None, "optimizer": None}


def _equalize_c2f_halves(pruner: ChannelPruner, det: nn.Module) -> None:
    """Prune the wider half of every split C2f down to the narrower one's width, lowest importance first.

    Layer-uniform pruning keeps both halves equal by itself; global ranking may not, and a stock
    ``C2f`` (whose ``chunk`` splits in two equal halves) needs them equal.
    """
    for m in det.modules():
        if isinstance(m, C2fSplit) and m.cv0.conv.out_channels != m.cv1.conv.out_channels:
            wide, narrow = sorted((m.cv0.conv, m.cv1.conv), key=lambda c: c.out_channels, reverse=True)
            group = pruner.DG.get_pruning_group(wide, tp.prune_conv_out_channels, list(range(wide.out_channels)))
            imp = pruner.estimate_importance(group)
            drop = torch.argsort(imp)[: wide.out_channels - narrow.out_channels].tolist()
            pruner.DG.get_pruning_group(wide, tp.prune_conv_out_channels, drop).prune()


def _apply(det: nn.Module, ratio: float, importance, round_to: int, global_pruning: bool, seed: int) -> None:
    """Prune a model whose C2f blocks are split: trace, rank groups, remove channels."""
    param = next(det.parameters())
    example = torch.zeros(1, 3, TRACE_SIZE, TRACE_SIZE, device=param.device, dtype=param.dtype)
    with _trainable(det), traceable_head(det), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the random criterion, reproducibly
        pruner = ChannelPruner(
            det,
            example_inputs=example,
            importance=importance,
            pruning_ratio=float(ratio),
            ignored_layers=never_pruned(det),
            round_to=round_to,
            global_pruning=global_pruning,
        )
        pruner.step()
        _equalize_c2f_halves(pruner, det)


def _ratio_for_macs(det: nn.Module, target: float, importance_for, round_to: int, global_pruning: bool, seed: int):
    """Bisection on trial copies for the smallest ratio that removes at least ``target`` of the MACs."""
    dense_macs, _ = macs_and_params(det, TRACE_SIZE)
    lo, hi = 0.0, MAX_RATIO
    for _ in range(10):
        mid = (lo + hi) / 2
        trial = copy.deepcopy(det)
        _apply(trial, mid, importance_for(trial), round_to, global_pruning, seed)
        cut = 1 - macs_and_params(trial, TRACE_SIZE)[0] / dense_macs
        lo, hi = (mid, hi) if cut < target else (lo, mid)
    return hi


def _floored(channels: dict[str, list[int]], ratio: float, round_to: int, global_pruning: bool) -> list[str]:
    """Layers held at their floor (``round_to`` channels, or all they had) that the ratio would have cut further."""

    def below_floor(before: int) -> bool:  # layer-uniform: the width the ratio asks for, rounded down as pruned
        keep = int(before * (1 - ratio))
        return global_pruning or keep - keep % round_to < min(round_to, before)

    return [n for n, (b, a) in channels.items() if a == min(round_to, b) < b and below_floor(b)]


def prune(
    model,
    ratio: float | None = None,
    criterion: str = "nexp",
    source="noise",
    batches: int = 4,
    imgsz: int = 640,
    batch: int = 8,
    round_to: int = 8,
    alpha: float = 0.5,
    global_pruning: bool = False,
    macs: float | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> PruneReport:
    """Prune a YOLOv8 detection model in place by removing whole channel groups.

    Every Ultralytics ``Conv`` block of backbone, neck and Detect head is prunable; the last conv of
    each Detect branch and DFL are not. C2f, SPPF, neck concats and residuals stay consistent, and
    the result is made of stock Ultralytics and torch modules only. Every layer keeps at least
    ``round_to`` channels (or all it has, if fewer).

    Args:
        model (ultralytics.YOLO | DetectionModel): The model to prune (modified in place).
        ratio (float | None): Fraction of channels to remove from every prunable group, in [0, 1); 0.5 when
            neither ``ratio`` nor ``macs`` is given.
        criterion (str): ``nexp``, ``hybrid``, ``l1``, ``l2``, ``tp``, ``bn`` or ``random``.
        source (str | Path | Iterable): Calibration data for NEXP (see :func:`yolo_nexp.score`).
        batches (int): Calibration batches for NEXP.
        imgsz (int): Calibration input size, and the size MACs are reported at.
        batch (int): Images per calibration batch.
        round_to (int): Keep channel counts at multiples of this (hardware-friendly widths); 1 disables.
        alpha (float): NEXP weight of the ``hybrid`` criterion.
        global_pruning (bool): Rank channels across layers instead of removing ``ratio`` from each.
        macs (float | None): Instead of ``ratio``: the fraction of MACs to remove; the ratio is found by search.
        seed (int): Seed for calibration sampling, noise and the ``random`` criterion.
        verbose (bool): Log progress and a summary.

    Returns:
        (PruneReport): Channels per layer, MACs and params before and after, and timings.

    Examples:
        >>> from ultralytics import YOLO
        >>> import yolo_nexp
        >>> model = YOLO("yolov8n.yaml")
        >>> report = yolo_nexp.prune(model, ratio=0.5, source="noise", imgsz=320)
        >>> model.save("yolov8n-nexp50.pt")
    """
    check_prune_args(ratio, macs, criterion, alpha, round_to, batches)
    det = detection_model(model)
    widths_before = conv_widths(det)
    macs_before, params_before = macs_and_params(det, imgsz)
    seconds_scoring = 0.0

    t0 = time.perf_counter()
    with c2f_split(det):
        scores = None
        if criterion in NEEDS_SCORES:
            scores = score(det, source, batches=batches, imgsz=imgsz, batch=batch, seed=seed, verbose=verbose)
            seconds_scoring = time.perf_counter() - t0

        def importance_for(m: nn.Module):
            conv_scores = scores and {m.get_submodule(name).conv: s for name, s in scores.items()}
            return build_importance(criterion, conv_scores, alpha)

        t1 = time.perf_counter()
        if macs is not None:
            ratio = _ratio_for_macs(det, macs, importance_for, round_to, global_pruning, seed)
        elif ratio is None:
            ratio = 0.5
        _apply(det, ratio, importance_for(det), round_to, global_pruning, seed)
    seconds_pruning = time.perf_counter() - t1
    _sync_checkpoint(model, det)

    macs_after, params_after = macs_and_params(det, imgsz)
    widths_after = conv_widths(det)
    channels = {name: [widths_before[name], widths_after[name]] for name in widths_before}
    report = PruneReport(
        criterion=criterion,
        ratio=float(ratio),
        round_to=round_to,
        imgsz=imgsz,
        macs_before=macs_before,
        macs_after=macs_after,
        params_before=params_before,
        params_after=params_after,
        channels=channels,
        floored=_floored(channels, ratio, round_to, global_pruning),
        global_pruning=global_pruning,
        macs_target=macs,
        seconds_scoring=seconds_scoring,
        seconds_pruning=seconds_pruning,
    )
    if verbose:
        LOGGER.info(f"yolo-nexp: {report.summary()}")
        if report.floored:
            LOGGER.warning(
                f"yolo-nexp: {len(report.floored)} layers kept only their floor of channels: {', '.join(report.floored)}"
            )
    return report
