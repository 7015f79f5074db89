"""The pruning arguments: their defaults, their checks, and which of the plugin's arguments go to :func:`yolo_nexp.prune`."""

from __future__ import annotations

from yolo_nexp.pruning import allocation as alloc
from yolo_nexp.pruning.lsq_sensitivity import DEFAULT_ESTIMATE, ESTIMATES
from yolo_nexp.pruning.repair import check_repair
from yolo_nexp.scoring.criteria import CRITERIA, check_criterion

DEFAULT_CRITERION = CRITERIA[0]
DEFAULT_RATIO = 0.5  # ratio when no ratio, macs or latency is given; configs/default.yaml's ``ratio`` (a test checks)
# Prunes the target is reached in, each recalibrated on the model the last left: on the real-model benchmark 4
# passes kept 23% of mAP50-95 at -46% MACs where one kept 6-9% (2 seeds), at about 2.5x the prune time.
DEFAULT_PASSES = 4  # configs/default.yaml's ``passes`` (a test checks)
DEFAULT_SHARE = False  # configs/default.yaml's ``share``: whether the passes share the calibration images
# Calibration batches the sensitivity estimate reads (configs/default.yaml's ``sensitivity_batches``; a test checks).
DEFAULT_SENSITIVITY_BATCHES = 1

PLUGIN_KEYS = (
    "ratio",
    "macs",
    "criterion",
    "alpha",
    "round_to",
    "batches",
    "repair",
    "allocation",
    "bn_recal",
    "passes",
    "estimate",
    "share",
    "reconstruct",
    "candidates",
    "sensitivity_batches",
    "latency",
    "backend",
    "latency_batch",
)


def check_prune_args(
    ratio=None,
    macs=None,
    criterion: str = DEFAULT_CRITERION,
    alpha: float = 0.5,
    round_to: int = 8,
    batches: int = 4,
    repair: str = "lsq",
    allocation: str = "sensitivity",
    bn_recal: bool = False,
    global_pruning: bool = False,
    passes: int = DEFAULT_PASSES,
    latency=None,
    backend: str = "onnxruntime",
    latency_batch: int = 1,
    estimate: str = DEFAULT_ESTIMATE,
    share: bool = DEFAULT_SHARE,
    reconstruct: bool = False,
    candidates: int = 1,
    sensitivity_batches: int = DEFAULT_SENSITIVITY_BATCHES,
) -> None:
    """Validate pruning arguments before any work is done; every message names the argument and what to give.

    Raises:
        ValueError: For the first argument that is out of range or of the wrong type, or (a
            :class:`~yolo_nexp.latency.backends.BackendMissing`) a latency target on a backend that is not installed.
    """

    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    def whole(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    if ratio is not None and macs is not None:
        raise ValueError("ratio and macs: give one of them, not both (ratio removes channels, macs targets MACs).")
    if ratio is not None and not (number(ratio) and 0.0 <= ratio < 1.0):
        raise ValueError(f"ratio must be a number in [0, 1), e.g. ratio=0.5; got {ratio!r}.")
    if macs is not None and not (number(macs) and 0.0 < macs < 1.0):
        raise ValueError(f"macs must be the fraction of MACs to remove, in (0, 1), e.g. macs=0.46; got {macs!r}.")
    from yolo_nexp.latency.backends import check_latency_args  # the latency package imports this one's siblings

    check_latency_args(latency, ratio, macs, backend, latency_batch)
    check_criterion(criterion)
    if not (number(alpha) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1] (1 = pure NEXP); got {alpha!r}.")
    if not (whole(round_to) and round_to >= 1):
        raise ValueError(f"round_to must be a whole number >= 1 (1 disables rounding); got {round_to!r}.")
    if not (whole(batches) and batches >= 1):
        raise ValueError(f"batches must be a whole number >= 1; got {batches!r}.")
    check_repair(repair)
    if allocation not in alloc.ALLOCATIONS:
        raise ValueError(f"allocation: unknown '{allocation}', choose one of {', '.join(alloc.ALLOCATIONS)}.")
    if not isinstance(bn_recal, bool):
        raise ValueError(f"bn_recal must be True or False; got {bn_recal!r}.")
    if not isinstance(global_pruning, bool):
        raise ValueError(f"global must be True or False; got {global_pruning!r}.")
    if not (whole(passes) and 1 <= passes <= 20):
        raise ValueError(f"passes must be a whole number from 1 to 20 (1 prunes in one go); got {passes!r}.")
    if not isinstance(share, bool):
        raise ValueError(f"share must be True or False; got {share!r}.")
    if not isinstance(reconstruct, bool):
        raise ValueError(f"reconstruct must be True or False; got {reconstruct!r}.")
    if not (whole(candidates) and 1 <= candidates <= 16):
        raise ValueError(
            f"candidates must be a whole number from 1 to 16 (1: one prune, no choice); got {candidates!r}."
        )
    if not (whole(sensitivity_batches) and 1 <= sensitivity_batches <= batches):  # batches is checked above
        raise ValueError(
            f"sensitivity_batches must be a whole number from 1 to batches ({batches!r}): the estimate reads the first "
            f"calibration batches; got {sensitivity_batches!r}."
        )
    if share and passes > 1 and sensitivity_batches > 1:
        raise ValueError(
            "sensitivity_batches > 1 with share=True: the shared passes split the first batch between them for the "
            "estimate; give one or the other."
        )
    if estimate not in ESTIMATES:
        raise ValueError(
            f"estimate: unknown '{estimate}', choose one of {', '.join(ESTIMATES)} (the repair it simulates)."
        )


def prune_kwargs(plugin: dict) -> dict:
    """The :func:`yolo_nexp.prune` arguments among the plugin's arguments (``configs/default.yaml``; ``global`` is renamed)."""
    return {**{k: plugin[k] for k in PLUGIN_KEYS if k in plugin}, "global_pruning": plugin.get("global", False)}
