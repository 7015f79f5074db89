"""Pruning to a measured latency, and the dense-against-pruned latency every report gives.

``latency=x``: the dense model is exported for the backend and timed; the latency table
(:mod:`.table`) says what every removal step saves; each pass orders the steps by distortion per
millisecond saved (``allocation=sensitivity``; other allocations keep their order) and takes the fewest
whose predicted saving reaches that pass's share of the target. After each pass the whole model is
exported and timed, interleaved with the dense one, and the next pass aims from the measured ratio,
its prediction scaled by the most a predicted millisecond has been measured to save (:func:`next_scale`). If the ratio is still above ``x`` after
``passes``, up to :data:`EXTRA_PASSES` more passes follow; the report says whether the target was met.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from ultralytics.utils import LOGGER

from yolo_nexp.arch.family import detection_model
from yolo_nexp.latency.backends import BackendMissing, check_backend, model_runner
from yolo_nexp.latency.table import LatencyTable, latency_table
from yolo_nexp.latency.timing import Timing, interleaved_ms
from yolo_nexp.report import PruneReport

EXTRA_PASSES = 3  # passes after ``passes`` while the measured ratio is above the target
# Seconds of timed runs per comparison (both models), within the run counts below. At 4 s a yolov8m at 640 got 11
# runs a model on 2 cores, its quartiles +-10%: one such median sent latency=0.5 to 0.436 where a rerun reached 0.494.
BUDGET_S = 8.0
MIN_RUNS, MAX_RUNS, ROUNDS = 10, 40, 5


@dataclass
class LatencyGoal:
    """What one pass must save, and how steps are costed: passed to the pruner's planning (``_plan``).

    Attributes:
        table (LatencyTable): Milliseconds of each set's layers at its widths.
        need_ms (float): Predicted milliseconds this pass must save.
        predicted_ms (float): What the steps chosen are predicted to save (set by :meth:`steps`).
    """

    table: LatencyTable
    need_ms: float
    predicted_ms: float = 0.0

    def saved(self, keys: list[str]):
        """``saved(i, before, after)``: milliseconds a step of set ``i`` (named ``keys[i]``) saves."""
        return lambda i, before, after: self.table.saved(keys[i], before, after)

    def steps(self, keys: list[str], widths, order) -> int:
        """The fewest steps of ``order`` whose predicted saving reaches :attr:`need_ms` (all when none does)."""
        kept, total = [ws[0] for ws in widths], 0.0
        for n, (i, w) in enumerate(order):
            if total >= self.need_ms:
                self.predicted_ms = total
                return n
            total += self.table.saved(keys[i], kept[i], w)
            kept[i] = w
        self.predicted_ms = total
        return len(order)


class Bench:
    """The dense model exported and loaded on the backend, to time pruned models against, interleaved.

    Args:
        det (nn.Module): The dense detection model (exported now; unchanged).
        backend (str): A supported, installed backend.
        imgsz (int): Input size.
        batch (int): Images per run.
    """

    def __init__(self, det: nn.Module, backend: str, imgsz: int, batch: int = 1):
        self.backend, self.imgsz, self.batch = backend, imgsz, batch
        self.dense = model_runner(det, backend, imgsz, batch)

    def compare(self, det: nn.Module) -> tuple[Timing, Timing]:
        """Milliseconds of the dense model and of ``det`` (exported now), timed in interleaved rounds."""
        pruned = model_runner(det, self.backend, self.imgsz, self.batch)
        first = interleaved_ms({"dense": self.dense, "pruned": pruned}, runs=ROUNDS, warmup=1, rounds=ROUNDS)
        each = (first["dense"].median + first["pruned"].median) / 1e3  # seconds per pair of runs
        runs = int(min(MAX_RUNS, max(MIN_RUNS, BUDGET_S / max(each, 1e-6))))
        timed = interleaved_ms({"dense": self.dense, "pruned": pruned}, runs=runs, warmup=0, rounds=ROUNDS)
        return timed["dense"], timed["pruned"]

    def fill(self, report: PruneReport, det: nn.Module, target: float | None = None) -> PruneReport:
        """Time ``det`` against the dense model and write the latencies (and whether ``target`` was met) into ``report``."""
        dense, pruned = self.compare(det)
        return record(report, self.backend, self.batch, dense, pruned, target)


def record(report, backend, batch, dense: Timing, pruned: Timing, target=None, note: str = "") -> PruneReport:
    """Write dense and pruned latencies into ``report``; with a ``target``, whether the measured ratio met it."""
    report.backend, report.latency_batch, report.latency_target = backend, batch, target
    report.latency_ms = {"dense": dense.to_dict(), "pruned": pruned.to_dict()}
    ratio = pruned.median / dense.median
    report.latency_met = None if target is None else ratio <= target
    if target is not None and not report.latency_met:
        note = note or f"latency target {target:g} not met: measured ratio {ratio:.3f}"
    report.latency_note = note
    return report


def next_scale(scale: float, saved: float, predicted_ms: float, dense_ms: float) -> float:
    """Measured milliseconds per millisecond the table predicts, after a pass that saved ``saved`` of the dense latency.

    The estimate only grows: the next pass takes steps as if a predicted millisecond saved at least as much as it
    ever did. On the real YOLOv8s the measured saving per predicted millisecond went 0.39 (the first guess), 0.27,
    then 0.46: following it down to 0.27 made the third pass cut 70% of the MACs where 0.625 was the goal. A
    shortfall is made up by the next pass; an overshoot cannot be undone. A pass measured as saving nothing or
    less (timing noise, or widths the backend runs slowly) leaves it as it was.
    """
    if predicted_ms <= 0 or saved <= 0:
        return scale
    return min(max(scale, saved * dense_ms / predicted_ms, 0.25), 50.0)


def open_bench(model, backend: str, imgsz: int, batch: int) -> tuple[Bench | None, str]:
    """A :class:`Bench` of ``model`` as it is now, or None and why (the backend is not installed or supported)."""
    try:
        check_backend(backend)
    except BackendMissing as e:
        return None, f"latency not measured: {e}"
    return Bench(detection_model(model), backend, imgsz, batch), ""


def prune_to_latency(model, target: float, prune_pass, backend: str, batch: int, imgsz: int, passes: int, round_to: int,
                     verbose: bool = True) -> PruneReport:  # fmt: skip
    """Prune ``model`` in place until its measured latency is at most ``target`` times the dense model's.

    Args:
        model (ultralytics.YOLO | nn.Module): The model (modified in place).
        target (float): Latency ratio to reach, in (0, 1).
        prune_pass (callable): ``prune_pass(goal)`` prunes once towards a :class:`LatencyGoal` and returns its report.
        backend (str): Backend to measure on (checked and installed).
        batch (int): Images per timed run.
        imgsz (int): Input size.
        passes (int): Passes the target is reached in (compounding shares of the latency cut).
        round_to (int): The pruner's ``round_to`` (the table's widths).
        verbose (bool): Log the latency table's measurement.

    Returns:
        (PruneReport): The passes chained, with dense and pruned latency and whether the target was met.
    """
    det = detection_model(model)
    bench = Bench(det, backend, imgsz, batch)
    table = latency_table(det, backend, imgsz, batch, round_to, verbose=verbose)
    dense = pruned = interleaved_ms({"dense": bench.dense}, runs=MIN_RUNS, warmup=1, rounds=ROUNDS)["dense"]
    # scale: measured saving per ms the table predicts. Before any pass, as if the whole model's time were in
    # proportion to its convs': that overstates savings where other operators take a fixed share, so the first
    # pass falls short rather than overshoots (a cut cannot be undone, a shortfall is made up by the next pass).
    scale = min(max(dense.median / max(table.dense_ms(), 1e-9), 0.25), 50.0)
    ratio, reports = 1.0, []
    for k in range(1, passes + EXTRA_PASSES + 1):
        goal_ratio = 1.0 - (1.0 - target) * min(k, passes) / passes
        if ratio <= goal_ratio:
            if k >= passes:
                break
            continue
        goal = LatencyGoal(table, (ratio - goal_ratio) * dense.median / scale)
        report = prune_pass(goal)
        if report.macs_after >= report.macs_before:
            break  # nothing left to remove
        reports.append(report)
        expected = ratio - goal.predicted_ms * scale / dense.median  # the ratio this pass was predicted to reach
        dense, pruned = bench.compare(det)
        measured = ratio - pruned.median / dense.median  # fraction of the dense latency this pass saved
        scale = next_scale(scale, measured, goal.predicted_ms, dense.median)
        ratio = pruned.median / dense.median
        if verbose:
            LOGGER.info(
                f"yolo-nexp: latency pass {k}: aimed at a ratio of {goal_ratio:.3f} to the dense model, predicted "
                f"{expected:.3f}, measured {ratio:.3f} (MACs -{1 - report.macs_after / reports[0].macs_before:.1%})"
            )
    if not reports:
        raise ValueError(f"latency={target:g}: nothing could be pruned from this model.")
    chained = PruneReport.chain(reports)
    return record(chained, backend, batch, dense, pruned, target)
