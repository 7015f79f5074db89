"""A lead from ``layer_study.py``, tried one-shot: the sensitivity estimate without its class-probability term.

``layer_study-real.md`` found that, over the real YOLOv8s's 51 prunable sets, the box part of the allocation's
output distortion ranks one-set cuts by their mAP50-95 cost per MAC better (Spearman 0.77) than the whole distortion
(0.71; class term alone 0.54). This script prunes the real model with the defaults, once as they are and once
with the estimate's class-probability weights set to zero (``linear_sensitivity.output_weights`` patched here, in
the benchmark only: boxes weighted by the dense confidence over the box size, as the default does), and compares
fidelity mAP50-95 at the same MACs cuts. An exploration, not a change of the package.

Usage:
    python benchmarks/distortion_weights.py --cuts 0.25 0.46 --seeds 0 --out benchmarks/results/distortion_weights-real.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ResultStore, command_line, publish, run_variants, variant_table  # noqa: E402
from benchmarks.real_model import RealModel, validate  # noqa: E402


def box_only(original):
    """``output_weights`` with the class-probability weights zeroed."""

    def weights(ref, nc):
        w = original(ref, nc)
        w[:, 4 : 4 + nc] = 0.0
        return w

    return weights


def run(real: RealModel, data: str, cut: float, seed: int, variant: str) -> dict:
    from ultralytics import YOLO

    import yolo_nexp
    import yolo_nexp.pruning.linear_sensitivity as ls

    original = ls.output_weights
    ls.output_weights = box_only(original) if variant == "box only" else original
    try:
        model = YOLO(str(real.weights()))
        t = time.perf_counter()
        report = yolo_nexp.prune(
            model, macs=cut, source=data, imgsz=real.imgsz, round_to=1, seed=seed, verbose=False, batches=4, batch=8
        )  # fmt: skip
        seconds = time.perf_counter() - t
    finally:
        ls.output_weights = original
    return {"cut": report.macs_reduction, "map": validate(model, data, real.imgsz)["map"], "seconds": seconds}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuts", type=float, nargs="+", default=[0.25, 0.46])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", default=["default", "box only"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    real = RealModel()
    data = real.data()
    store = ResultStore(args.out.with_suffix(".json") if args.out else None)
    run_variants(store, args.variants, args.cuts, args.seeds, lambda c, s, v: run(real, data, c, s, v))
    lines = [
        "# The sensitivity estimate without its class term, one-shot on the real model",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Baseline: {real.describe()}; dense 0.943. `yolo_nexp.prune` with its defaults (nexp_lsq, sensitivity "
        "allocation with the lsq estimate, lsq repair, 4 passes), `macs=` each cut, `round_to=1`, calibration 4 x 8 "
        "training images at 640 px. 'box only': the estimate's class-probability weights set to zero. mAP50-95 per "
        "seed (seconds per prune).",
        "",
        *variant_table(store, args.variants, args.cuts, args.seeds, lambda r: f"{r['map']:.3f} ({r['seconds']:.0f} s)"),
    ]
    publish("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
