"""NEXP against the other criteria at equal MACs, before and after the same fine-tuning budget.

A yolov8n trained from scratch on a seeded synthetic detection dataset (8 classes, clutter,
occlusion, objects from 5% to 60% of the image; the trained baseline is cached, not committed) is
pruned to remove 46% (the paper's YOLOv8 point) and 70% of its MACs by each criterion, and by the
hybrid at alpha 0, 0.25, 0.5, 0.75 and 1; mAP50-95 is measured right after pruning and after
fine-tuning, over several seeds (calibration sample, random criterion, fine-tuning order).

Usage:
    python benchmarks/criteria.py --out benchmarks/results/criteria.md            # full (about an hour, 2 cores)
    python benchmarks/criteria.py --quick --out benchmarks/results/criteria-quick.md   # a few minutes
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ultralytics import YOLO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import yolo_nexp  # noqa: E402
from benchmarks.common import publish, schedule, trained_baseline  # noqa: E402
from yolo_nexp.pipeline import cache_dir  # noqa: E402
from yolo_nexp.synthetic import make_dataset  # noqa: E402

CRITERIA = [("nexp", None), ("l1", None), ("l2", None), ("random", None), ("bn", None), ("tp", None)] + [
    ("hybrid", a) for a in (0.0, 0.25, 0.5, 0.75, 1.0)
]
FULL = dict(n_train=384, n_val=96, imgsz=256, base_epochs=(40, 60), ft_epochs=2, targets=(0.46, 0.70), seeds=(0, 1))
QUICK = dict(n_train=48, n_val=16, imgsz=160, base_epochs=5, ft_epochs=1, targets=(0.46,), seeds=(0,))


def evaluate(model: YOLO, data: str, imgsz: int) -> float:
    return float(model.val(data=data, imgsz=imgsz, batch=16, plots=False, verbose=False).box.map)


def run_one(
    baseline: Path, data: str, criterion: str, alpha, target: float, seed: int, cfg: dict, project: Path, ratios
):
    """Prune one copy of the baseline, validate, fine-tune, validate; returns (MACs cut, mAP pruned, mAP fine-tuned).

    Layer-uniform widths depend on the ratio only, not on the criterion, so the ratio search (``macs=``) runs
    once per target and the ratio it found is reused (``ratios`` caches it); the MACs column checks this.
    """
    model = YOLO(str(baseline))
    report = yolo_nexp.prune(
        model,
        ratio=ratios.get(target),
        macs=None if target in ratios else target,
        criterion=criterion,
        alpha=0.5 if alpha is None else alpha,
        source=data,
        batches=4,
        batch=16,
        imgsz=cfg["imgsz"],
        round_to=1,  # fine widths, so that every criterion lands on the MACs target
        seed=seed,
        verbose=False,
    )
    ratios.setdefault(target, report.ratio)
    after_prune = evaluate(model, data, cfg["imgsz"])
    metrics = model.train(
        trainer=yolo_nexp.NexpTrainer,
        data=data,
        epochs=cfg["ft_epochs"],
        imgsz=cfg["imgsz"],
        batch=16,
        seed=seed,
        workers=2,
        project=str(project),
        name=f"{criterion}-{alpha}-{target}-{seed}",
        warmup_epochs=0,  # Ultralytics' warm-up (>= 100 steps, bias lr 0.1) would fill the whole short budget
        val=False,  # validate once, at the end
        plots=False,
        verbose=False,
    )
    return report.macs_reduction, after_prune, float(metrics.box.map)


def fmt(values: list[float]) -> str:
    """mean ± half the range (the spread over seeds)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {(max(values) - min(values)) / 2:.3f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny data, one target and seed: a smoke run of minutes")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cfg = QUICK if args.quick else FULL

    name = f"criteria-{cfg['n_train']}-{cfg['imgsz']}"
    data = str(
        make_dataset(
            cache_dir() / name,
            n_train=cfg["n_train"],
            n_val=cfg["n_val"],
            imgsz=cfg["imgsz"],
            nc=8,
            seed=0,
            max_objects=8,
        )
    )
    t_base = time.perf_counter()
    baseline = trained_baseline(data, cfg["base_epochs"], cfg["imgsz"], name)
    t_base = time.perf_counter() - t_base
    t0 = time.perf_counter()
    base_map = evaluate(YOLO(str(baseline)), data, cfg["imgsz"])
    project = Path(tempfile.mkdtemp(prefix="nexp-criteria-"))

    results = {}  # (label, target) -> lists
    ratios = {}  # target -> ratio found by the first search
    for target in cfg["targets"]:
        for criterion, alpha in CRITERIA:
            label = criterion if alpha is None else f"hybrid a={alpha:g}"
            runs = [run_one(baseline, data, criterion, alpha, target, s, cfg, project, ratios) for s in cfg["seeds"]]
            results[label, target] = [list(x) for x in zip(*runs)]
            print(label, target, runs, flush=True)

    header = (
        "| criterion | "
        + " | ".join(f"MACs cut ({t:.0%}) | mAP50-95 after pruning | after fine-tuning" for t in cfg["targets"])
        + " |"
    )
    lines = [
        "# Criteria at equal MACs: mAP50-95 right after pruning and after fine-tuning",
        "",
        f"Command: `python {' '.join(sys.argv)}`",
        "",
        f"yolov8n trained from its yaml for {schedule(cfg['base_epochs'])} on the synthetic dataset "
        f"({cfg['n_train']} train / {cfg['n_val']} val images at {cfg['imgsz']} px, 8 classes, up to 8 objects, seed 0); "
        f"baseline mAP50-95 **{base_map:.3f}**. Each criterion prunes it to the MACs target (ratio found by search once per target, "
        f"layer-uniform, round_to 1 so that the MACs can match; NEXP on 4 batches of 16 training images), then fine-tunes {cfg['ft_epochs']} "
        f"epoch(s) with NexpTrainer (no warm-up). Seeds {list(cfg['seeds'])} (calibration batches, random criterion, "
        f"fine-tuning order): mean ± half-range. Comparison {time.perf_counter() - t0:.0f} s on 2 CPU cores, "
        f"getting the baseline {t_base:.0f} s (a few seconds when it is cached).",
        "",
        header,
        "|---|" + "---|---|---|" * len(cfg["targets"]),
    ]
    for criterion, alpha in CRITERIA:
        label = criterion if alpha is None else f"hybrid a={alpha:g}"
        cells = []
        for t in cfg["targets"]:
            cut, pruned, tuned = results[label, t]
            cells += [f"{statistics.mean(cut):.1%}", fmt(pruned), fmt(tuned)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    text = "\n".join(lines + [""] + nexp_margins(results, cfg["targets"]) + [""])
    publish(text, args.out)
    if args.out:
        plot(results, cfg, args.out.with_suffix(".png"))


def nexp_margins(results: dict, targets) -> list[str]:
    """Table of NEXP's mean mAP50-95 minus each other criterion's, flagged where the gap exceeds both spreads."""

    def cell(label: str, target: float, stage: int) -> str:
        ours, theirs = results["nexp", target][stage], results[label, target][stage]
        gap = statistics.mean(ours) - statistics.mean(theirs)
        spreads = (max(ours) - min(ours)) / 2 + (max(theirs) - min(theirs)) / 2
        return f"{gap:+.3f}" + (" *" if abs(gap) > spreads else "")

    lines = [
        "NEXP's mean mAP50-95 minus each criterion's (positive: NEXP better; `*`: the gap is larger than the two "
        "half-ranges together, i.e. the seeds do not overlap):",
        "",
        "| criterion | " + " | ".join(f"{t:.0%}: after pruning | {t:.0%}: after fine-tuning" for t in targets) + " |",
        "|---|" + "---|---|" * len(targets),
    ]
    for criterion, alpha in CRITERIA[1:]:
        label = criterion if alpha is None else f"hybrid a={alpha:g}"
        lines.append(f"| {label} | " + " | ".join(cell(label, t, k) for t in targets for k in (1, 2)) + " |")
    return lines


def plot(results: dict, cfg: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [c if a is None else f"hyb {a:g}" for c, a in CRITERIA]
    keys = [c if a is None else f"hybrid a={a:g}" for c, a in CRITERIA]
    fig, axes = plt.subplots(
        1, len(cfg["targets"]), figsize=(6 * len(cfg["targets"]), 4), squeeze=False, tight_layout=True
    )
    for ax, t in zip(axes[0], cfg["targets"]):
        for k, (stage, colour) in enumerate(((1, "#c8c8c8"), (2, "#1f77b4"))):
            means = [statistics.mean(results[key, t][stage]) for key in keys]
            spread = [(max(results[key, t][stage]) - min(results[key, t][stage])) / 2 for key in keys]
            ax.bar(
                [i + 0.4 * k for i in range(len(keys))],
                means,
                0.4,
                yerr=spread,
                color=colour,
                label=("after pruning", "after fine-tuning")[k],
            )
        ax.set_xticks([i + 0.2 for i in range(len(keys))], labels, rotation=45, fontsize=8)
        ax.set_title(f"{t:.0%} fewer MACs")
        ax.set_ylabel("mAP50-95")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
