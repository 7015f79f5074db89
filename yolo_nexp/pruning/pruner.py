"""Structured pruning of an Ultralytics detection model: calibrate, rank, allocate, repair, remove channel groups."""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Iterator
from itertools import islice

import torch
from torch import nn
from ultralytics.engine.model import Model
from ultralytics.utils import LOGGER

from yolo_nexp.arch.family import c2f_split, conv_widths, detection_model
from yolo_nexp.pruning import allocation as alloc
from yolo_nexp.pruning.args import (  # noqa: F401  (re-exported: the API's defaults and checks live there)
    DEFAULT_CRITERION,
    DEFAULT_PASSES,
    DEFAULT_RATIO,
    DEFAULT_SENSITIVITY_BATCHES,
    DEFAULT_SHARE,
    PLUGIN_KEYS,
    check_prune_args,
    prune_kwargs,
)
from yolo_nexp.pruning.groups import MacsModel, build_graph, linked_sets, prunable_groups, remove_channels
from yolo_nexp.pruning.information import conv_concentration, information_order, set_concentration
from yolo_nexp.pruning.lsq_repair import LeastSquaresFolder
from yolo_nexp.pruning.lsq_sensitivity import DEFAULT_ESTIMATE, sensitivity_curves
from yolo_nexp.pruning.passes import floored_layers, prune_passes, sensitivity_images
from yolo_nexp.pruning.reconstruct import reconstruct as refit_to_dense
from yolo_nexp.pruning.repair import MeanFolder, reestimate_batchnorm
from yolo_nexp.pruning.selection import SELECTION_SEED, prune_candidates
from yolo_nexp.report import PruneReport, macs_and_params
from yolo_nexp.scoring.calibration import calibrate
from yolo_nexp.scoring.criteria import NEEDS, build_importance, kept_batches
from yolo_nexp.scoring.sources import calibration_batches


def _sync_checkpoint(model, det: nn.Module) -> None:
    """Keep a ``YOLO`` object's checkpoint dict consistent with its pruned module: the dense model's EMA and
    optimizer state go, and a model built from a yaml gets a ``ckpt`` (``YOLO.train()`` hands its in-memory module
    to the trainer only when ``ckpt`` is non-empty; otherwise it rebuilds from the yaml)."""
    if isinstance(model, Model):
        model.ckpt = {**(model.ckpt or {}), "model": det, "ema": None, "optimizer": None}


def _rank(groups, importance) -> list:
    """Set each group's channel order (least important first); groups the criterion cannot score are left out."""
    ranked = []
    for g in groups:
        imp = importance(g.group)
        if imp is None:
            continue
        g.order = torch.argsort(imp.float().cpu(), stable=True)
        g.scores = imp.float().cpu()[g.order]
        ranked.append(g)
    return ranked


def _plan(
    det, groups, calib, ratio, macs, allocation, round_to, estimate, verbose, origin, latency=None, images=()
) -> tuple[list, list[int], float]:
    """Groups and the width each keeps, for a ratio, a MACs target or a latency goal (:mod:`yolo_nexp.latency`)
    under the chosen allocation (``images``: what the sensitivity estimate reads), and the seconds the estimate took."""
    sets = linked_sets(groups, det)
    names = {m: n for n, m in det.named_modules()}
    keys = [names[s[0].module] for s in sets]  # the sets' names in the latency table
    dense = [origin.setdefault(names[s[0].module], s[0].size) for s in sets]  # the first pass records them
    widths = alloc.removal_steps(sets, round_to, dense)
    macs_model = MacsModel(det)
    t0 = time.perf_counter()
    if allocation == "sensitivity":
        curves = sensitivity_curves(det, sets, widths, calib, estimate, images, verbose)
        saved = latency.saved(keys) if latency is not None else None  # distortion per ms instead of per MAC
        order = alloc.sensitivity_order(sets, widths, curves, macs_model, saved=saved)
    elif allocation == "information":
        order = information_order(widths, set_concentration(sets, conv_concentration(det, calib.information)))
    else:
        order = alloc.global_order(sets, widths) if allocation == "global" else alloc.uniform_order(widths)
    if latency is not None:
        n = latency.steps(keys, widths, order)
    elif macs is not None:
        n = alloc.steps_for_macs(sets, widths, order, macs, macs_model)
    else:
        n = alloc.steps_for_ratio(sets, widths, order, ratio, allocation)
    return (*alloc.expand(sets, alloc.widths_after(widths, order, n)), time.perf_counter() - t0)


def prune(
    model,
    ratio: float | None = None,
    criterion: str = DEFAULT_CRITERION,
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
    repair: str = "lsq",
    allocation: str = "sensitivity",
    bn_recal: bool = False,
    passes: int = DEFAULT_PASSES,
    latency: float | None = None,
    backend: str = "onnxruntime",
    latency_batch: int = 1,
    estimate: str = DEFAULT_ESTIMATE,
    share: bool = DEFAULT_SHARE,
    reconstruct: bool = False,
    candidates: int = 1,
    sensitivity_batches: int = DEFAULT_SENSITIVITY_BATCHES,
) -> PruneReport:
    """Prune a detection model in place by removing whole channel groups.

    Every Ultralytics ``Conv`` block of backbone, neck and head is prunable; the last conv of each head
    branch and DFL are not. C2f, SPPF, neck concats and residuals stay consistent, and the result is made
    of stock Ultralytics and torch modules only.

    Args:
        model (ultralytics.YOLO | DetectionModel): The model to prune (modified in place).
        ratio (float | None): Fraction of channels to remove, in [0, 1): from every group (``uniform``) or in
            all (other allocations); :data:`DEFAULT_RATIO` (0.5) when neither ``ratio`` nor ``macs`` is given. Never rounds up.
        criterion (str): Channel ranking, one of :data:`~yolo_nexp.scoring.criteria.CRITERIA`: the NEXP family
            (``nexp_use``, ``nexp``, ``nexpc``, ``hybrid``), magnitudes (``l1``, ``l2``, ``tp``, ``bn``), ``random``,
            and rivals (``taylor``, ``hessian``, ``lamp``, ``fpgm``, ``shapley``); see :mod:`yolo_nexp.scoring.criteria`.
        source (str | Path | Iterable): Calibration images (see :func:`yolo_nexp.score`).
        batches (int): Calibration batches.
        imgsz (int): Calibration input size, and the size MACs are reported at.
        batch (int): Images per calibration batch.
        round_to (int): Keep channel counts at multiples of this (hardware-friendly widths); 1 disables.
        alpha (float): NEXP weight of the ``hybrid`` criterion.
        global_pruning (bool): Same as ``allocation="global"`` (kept for older code and command lines).
        macs (float | None): Instead of ``ratio``: the fraction of MACs to remove (reached within one step).
        seed (int): Seed for calibration sampling, noise and the ``random`` criterion.
        verbose (bool): Log progress and a summary.
        repair (str): ``mean`` folds each removed channel's calibration mean into its consumers; ``lsq`` first
            predicts it from the channels the consumer keeps (least squares) and folds that in; ``none`` does neither.
        allocation (str): How many channels each group loses: ``uniform``, ``global``, ``sensitivity`` or
            ``information`` (see :mod:`yolo_nexp.pruning.allocation`).
        bn_recal (bool): Re-estimate BatchNorm statistics on the calibration images after pruning.
        passes (int): Reach the target in this many smaller prunes (compounding shares of it, as gradual
            pruning does), each calibrated, scored, allocated and repaired on the model the previous one left;
            1 prunes in one go (faster, worse beyond small cuts).
        latency (float | None): Instead of ``ratio`` or ``macs``: the fraction of the dense model's latency on
            ``backend``, measured, to reach (0.5: twice as fast); steps are ordered by distortion per millisecond
            saved and the whole model is timed after each pass (see :mod:`yolo_nexp.latency.target`).
        backend (str): Where ``latency`` is measured: ``onnxruntime`` (Ultralytics' ONNX export) or ``openvino``.
        latency_batch (int): Images per timed run (the batch deployed).
        estimate (str): The repair the ``sensitivity`` allocation's first-order distortion estimate simulates:
            ``mean`` (removed channels replaced by their means) or ``lsq`` (by their least-squares prediction
            from the kept channels, :mod:`yolo_nexp.pruning.lsq_sensitivity`; slower).
        share (bool): With ``passes > 1``, the passes share the calibration: pass ``k`` reads every ``passes``-th
            batch from the ``k``-th on and estimates the sensitivity on its slice of the first one, so the passes
            together cost about what one pass costs; False: every pass reads all ``batches`` (slower).
        reconstruct (bool): After the passes, refit every conv module after module so that its outputs on the
            calibration images match the dense model's (:mod:`yolo_nexp.pruning.reconstruct`).
        candidates (int): Prune this many copies (seeds ``seed``, ``seed + 1``, ...) and keep the one whose detections
            on another draw of ``source`` stay closest to the dense model's (:mod:`yolo_nexp.pruning.selection`);
            costs ``candidates`` prunes. Needs images the dense model detects something on (a source of fixed
            batches, such as tensors, is compared on those same batches).
        sensitivity_batches (int): Calibration batches the ``sensitivity`` allocation's estimate reads (the first
            ones, 1 to ``batches``): more images, a steadier allocation, a longer estimate (one forward and two
            backward passes per image); memory does not grow with them.

    Returns:
        (PruneReport): Channels per layer, MACs and params before and after, and timings.

    Examples:
        >>> from ultralytics import YOLO
        >>> import yolo_nexp
        >>> model = YOLO("yolov8n.yaml")
        >>> report = yolo_nexp.prune(model, ratio=0.5, source="noise", imgsz=320)
        >>> model.save("yolov8n-pruned.pt")
    """
    check_prune_args(
        ratio, macs, criterion, alpha, round_to, batches, repair, allocation, bn_recal, global_pruning, passes,
        latency, backend, latency_batch, estimate, share, reconstruct, candidates, sensitivity_batches,
    )  # fmt: skip
    allocation = "global" if global_pruning else allocation
    ratio = DEFAULT_RATIO if ratio is None and macs is None and latency is None else ratio
    if isinstance(source, Iterator) and (passes > 1 or reconstruct or candidates > 1):  # spent by a first reading
        source = tuple(islice(source, batches))  # a tuple is replayed as batches (a list means image files)
    if candidates > 1:
        given = dict(locals())  # every argument as checked and completed above; the candidates differ by seed
        same = {k: v for k, v in given.items() if k not in ("model", "seed", "candidates", "global_pruning")}
        det = detection_model(model)
        images = list(
            calibration_batches(source, batches=batches, imgsz=imgsz, batch=batch, seed=seed + SELECTION_SEED)
        )
        one = lambda m, s: prune(m, **{**same, "seed": s, "verbose": False})  # noqa: E731
        report, scores, chosen = prune_candidates(det, candidates, one, images, seed, verbose)
        report.candidates, report.chosen = scores, chosen
        _sync_checkpoint(model, det)
        return report
    args = dict(criterion=criterion, source=source, batches=batches, imgsz=imgsz, batch=batch, round_to=round_to)
    args.update(alpha=alpha, seed=seed, verbose=verbose, repair=repair, allocation=allocation, bn_recal=bn_recal)
    args.update(estimate=estimate, sensitivity_batches=sensitivity_batches)
    origin: dict[str, int] = {}  # every group's dense width, by its root conv's name: floors stay the dense model's
    dense = copy.deepcopy(detection_model(model)) if reconstruct else None
    if reconstruct:  # the passes record the dense indices of the output channels each conv keeps
        args.update(dense_kept={})
    one_pass = functools.partial(_prune_once, model, origin=origin, **args)
    report = prune_passes(model, ratio, macs, latency, passes, share, backend, latency_batch, one_pass, args)
    if reconstruct:
        t0 = time.perf_counter()
        images = list(calibration_batches(source, batches=batches, imgsz=imgsz, batch=batch, seed=seed))
        det = detection_model(model)
        with c2f_split(det), c2f_split(dense):
            refit_to_dense(det, dense, args["dense_kept"], images, verbose=verbose)
        report.reconstruct, report.seconds_reconstruction = True, time.perf_counter() - t0
        if verbose:
            LOGGER.info(f"yolo-nexp: reconstruction {report.seconds_reconstruction:.1f}s")
    return report


def _prune_once(
    model, ratio, macs, criterion, source, batches, imgsz, batch, round_to, alpha, seed, verbose, repair, allocation,
    bn_recal, origin, latency=None, estimate=DEFAULT_ESTIMATE, shared=None, dense_kept=None,
    sensitivity_batches=DEFAULT_SENSITIVITY_BATCHES,
) -> PruneReport:  # fmt: skip
    """One pass of :func:`prune` (arguments checked there); ``origin`` keeps the dense widths across passes,
    ``latency`` (a :class:`~yolo_nexp.latency.target.LatencyGoal`) replaces ``ratio`` and ``macs``, and ``shared``
    is ``(k - 1, n)`` for pass ``k`` of ``n`` that share the calibration (``share``), else None."""
    det = detection_model(model)
    widths_before = conv_widths(det)
    macs_before, params_before = macs_and_params(det, imgsz)

    t0 = time.perf_counter()
    with c2f_split(det):
        need = NEEDS.get(criterion)
        calib = None
        if need or repair != "none" or allocation in ("sensitivity", "information") or bn_recal:
            keep = max(batches if bn_recal else 0, sensitivity_batches if allocation == "sensitivity" else 0)
            keep = max(keep, kept_batches(criterion, batches))  # the batches the criterion reads again
            mean_estimate = allocation == "sensitivity" and estimate == "mean"
            inputs = need == "inputs" or repair == "mean" or mean_estimate  # the input means (cross has its own)
            cross = repair == "lsq" or need == "cross" or (allocation == "sensitivity" and estimate == "lsq")
            flags = dict(firing=need == "firing", spread=need == "spread", inputs=inputs, cross=cross)
            flags["information"] = allocation == "information"  # map rank and entropy of every block's output
            count = min(shared[1], batches) if shared else 1  # pass k reads every count-th batch from the k-th
            part = (shared[0] % count, count) if shared else (0, 1)
            calib = calibrate(
                det, source, batches, imgsz, batch, seed, **flags, keep_images=keep, verbose=verbose, part=part
            )
        graph = build_graph(det)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the random criterion, reproducibly
            groups = _rank(prunable_groups(graph, det), build_importance(criterion, det, calib, alpha, seed=seed))
        t1 = time.perf_counter()
        images = sensitivity_images(calib, shared, sensitivity_batches) if allocation == "sensitivity" else []
        groups, kept, seconds_sensitivity = _plan(
            det, groups, calib, ratio, macs, allocation, round_to, estimate, verbose, origin, latency, images
        )
        folders = {
            "mean": lambda: MeanFolder(det, calib.input_means()),
            "lsq": lambda: LeastSquaresFolder(det, calib.cross),
        }
        folder = folders[repair]() if repair in folders else None
        names = {m: n for n, m in det.named_modules()}
        kept_out = remove_channels(graph, groups, kept, before_prune=folder)
        if dense_kept is not None:  # compose with the earlier passes' choices: dense indices, by conv name
            for conv, index in kept_out.items():
                before = dense_kept.get(names[conv])
                dense_kept[names[conv]] = index if before is None else before[index]
    if bn_recal:
        reestimate_batchnorm(det, calib.images)
    seconds_surgery = time.perf_counter() - t1 - seconds_sensitivity
    _sync_checkpoint(model, det)

    macs_after, params_after = macs_and_params(det, imgsz)
    widths_after = conv_widths(det)
    channels = {name: [widths_before[name], widths_after[name]] for name in widths_before}
    report = PruneReport(
        criterion=criterion,
        ratio=1 - sum(a for _, a in channels.values()) / sum(b for b, _ in channels.values()),
        round_to=round_to,
        imgsz=imgsz,
        macs_before=macs_before,
        macs_after=macs_after,
        params_before=params_before,
        params_after=params_after,
        channels=channels,
        floored=floored_layers(channels, round_to),
        global_pruning=allocation == "global",
        macs_target=macs,
        seconds_scoring=t1 - t0,
        seconds_sensitivity=seconds_sensitivity,
        seconds_surgery=seconds_surgery,
        repair=repair,
        allocation=allocation,
        bn_recal=bn_recal,
    )
    if verbose:
        LOGGER.info(f"yolo-nexp: {report.summary()}")
        if report.floored:
            LOGGER.warning(
                f"yolo-nexp: {len(report.floored)} layers were cut to their floor: {', '.join(report.floored)}"
            )
    return report
