"""Interleaved timing: the median and spread of several runners, timed in turns so drift hits them alike."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass


@dataclass
class Timing:
    """Milliseconds per run of one runner.

    Attributes:
        median (float): Median of the timed runs.
        p25 (float): First quartile.
        p75 (float): Third quartile.
        min (float): Fastest run.
        max (float): Slowest run.
        runs (int): Runs timed (after the warm-up).
    """

    median: float
    p25: float
    p75: float
    min: float
    max: float
    runs: int

    @classmethod
    def of(cls, ms: list[float]) -> Timing:
        """Statistics of a list of milliseconds (at least one)."""
        ms = sorted(ms)
        q = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else [ms[0]] * 3
        return cls(statistics.median(ms), q[0], q[2], ms[0], ms[-1], len(ms))

    def to_dict(self) -> dict:
        """Plain dict, for JSON."""
        return asdict(self)


def interleaved_ms(runners: dict, runs: int, warmup: int = 2, rounds: int = 5, clock=time.perf_counter) -> dict:
    """Time every runner ``runs`` times in ``rounds`` interleaved rounds, after ``warmup`` untimed runs each.

    A shared machine's speed drifts by 10-20% over minutes; interleaving spreads slow periods evenly over the
    runners compared instead of landing on whichever ran then. Each round runs every runner
    ``max(1, runs // rounds)`` times in turn.

    Args:
        runners (dict): ``{key: function running one batch}``.
        runs (int): Timed runs per runner (rounded down to a multiple of ``rounds``, at least ``rounds``).
        warmup (int): Untimed runs per runner first.
        rounds (int): Rounds the runs are spread over.
        clock (callable): Seconds, monotonic (``time.perf_counter``; tests pass a fake).

    Returns:
        (dict[key, Timing]): Milliseconds per run of each runner.
    """
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times = {key: [] for key in runners}
    for _ in range(rounds):
        for key, fn in runners.items():
            for _ in range(max(1, runs // rounds)):
                t = clock()
                fn()
                times[key].append((clock() - t) * 1e3)
    return {key: Timing.of(t) for key, t in times.items()}
