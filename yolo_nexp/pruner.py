"""Structured pruning of an Ultralytics YOLOv8 detection model: score, rank, remove whole channel groups."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch
import torch_pruning as tp
from torch import nn
from ultralytics.engine.model import Model
from ultralytics.utils import LOGGER

from .criteria import NEEDS_SCORES, build_importance
from .graph import c2f_split, conv_widths, detection_model, never_pruned, traceable_head
from .nexp import score
from .report import PruneReport, macs_and_params

TRACE_SIZE = 64  # input size for dependency tracing: any multiple of the largest stride gives the same graph


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


def prune(
    model,
    ratio: float = 0.5,
    criterion: str = "nexp",
    source="noise",
    batches: int = 4,
    imgsz: int = 640,
    batch: int = 8,
    round_to: int = 8,
    alpha: float = 0.5,
    global_pruning: bool = False,
    seed: int = 0,
    verbose: bool = True,
) -> PruneReport:
    """Prune a YOLOv8 detection model in place by removing whole channel groups.

    Every Ultralytics ``Conv`` block of backbone, neck and Detect head is prunable; the last conv of
    each Detect branch and DFL are not. C2f, SPPF, neck concats and residuals stay consistent, and
    the result is made of stock Ultralytics and torch modules only.

    Args:
        model (ultralytics.YOLO | DetectionModel): The model to prune (modified in place).
        ratio (float): Fraction of channels to remove from every prunable group, in [0, 1).
        criterion (str): ``nexp``, ``hybrid``, ``l1``, ``l2``, ``tp``, ``bn`` or ``random``.
        source (str | Path | Iterable): Calibration data for NEXP (see :func:`yolo_nexp.score`).
        batches (int): Calibration batches for NEXP.
        imgsz (int): Calibration input size, and the size MACs are reported at.
        batch (int): Images per calibration batch.
        round_to (int): Keep channel counts at multiples of this (hardware-friendly widths); 1 disables.
        alpha (float): NEXP weight of the ``hybrid`` criterion.
        global_pruning (bool): Rank channels across layers instead of removing ``ratio`` from each.
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
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be a number in [0, 1), got {ratio!r}.")
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a whole number >= 1, got {round_to!r}.")
    det = detection_model(model)
    build_importance(criterion, {}, alpha)  # validate criterion and alpha before any work
    widths_before = conv_widths(det)
    macs_before, params_before = macs_and_params(det, imgsz)
    param = next(det.parameters())
    seconds_scoring = 0.0

    t0 = time.perf_counter()
    with c2f_split(det), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        conv_scores = None
        if criterion in NEEDS_SCORES:
            scores = score(det, source, batches=batches, imgsz=imgsz, batch=batch, seed=seed, verbose=verbose)
            conv_scores = {det.get_submodule(name).conv: s for name, s in scores.items()}
            seconds_scoring = time.perf_counter() - t0
        t1 = time.perf_counter()
        importance = build_importance(criterion, conv_scores, alpha)
        example = torch.zeros(1, 3, TRACE_SIZE, TRACE_SIZE, device=param.device, dtype=param.dtype)
        with _trainable(det), traceable_head(det):
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
    seconds_pruning = time.perf_counter() - t1
    _sync_checkpoint(model, det)

    macs_after, params_after = macs_and_params(det, imgsz)
    widths_after = conv_widths(det)
    report = PruneReport(
        criterion=criterion,
        ratio=float(ratio),
        round_to=round_to,
        imgsz=imgsz,
        macs_before=macs_before,
        macs_after=macs_after,
        params_before=params_before,
        params_after=params_after,
        channels={name: [widths_before[name], widths_after[name]] for name in widths_before},
        seconds_scoring=seconds_scoring,
        seconds_pruning=seconds_pruning,
    )
    if verbose:
        LOGGER.info(f"yolo-nexp: {report.summary()}")
    return report
