"""MACs and params cut at one ratio for every n-scale config of the supported family (randomly initialised, offline).

Usage:
    python benchmarks/families.py --ratio 0.5 --imgsz 640 --out benchmarks/results/families.md
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
from benchmarks.common import command_line, publish  # noqa: E402

CONFIGS = [
    "yolov8n.yaml",
    "yolov8n-p6.yaml",
    "yolov8n-ghost.yaml",
    "yolov8n-seg.yaml",
    "yolov8n-pose.yaml",
    "yolov8n-obb.yaml",
    "yolo11n.yaml",
    "yolo11n-seg.yaml",
    "yolo11n-pose.yaml",
    "yolo11n-obb.yaml",
]
KEPT = {  # what stays at full width beyond every head's output convs and DFL (see yolo_nexp.arch.heads, blocks_attention)
    "seg": "Proto's first conv and output",
    "yolo11": "C2PSA attention and residual stream",
}


def kept(cfg: str) -> str:
    return "; ".join(v for k, v in KEPT.items() if k in cfg) or "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=CONFIGS)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--criterion", default="nexp")
    ap.add_argument("--allocation", default="uniform")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--source", default="noise")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    rows = []
    for cfg in args.configs:
        model = YOLO(cfg)
        t0 = time.perf_counter()
        r = yolo_nexp.prune(
            model,
            ratio=args.ratio,
            criterion=args.criterion,
            allocation=args.allocation,
            source=args.source,
            batches=args.batches,
            batch=args.batch,
            imgsz=args.imgsz,
            verbose=False,
        )
        total = time.perf_counter() - t0
        rows.append(
            f"| {cfg.removesuffix('.yaml')} | {model.task} | {r.macs_before / 1e9:.2f} | {r.macs_after / 1e9:.2f} "
            f"| {r.macs_reduction:.1%} | {r.params_before / 1e6:.2f} | {r.params_after / 1e6:.2f} "
            f"| {r.params_reduction:.1%} | {kept(cfg)} | {total:.1f} |"
        )
        print(rows[-1], flush=True)

    text = "\n".join(
        [
            f"# The supported family at ratio {args.ratio} (`{args.criterion}`, allocation `{args.allocation}`)",
            "",
            f"Command: `{command_line()}`",
            "",
            f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}. Models from yaml (random init); calibration: {args.source}, "
            f"{args.batches} x {args.batch} images at {args.imgsz}. MACs counted at batch 1, {args.imgsz}x{args.imgsz}.",
            f"With allocation `uniform` every prunable group loses {args.ratio:.0%} of its channels (rounded to 8, never",
            "below 8), so the widths, MACs and params do not depend on the criterion or the calibration images.",
            "Never pruned in any model: the last conv of every head branch (boxes, classes, mask coefficients,",
            "keypoints, angles) and DFL; `kept` lists what else stays at full width. `s` includes calibration, the",
            "repair and counting MACs before and after.",
            "",
            "| model | task | GMACs before | GMACs after | MACs cut | M params before | M params after | params cut "
            "| kept | s |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    publish(text, args.out)


if __name__ == "__main__":
    main()
