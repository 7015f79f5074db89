"""Pruning inside Ultralytics training on the synthetic dataset: dense, pruning at initialisation, pruning later.

Each run trains yolov8n from its yaml for --epochs epochs with Ultralytics' ordinary ``model.train``;
the pruned runs register ``yolo_nexp.attach`` first. Reports params and MACs before/after and the
final mAP50-95 (Ultralytics' validator on the val split, best.pt).

Usage:
    python benchmarks/callback_runs.py --epochs 10 --prune-epoch 3 --out benchmarks/results/callback.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from ultralytics import YOLO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import yolo_nexp  # noqa: E402
from benchmarks.common import command_line, publish  # noqa: E402
from yolo_nexp.job import resolve_data  # noqa: E402
from yolo_nexp.report import macs_and_params  # noqa: E402


def run(name: str, data: str, args, project: Path, epoch: int | None) -> str:
    model = YOLO("yolov8n.yaml")
    cb = (
        yolo_nexp.attach(
            model,
            ratio=args.ratio,
            epoch=epoch,
            batches=4,
            criterion="nexp",
            allocation="uniform",
            distill=0,
            verbose=False,
        )
        if epoch is not None
        else None
    )
    t = time.perf_counter()
    metrics = model.train(
        data=data,
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=16,
        workers=2,
        seed=0,
        project=str(project),
        name=name,
        plots=False,
        verbose=False,
    )
    seconds = time.perf_counter() - t
    macs, params = macs_and_params(model.model, args.imgsz)
    if cb:
        (r,) = cb.reports
        before = f"{r.macs_before / 1e9:.3f} / {r.params_before / 1e6:.3f}"
    else:
        before = f"{macs / 1e9:.3f} / {params / 1e6:.3f}"
    when = "-" if epoch is None else f"start of epoch {epoch}"
    return (
        f"| {name} | {when} | {before} | {macs / 1e9:.3f} / {params / 1e6:.3f} | {metrics.box.map50:.4f} "
        f"| {metrics.box.map:.4f} | {seconds:.0f} |"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--prune-epoch", type=int, default=3)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    data = resolve_data("synthetic")
    project = Path(tempfile.mkdtemp(prefix="nexp-callback-"))
    rows = [
        run("dense", data, args, project, None),
        run("PaI", data, args, project, 0),
        run(f"epoch {args.prune_epoch}", data, args, project, args.prune_epoch),
    ]
    text = "\n".join(
        [
            "# Pruning inside an Ultralytics training run (yolo_nexp.attach), synthetic data",
            "",
            f"Command: `{command_line()}`",
            "",
            f"yolov8n from yaml, {args.epochs} epochs at imgsz {args.imgsz}, batch 16, seed 0, on the plugin's synthetic "
            f"dataset (128 train / 32 val images, 8 classes); ratio {args.ratio}, NEXP on 4 training batches. "
            f"MACs at {args.imgsz}x{args.imgsz}, batch 1. mAP from Ultralytics' final validation of best.pt. CPU, 2 cores.",
            "",
            "| run | pruned at | GMACs / Mparams before | GMACs / Mparams after | mAP50 | mAP50-95 | train s |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    publish(text, args.out)


if __name__ == "__main__":
    main()
