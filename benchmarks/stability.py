"""How stable are NEXP ranks? Spearman correlation of per-channel NEXP across calibration sources and training.

Sources: the training split (synthetic data), uniform noise, the real COCO128 images, and 1 batch
against 8 batches of the training split; states: the same yolov8n before its first training step and
after training (the criteria benchmark's baseline, trained if not cached).

Usage:
    python benchmarks/stability.py --out benchmarks/results/stability.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from ultralytics import YOLO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import yolo_nexp  # noqa: E402
from benchmarks.common import publish, schedule, trained_baseline  # noqa: E402
from yolo_nexp.pipeline import cache_dir  # noqa: E402
from yolo_nexp.synthetic import make_dataset  # noqa: E402

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco128" / "images" / "train2017"


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties given their average rank (dead channels all score 0)."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    values, inverse = np.unique(x, return_inverse=True)
    return (np.bincount(inverse, r) / np.bincount(inverse))[inverse]


def spearmanr(a, b) -> tuple[float]:
    """Spearman's rho: Pearson correlation of the (tie-averaged) ranks."""
    return (float(np.corrcoef(ranks(np.asarray(a)), ranks(np.asarray(b)))[0, 1]),)


def rho(a: dict, b: dict) -> tuple[float, float]:
    """Spearman rho over all channels of all layers, and the median of the per-layer rhos."""
    all_a, all_b = torch.cat([a[k] for k in a]), torch.cat([b[k] for k in a])
    per_layer = [spearmanr(a[k], b[k])[0] for k in a if len(a[k]) > 2 and a[k].std() > 0 and b[k].std() > 0]
    return float(spearmanr(all_a, all_b)[0]), float(statistics.median(per_layer))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument(
        "--base-epochs", type=int, nargs="+", default=[40, 60], help="epochs of the cached trained baseline, per stage"
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    name = f"criteria-384-{args.imgsz}"  # the criteria benchmark's dataset and baseline
    data = str(make_dataset(cache_dir() / name, n_train=384, n_val=96, imgsz=args.imgsz, nc=8, seed=0, max_objects=8))
    trained = YOLO(str(trained_baseline(data, tuple(args.base_epochs), args.imgsz, name)))
    untrained = YOLO(str(trained_baseline(data, tuple(args.base_epochs), args.imgsz, name, initial=True)))
    base_map = float(trained.val(data=data, imgsz=args.imgsz, batch=16, plots=False, verbose=False).box.map)

    def s(model, source, batches=args.batches, seed=0):
        return yolo_nexp.score(
            model, source, batches=batches, imgsz=args.imgsz, batch=args.batch, seed=seed, verbose=False
        )

    rows = []
    for state, model in (("trained", trained), ("untrained", untrained)):
        train = s(model, data)
        comparisons = {
            "train split vs noise": s(model, "noise"),
            "train split vs COCO128 images": s(model, COCO128),
            "train split vs train split, other images (seed 1)": s(model, data, seed=1),
            "1 batch vs 8 batches of the train split": None,
        }
        for label, other in comparisons.items():
            if other is None:
                r = rho(s(model, data, batches=1), s(model, data, batches=8))
            else:
                r = rho(train, other)
            rows.append(f"| {state} | {label} | {r[0]:.3f} | {r[1]:.3f} |")
            print(rows[-1], flush=True)
    r = rho(s(untrained, data), s(trained, data))
    rows.append(f"| untrained vs trained | same images (train split) | {r[0]:.3f} | {r[1]:.3f} |")

    text = "\n".join(
        [
            "# Stability of NEXP ranks (Spearman rho of per-channel NEXP)",
            "",
            f"Command: `python {' '.join(sys.argv)}`",
            "",
            f"yolov8n (8 classes). Trained: {schedule(tuple(args.base_epochs))} on the synthetic dataset of the criteria "
            f"benchmark, validation mAP50-95 {base_map:.3f}; "
            f"untrained: the same run's weights before its first training step. Scores on {args.batches} batches of "
            f"{args.batch} images at {args.imgsz} px unless stated. `all channels`: one rho over every channel of every "
            f"conv block (ranks across layers, as global pruning uses them); `per-layer median`: the median of the rhos "
            f"within each block (ranks within a layer, as layer-uniform pruning uses them).",
            "",
            "| model | comparison | rho, all channels | rho, per-layer median |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    )
    publish(text, args.out)


if __name__ == "__main__":
    main()
