"""Allocation: how many channels each group keeps, for a ratio or a MACs target.

Every allocation is an ordered list of removal steps: one step takes a linked set of groups (a group, or
the two halves of a C2f, which must stay equal) from one allowed width to the next (multiples of
``round_to``, never below a floor). A target is then a prefix of that list:

- ``uniform``: steps ordered by the fraction of the set removed after them, so every group loses the
  same fraction (as Torch-Pruning's layer-uniform ratio, but rounding never removes more than asked);
- ``global``: steps ordered by the importance of the most important channel they remove, so channels
  compete across layers (the criterion's scores must then be comparable across layers);
- ``sensitivity``: steps ordered by measured output distortion per MAC saved (see :mod:`.sensitivity`), or per
  millisecond saved on a backend for a latency target (see :mod:`yolo_nexp.latency`);
- ``information``: steps ordered so that each set loses a share set by its information concentration, the
  fusion of its feature maps' rank and entropy (see :mod:`.information`).

A ratio keeps the longest prefix that removes at most that fraction of channels (per group for
``uniform``, of all channels otherwise); a MACs target keeps the prefix whose conv MACs cut is nearest
that fraction (above or below it), so it lands within one step of the target instead of one rounding of
every layer.
"""

from __future__ import annotations

import heapq
import math

from yolo_nexp.pruning.groups import MacsModel, PrunableGroup

ALLOCATIONS = ("uniform", "global", "sensitivity", "information")
MAX_REMOVED = 0.9  # no group loses more than this fraction of its channels (besides the round_to floor)


def step_fraction(total: float, step: int, steps: int) -> float:
    """Fraction of what is *left* to remove at ``step`` (1-based) so that ``total * step / steps`` is gone after it.

    Shared by ratios (of channels) and MACs targets: both compound the same way.
    """
    before, after = total * (step - 1) / steps, total * step / steps
    return 1.0 - (1.0 - after) / (1.0 - before)


def allowed_widths(size: int, round_to: int, dense: int | None = None) -> list[int]:
    """Widths a group may keep, widest first: its own, then multiples of ``round_to`` down to the floor.

    The floor is set by the group's ``dense`` width (its own by default), so pruning in passes never takes a
    group below the floor one pass would have left it.
    """
    dense = size if dense is None else dense
    floor = min(size, max(min(round_to, dense), math.ceil(dense * (1 - MAX_REMOVED))))
    widths = [size] + list(range((size // round_to) * round_to, floor - 1, -round_to))
    return sorted({w for w in widths if floor <= w <= size}, reverse=True) or [size]


def removal_steps(sets: list[list[PrunableGroup]], round_to: int, dense: list[int] | None = None) -> list[list[int]]:
    """For each linked set, the widths it passes through (its first group's size first); floors from ``dense``."""
    dense = dense or [None] * len(sets)
    return [allowed_widths(s[0].size, round_to, d) for s, d in zip(sets, dense)]


def uniform_order(widths) -> list[tuple[int, int]]:
    """Steps ``(set index, width after)`` by the fraction removed after them, set order breaking ties."""
    steps = [(1 - w / ws[0], i, w) for i, ws in enumerate(widths) for w in ws[1:]]
    return [(i, w) for _, i, w in sorted(steps)]


def global_order(sets, widths) -> list[tuple[int, int]]:
    """Steps by the largest importance among the channels they remove (any member of the set)."""
    steps = []
    for i, (s, ws) in enumerate(zip(sets, widths)):
        for w in ws[1:]:
            key = max(float(g.scores[g.size - w - 1]) for g in s)
            steps.append((key, 1 - w / ws[0], i, w))
    return [(i, w) for *_, i, w in sorted(steps)]


def sensitivity_order(sets, widths, distortion, macs: MacsModel | None = None, saved=None) -> list[tuple[int, int]]:
    """Greedy: always the next step of the set whose next step costs the least distortion per unit saved.

    Args:
        distortion (list[dict[int, float]]): Per set, the output distortion measured at some widths.
        macs (MacsModel | None): What a step saves by default: the conv MACs of the channels it removes.
        saved (callable | None): Instead of MACs, ``saved(i, before, after)``: what set ``i``'s step from
            ``before`` to ``after`` channels saves (e.g. milliseconds on a backend, :mod:`yolo_nexp.latency`).
    """
    curves = [_curve(ws[0], d) for ws, d in zip(widths, distortion)]
    if saved is None:
        per_channel = [_macs_per_channel(s, macs) for s in sets]
        saved = lambda i, before, after: per_channel[i] * (before - after)  # noqa: E731

    def key(i: int, k: int) -> float:  # distortion added per unit saved by the k-th step of set i
        before, after = widths[i][k - 1], widths[i][k]
        rise = _interpolate(curves[i], widths[i][0] - after) - _interpolate(curves[i], widths[i][0] - before)
        return rise / max(saved(i, before, after), 1e-12)

    heap = [(key(i, 1), i, 1) for i, ws in enumerate(widths) if len(ws) > 1]
    heapq.heapify(heap)
    order = []
    while heap:
        _, i, k = heapq.heappop(heap)
        order.append((i, widths[i][k]))
        if k + 1 < len(widths[i]):
            heapq.heappush(heap, (key(i, k + 1), i, k + 1))
    return order


def _curve(size: int, measured: dict[int, float]) -> list[tuple[int, float]]:
    """Distortion against channels removed, from (0, 0), made non-decreasing."""
    points, top = [(0, 0.0)], 0.0
    for width, d in sorted(measured.items(), reverse=True):
        top = max(top, d)
        points.append((size - width, top))
    return points


def _interpolate(points: list[tuple[int, float]], removed: int) -> float:
    """Piecewise-linear value at ``removed``, extended beyond the last point with the last slope."""
    for (r0, d0), (r1, d1) in zip(points, points[1:]):
        if removed <= r1:
            return d0 + (d1 - d0) * (removed - r0) / max(r1 - r0, 1)
    if len(points) < 2:
        return 0.0
    (r0, d0), (r1, d1) = points[-2], points[-1]
    return d1 + (d1 - d0) * (removed - r1) / max(r1 - r0, 1)


def _macs_per_channel(linked: list[PrunableGroup], macs: MacsModel) -> float:
    """Conv MACs saved per channel removed from every group of a linked set (others dense)."""
    removed: dict = {}
    for g in linked:
        for key, per in g.removed_per_channel.items():
            removed[key] = removed.get(key, 0) + per
    return macs.dense - macs.macs(removed)


def widths_after(widths, order, n_steps: int) -> list[int]:
    """Width of each set after the first ``n_steps`` steps of ``order``."""
    kept = [ws[0] for ws in widths]
    for i, w in order[:n_steps]:
        kept[i] = min(kept[i], w)
    return kept


def expand(sets, kept_per_set: list[int]) -> tuple[list[PrunableGroup], list[int]]:
    """Per-group widths from per-set widths."""
    groups = [g for s in sets for g in s]
    return groups, [k for s, k in zip(sets, kept_per_set) for _ in s]


def steps_for_ratio(sets, widths, order, ratio: float, allocation: str) -> int:
    """Steps that remove at most ``ratio`` of each set's channels (uniform) or of all channels (otherwise)."""
    if allocation == "uniform":
        return sum(1 for i, w in order if 1 - w / widths[i][0] <= ratio + 1e-9)
    total = sum(ws[0] * len(s) for s, ws in zip(sets, widths))
    removed, kept = 0, [ws[0] for ws in widths]
    for n, (i, w) in enumerate(order):
        removed += (kept[i] - w) * len(sets[i])
        if removed > ratio * total + 1e-9:
            return n
        kept[i] = w
    return len(order)


def steps_for_macs(sets, widths, order, target: float, macs: MacsModel) -> int:
    """The number of steps whose conv MACs cut is nearest ``target`` (the cut grows with every step)."""

    def cut(n: int) -> float:
        return macs.cut(*expand(sets, widths_after(widths, order, n)))

    lo, hi = 0, len(order)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if cut(mid) < target else (lo, mid)
    if lo > 0 and abs(cut(lo - 1) - target) < abs(cut(lo) - target):
        return lo - 1  # one step can be worth a point or two of MACs in a high-resolution layer
    return lo
