"""Passes: a ratio, MACs or latency target reached in several smaller prunes, each on the model the last one left."""

from __future__ import annotations

from collections.abc import Callable

from yolo_nexp.pruning import allocation as alloc
from yolo_nexp.report import PruneReport


def removed_so_far(reports: list[PruneReport], key: str) -> float:
    """Fraction of the MACs (``key`` ``macs``) or channels (``ratio``) that the passes so far removed."""
    return getattr(PruneReport.chain(reports), "macs_reduction" if key == "macs" else "ratio") if reports else 0.0


def floored_layers(channels: dict[str, list[int]], round_to: int) -> list[str]:
    """Layers cut down to the narrowest width they may keep."""
    return [n for n, (b, a) in channels.items() if a < b and a == alloc.allowed_widths(b, round_to)[-1]]


def prune_passes(
    model, ratio, macs, latency, passes: int, share: bool, backend: str, latency_batch: int, one_pass: Callable, args
) -> PruneReport:
    """Run the passes of :func:`yolo_nexp.prune` towards its target and chain their reports into one.

    Args:
        model: The model being pruned.
        ratio (float | None): Fraction of channels to remove in all, or None.
        macs (float | None): Fraction of MACs to remove in all, or None.
        latency (float | None): Fraction of the dense latency to reach, or None (then ``ratio`` or ``macs``).
        passes (int): Number of passes.
        share (bool): Whether the passes share the calibration images (pass ``k`` gets ``shared=(k - 1, passes)``).
        backend (str): Where ``latency`` is measured.
        latency_batch (int): Images per timed run.
        one_pass (Callable): One pass: called with ``ratio``, ``macs``, and ``latency`` or ``shared``.
        args (dict): The pruning arguments (``round_to``, ``imgsz`` and ``verbose`` are read here).

    Returns:
        (PruneReport): One report for all passes, the layers left at their floor listed.
    """
    round_to, imgsz, verbose = args["round_to"], args["imgsz"], args["verbose"]
    if latency is not None:
        from yolo_nexp.latency.target import prune_to_latency  # the latency package builds on this one

        lat = dict(backend=backend, batch=latency_batch, imgsz=imgsz, passes=passes, round_to=round_to, verbose=verbose)
        report = prune_to_latency(model, latency, lambda goal: one_pass(ratio=None, macs=None, latency=goal), **lat)
    elif passes == 1:
        return one_pass(ratio=ratio, macs=macs)
    else:
        ((key, total),) = ({"macs": macs} if macs is not None else {"ratio": ratio}).items()
        reports = []
        for k in range(1, passes + 1):
            # Each pass aims at its share of the target from what the passes before it actually removed, so
            # rounding that left a pass short is made up by the next instead of adding up.
            step = 1.0 - (1.0 - total * k / passes) / (1.0 - removed_so_far(reports, key))
            if step > 0 or not reports:
                target = {"ratio": None, "macs": None, key: max(step, 0.0)}
                reports.append(one_pass(**target, shared=(k - 1, passes) if share else None))
        report = PruneReport.chain(reports, macs_target=macs)
    report.floored = floored_layers(report.channels, round_to)
    return report


def sensitivity_images(calib, shared: tuple[int, int] | None, batches: int = 1) -> list:
    """The images a pass estimates the sensitivity on: the first ``batches`` kept calibration batches, or for pass
    ``k`` of ``n`` that share them (``shared = (k - 1, n)``) the ``k``-th of ``n`` slices of the first one."""
    if shared is None:
        return calib.images[:batches]
    (index, count), first = shared, calib.images[0]
    n = -(-len(first) // count)
    return [first[index * n : (index + 1) * n] if index * n < len(first) else first[:n]]
