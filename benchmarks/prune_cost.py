"""Cost of the whole prune step against plain forward passes of the same calibration images, in one run.

For each scale (a yolov8 built from its yaml: timing does not depend on the weights), the calibration images
(noise, ``--images`` of them in batches of 16 at ``--imgsz``) are first run through the model once, timed, then
``yolo_nexp.prune`` runs with its defaults (``nexp_lsq``, sensitivity allocation with the lsq estimate, lsq repair)
on the same images to a MACs target, in each of ``--passes`` and, for more than one pass, also with the passes
sharing the calibration images (``share=True``); its report splits the seconds into scoring (calibration pass and
scores), sensitivity and surgery (allocation, repair, structural pruning). The ratio is whole step / forward passes; the
forward passes are timed before and after the prune step (mean ± half the difference).

Usage:
    python benchmarks/prune_cost.py --scales n s m --out benchmarks/results/prune_cost.md
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import command_line, publish  # noqa: E402

BATCH = 16


def measure(scale: str, images: int, imgsz: int, macs: float, passes: int, share: bool, sensitivity: int = 1) -> dict:
    """Seconds of plain forward passes and of each part of the prune step, for one scale."""
    from ultralytics import YOLO

    import yolo_nexp
    from yolo_nexp.scoring.sources import calibration_batches

    yolo = YOLO(f"yolov8{scale}.yaml")
    model = yolo.model.eval()
    batches = images // BATCH
    dense = copy.deepcopy(model)

    def forward() -> float:
        with torch.inference_mode():
            t = time.perf_counter()
            for x in calibration_batches("noise", batches=batches, imgsz=imgsz, batch=BATCH):
                dense(x)
            return time.perf_counter() - t

    with torch.inference_mode():
        dense(next(iter(calibration_batches("noise", batches=1, imgsz=imgsz, batch=BATCH, seed=1))))  # warm-up
    before = forward()
    t = time.perf_counter()
    kw = dict(source="noise", batches=batches, imgsz=imgsz, batch=BATCH, passes=passes, share=share, verbose=False)
    kw["sensitivity_batches"] = sensitivity
    report = yolo_nexp.prune(yolo, macs=macs, **kw)
    total = time.perf_counter() - t
    after = forward()  # the same passes again: a machine whose load changed shows it as a spread
    return {
        "forward": (before + after) / 2,
        "spread": abs(before - after) / 2,
        "scoring": report.seconds_scoring,
        "sensitivity": report.seconds_sensitivity,
        "surgery": report.seconds_surgery,
        "total": total,
        "cut": report.macs_reduction,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", nargs="+", default=["n", "s", "m"])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--macs", type=float, default=0.25)
    ap.add_argument("--passes", type=int, nargs="+", default=[1, 4], help="passes to time (default 1 and 4)")
    ap.add_argument("--no-share", action="store_true", help="leave out the shared-calibration rows")
    ap.add_argument("--sensitivity-batches", type=int, nargs="+", default=[1], help="batches the sensitivity reads")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    lines = [
        "# Prune step cost against plain forward passes",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, CPU; "
        f"torch {torch.__version__}. {args.images} noise images at {args.imgsz} px in batches of {BATCH}; "
        f"`yolo_nexp.prune(macs={args.macs}, passes=..., share=..., "
        "sensitivity_batches=...)`, otherwise the defaults (the sensitivity on the first batch; with `share=True` each pass reads its share of the batches, and its slice of one for the sensitivity).",
        "",
        "| model | passes | share | sensitivity batches | forward passes (s) | scoring (s) | sensitivity (s) | surgery (s) | whole step (s) "
        "| whole / forward | MACs cut |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    runs = [(k, False, b) for b in args.sensitivity_batches for k in args.passes]
    if not args.no_share:  # share=True estimates on a slice of one batch
        runs += [(k, True, 1) for k in args.passes if k > 1]
    for scale, (passes, share, sensitivity) in ((s, run) for s in args.scales for run in runs):
        r = measure(scale, args.images, args.imgsz, args.macs, passes, share, sensitivity)
        lines.append(
            f"| yolov8{scale} | {passes} | {'yes' if share else 'no'} | {sensitivity} | {r['forward']:.1f} ± {r['spread']:.1f} "
            f"| {r['scoring']:.1f} | {r['sensitivity']:.1f} | {r['surgery']:.1f} "
            f"| {r['total']:.1f} | {r['total'] / r['forward']:.2f}x | {r['cut']:.1%} |"
        )
        print(lines[-1], flush=True)
    publish("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
