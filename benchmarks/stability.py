"""How stable are NEXP ranks? Spearman correlation of per-channel NEXP across calibration sources and training.

Sources: the training split (synthetic data), uniform noise, the real COCO128 images, and 1 batch
against 8 batches of the training split; states: the same yolov8n before its first training step and
after training (the criteria benchmark's baseline, trained if not cached).
And what NEXP ranks by: it is exactly 2N/(N-1) * q(1-q) * (1 - position share) (firing rate q; the
share of the firing variance that the spatial position explains), so the script correlates it with
both factors and profiles the channels it would prune first.

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
from benchmarks.common import Baseline, command_line, publish  # noqa: E402
from yolo_nexp.arch.family import conv_blocks, detection_model  # noqa: E402
from yolo_nexp.scoring.nexp import FiringCounter, position_share, recording  # noqa: E402
from yolo_nexp.scoring.sources import calibration_batches  # noqa: E402

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


PRUNED = 0.27  # fraction of each layer's channels that the criteria benchmark's 46% MACs cut removes


def rho(a: dict, b: dict) -> tuple[float, float, float]:
    """Spearman rho over all channels of all layers, the median of the per-layer rhos, and the pruning overlap.

    Overlap: of the channels that ``a`` ranks in the lowest ``PRUNED`` fraction of their layer, the share that
    ``b`` ranks there too (ties broken at random); chance level is ``PRUNED``, identical rankings give 1.
    """
    all_a, all_b = torch.cat([a[k] for k in a]), torch.cat([b[k] for k in a])
    per_layer = [spearmanr(a[k], b[k])[0] for k in a if len(a[k]) > 2 and a[k].std() > 0 and b[k].std() > 0]
    gen = torch.Generator().manual_seed(0)
    both = total = 0
    for k in a:
        n = int(len(a[k]) * PRUNED)
        low_a, low_b = (set(lowest(x[k], n, gen).tolist()) for x in (a, b))
        both, total = both + len(low_a & low_b), total + n
    return float(spearmanr(all_a, all_b)[0]), float(statistics.median(per_layer)), both / total


def lowest(scores: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """Indices of the ``n`` lowest scores, exact ties (dead channels all score 0) broken at random."""
    jitter = torch.rand(len(scores), generator=gen, dtype=torch.float64) * 1e-12
    return torch.argsort(scores.double() + jitter)[:n]


def firing_counts(model, source, batches: int, imgsz: int, batch: int) -> dict[str, FiringCounter]:
    """Per conv block: the scorer's own firing counts (images with output > 0, per channel and position)."""
    det = detection_model(model).eval()
    with recording(conv_blocks(det)) as counters, torch.inference_mode():
        for x in calibration_batches(source, batches=batches, imgsz=imgsz, batch=batch):
            det(x)
    return counters


def filter_norms(model) -> dict[str, torch.Tensor]:
    """L2 norm of every output filter of every conv block (the magnitude the l2 criterion ranks by)."""
    return {
        k: b.conv.weight.detach().float().flatten(1).norm(dim=1) for k, b in conv_blocks(detection_model(model)).items()
    }


def low_nexp_profile(scores: dict, rate: dict, share: dict) -> tuple[str, str]:
    """What the channels NEXP would prune first are: shares mostly off / mostly on / in between, and the median
    position share of the in-between ones, among all channels and among each layer's lowest ``PRUNED`` fraction."""
    gen = torch.Generator().manual_seed(0)
    low = {k: lowest(x, int(len(x) * PRUNED), gen) for k, x in scores.items()}
    every = [torch.cat(list(d.values())) for d in (rate, share)]
    lows = [torch.cat([d[k][i] for k, i in low.items()]) for d in (rate, share)]

    def shares(rate: torch.Tensor, share: torch.Tensor) -> str:
        off, on = rate < 0.1, rate > 0.9
        between = share[~off & ~on]
        return f"{off.double().mean():.0%} | {on.double().mean():.0%} | {1 - (off | on).double().mean():.0%} | {between.median():.2f}"

    return shares(*every), shares(*lows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    base = Baseline()  # the criteria benchmark's dataset and trained model (trained now if not cached)
    data, imgsz = base.data(), base.imgsz
    trained, untrained = YOLO(str(base.weights())), YOLO(str(base.weights(initial=True)))
    base_map = float(trained.val(data=data, imgsz=imgsz, batch=16, plots=False, verbose=False).box.map)

    def s(model, source, batches=args.batches, seed=0):
        return yolo_nexp.score(model, source, batches=batches, imgsz=imgsz, batch=args.batch, seed=seed, verbose=False)

    rows, profile, train = [], [], {}
    for state, model in (("trained", trained), ("untrained", untrained)):
        counters = firing_counts(model, data, args.batches, imgsz, args.batch)  # the same images as s(model, data)
        train[state] = {k: c.score() for k, c in counters.items()}
        factors = {k: position_share(c) for k, c in counters.items()}
        rate, share = ({k: f[i] for k, f in factors.items()} for i in (0, 1))
        comparisons = {
            "train split vs noise": s(model, "noise"),
            "train split vs COCO128 images": s(model, COCO128),
            "train split vs train split, other images (seed 1)": s(model, data, seed=1),
            "1 batch vs 8 batches of the train split": None,
            "NEXP (train split) vs filter L2 norm": filter_norms(model),
            "NEXP vs firing balance q(1-q)": {k: q * (1 - q) for k, q in rate.items()},
            # channels that never change have no position share; their NEXP is 0 whatever this factor is
            "NEXP vs image-driven share (1 - position share)": {k: 1 - x.nan_to_num(1.0) for k, x in share.items()},
        }
        for label, other in comparisons.items():
            if other is None:
                r = rho(s(model, data, batches=1), s(model, data, batches=8))
            else:
                r = rho(train[state], other)
            rows.append(f"| {state} | {label} | {r[0]:.3f} | {r[1]:.3f} | {r[2]:.2f} |")
            print(rows[-1], flush=True)
        every, low = low_nexp_profile(train[state], rate, share)
        profile += [f"| {state} | all channels | {every} |", f"| {state} | lowest 27% by NEXP, per layer | {low} |"]
    r = rho(train["untrained"], train["trained"])
    rows.append(f"| untrained vs trained | same images (train split) | {r[0]:.3f} | {r[1]:.3f} | {r[2]:.2f} |")

    text = "\n".join(
        [
            "# Stability of NEXP ranks (Spearman rho of per-channel NEXP)",
            "",
            f"Command: `{command_line()}`",
            "",
            f"Trained: the criteria benchmark's baseline, {base.describe()}; validation mAP50-95 {base_map:.3f}. "
            f"Untrained: the same run's weights before its first training step. Scores on {args.batches} batches of "
            f"{args.batch} images at {imgsz} px unless stated. `all channels`: one rho over every channel of every "
            f"conv block (ranks across layers, as global pruning uses them); `per-layer median`: the median of the rhos "
            f"within each block (ranks within a layer, as layer-uniform pruning uses them); `same lowest 27%`: of the "
            f"channels the first ranks in the lowest 27% of their layer (what the 46% MACs cut removes), the share the "
            f"second ranks there too (chance: 0.27). The last two rows of each model compare NEXP with the two factors "
            f"it is the product of: NEXP = 2N/(N-1) * q(1-q) * (1 - position share), for a channel firing (output > 0) "
            f"at a share q of the (image, position) pairs, where the position share is the part of the firing variance "
            f"q(1-q) that the spatial position explains (0: where the channel fires depends only on the image; 1: only "
            f"on the position, the same in every image).",
            "",
            "| model | comparison | rho, all channels | rho, per-layer median | same lowest 27% |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "What NEXP prunes first, on the train split: the share of channels that fire (output > 0) at under 10% "
            "of (image, position) pairs (mostly off), at over 90% (mostly on: the sign never changes, the value may), "
            "or in between; and, for those in between, the median position share.",
            "",
            "| model | channels | mostly off | mostly on | in between | position share (in between, median) |",
            "|---|---|---|---|---|---|",
            *profile,
            "",
        ]
    )
    publish(text, args.out)


if __name__ == "__main__":
    main()
