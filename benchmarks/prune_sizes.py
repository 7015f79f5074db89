"""MACs, params and wall time of NEXP pruning for YOLOv8 scales (randomly initialised, offline).

Usage:
    python benchmarks/prune_sizes.py --scales n s m --ratio 0.5 --imgsz 640 --out benchmarks/results/prune_sizes.md
"""

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from ultralytics import YOLO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import yolo_nexp  # noqa: E402
from benchmarks.common import publish  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", nargs="+", default=["n", "s", "m"])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--criterion", default="nexp")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--source", default="noise")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    rows = []
    for scale in args.scales:
        model = YOLO(f"yolov8{scale}.yaml")
        t0 = time.perf_counter()
        r = yolo_nexp.prune(
            model,
            ratio=args.ratio,
            criterion=args.criterion,
            source=args.source,
            batches=args.batches,
            batch=args.batch,
            imgsz=args.imgsz,
            verbose=False,
        )
        total = time.perf_counter() - t0
        rows.append(
            f"| yolov8{scale} | {r.macs_before / 1e9:.2f} | {r.macs_after / 1e9:.2f} | {r.macs_reduction:.1%} "
            f"| {r.params_before / 1e6:.2f} | {r.params_after / 1e6:.2f} | {r.params_reduction:.1%} "
            f"| {r.seconds_scoring:.1f} | {r.seconds_pruning:.1f} | {total:.1f} |"
        )
        print(rows[-1], flush=True)

    text = "\n".join(
        [
            f"# Pruning YOLOv8 with `{args.criterion}` at ratio {args.ratio}",
            "",
            f"Command: `python {' '.join(sys.argv)}`",
            "",
            f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}. Models from yaml (random init); calibration: {args.source}, "
            f"{args.batches} x {args.batch} images at {args.imgsz}. MACs counted at batch 1, {args.imgsz}x{args.imgsz}.",
            "`total s` includes counting MACs before and after.",
            "",
            "| model | GMACs before | GMACs after | MACs cut | M params before | M params after | params cut "
            "| scoring s | pruning s | total s |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    publish(text, args.out)


if __name__ == "__main__":
    main()
