"""Recovery after pruning: mAP50-95 per epoch for plain fine-tuning, distillation, and gradual pruning + distillation.

The trained baseline of the criteria benchmark (yolov8n on the synthetic data, cached) is pruned by
``yolo-nexp prune`` itself, as a user would run it, to remove 46% and 70% of its MACs with the default
criterion and with ``tp``, and recovers for a tenth of the baseline's training epochs, validated after
every epoch. Methods: ``distill=0`` (Ultralytics' loss only), ``distill=1`` (plus distillation from the
dense model), ``distill=1 steps=2`` (half the cut first, the rest halfway through), and, for the default
criterion at 46%, distillation from the teacher alone on the training images without their labels.

Usage:
    python benchmarks/recovery.py --out benchmarks/results/recovery.md
    python benchmarks/recovery.py --quick --out /tmp/recovery-quick.md      # smoke run, minutes
    python benchmarks/recovery.py --model yolov8s --criteria nexp_use --seeds 0 \
        --out benchmarks/results/recovery-yolov8s.md                          # the second scale, a subset
    python benchmarks/recovery.py --model fall-yolov8s --out benchmarks/results/recovery-real.md   # real model
    python benchmarks/recovery.py --model fall-yolov8s --epochs 10 --methods 'distill (default)' --seeds 0 \
        --out benchmarks/results/recovery-real-10.md                          # a longer budget

With ``--model fall-yolov8s`` the baseline is the real trained YOLOv8s of ``real_model.py`` (fidelity labels),
and the job runs with its own recovery defaults (no ``warmup_epochs=0``), at 640 px on square inputs; the
methods then also compare Ultralytics' feature distillation (``distill_model=`` the dense checkpoint) and
Ultralytics' training defaults (what users got before the job set its own).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ultralytics import YOLO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import Baseline, ResultStore, command_line, publish  # noqa: E402
from benchmarks.real_model import RealModel, validate  # noqa: E402
from yolo_nexp.cli import entrypoint  # noqa: E402
from yolo_nexp.pruning.pruner import DEFAULT_CRITERION  # noqa: E402
from yolo_nexp.training.recovery import every, unlabelled_train_split  # noqa: E402

METHODS = {"fine-tune": ["distill=0"], "distill": ["distill=1"], "gradual + distill": ["distill=1", "steps=2"]}
FULL = dict(cuts=(0.46, 0.70), criteria=(DEFAULT_CRITERION, "tp"), seeds=(0, 1), base=Baseline())
QUICK = dict(cuts=(0.46,), criteria=(DEFAULT_CRITERION,), seeds=(0,), base=Baseline(n_train=48, n_val=16, epochs=5))
ULTRALYTICS_DEFAULTS = ["optimizer=auto", "lr0=0.01", "warmup_epochs=3", "mosaic=1.0"]  # Ultralytics' own
# The real model: a CPU budget of 3 epochs over the 128 fidelity-labelled training images at 640 px, batch 16.
LR_SWEEP = (0.003, 0.01)  # learning rates beside the job's lr0=0.001 (SGD, no warm-up, no mosaic); 0.01 not run yet
ADAMW_SWEEP = (0.0001, 0.0003)
REAL = dict(cuts=(0.46,), criteria=(DEFAULT_CRITERION,), seeds=(0,), epochs=3, job_args=["rect=False"])


def real_methods(teacher: Path) -> dict:
    """Recovery methods on the real model: the job's defaults, plain, Ultralytics' distillation, both, its defaults."""
    return {
        "distill (default)": ["distill=1"],
        "fine-tune": ["distill=0"],
        "Ultralytics distill_model": ["distill=0", f"distill_model={teacher}"],
        "both distillations": ["distill=1", f"distill_model={teacher}"],
        "distill, Ultralytics' training defaults": ["distill=1", *ULTRALYTICS_DEFAULTS],
        **{f"distill, lr0={lr}": ["distill=1", f"lr0={lr}"] for lr in LR_SWEEP},  # the job's SGD, other rates
        # Ultralytics accumulates gradients up to nbs=64 images: at batch 16 on 128 images, 2 steps an epoch
        "distill, nbs=16": ["distill=1", "nbs=16"],
        # Adam's per-weight step sizes at fine-tuning rates (optimizer=auto's AdamW at 0.002 with warm-up and
        # mosaic is what wrecked recovery; these run without either)
        **{f"distill, AdamW lr0={lr}": ["distill=1", "optimizer=AdamW", f"lr0={lr}"] for lr in ADAMW_SWEEP},
        # more distinct views of the 128 images (4-image mosaics) at the job's SGD rate, without the rest of
        # Ultralytics' defaults; close_mosaic=0 keeps it on to the last epoch
        "distill, mosaic=1.0": ["distill=1", "mosaic=1.0", "close_mosaic=0"],
        "fine-tune, mosaic=1.0": ["distill=0", "mosaic=1.0", "close_mosaic=0"],
        # every conv refit to the dense model's outputs after pruning, before the recovery starts
        "distill, reconstruct=True": ["distill=1", "reconstruct=True"],
    }


def unlabelled(data_yaml: str, root: Path) -> str:
    """The same data with the train images' labels left out (val keeps its labels, to measure)."""
    from ultralytics.data.utils import check_det_dataset

    return unlabelled_train_split(check_det_dataset(data_yaml, autodownload=False), root)


def run(base: Baseline, data: str, epochs: int, criterion: str, cut: float, seed: int, extra: list, project: Path):
    """One ``yolo-nexp prune`` job (in a new folder of ``project``); its report.json."""
    name = f"run{sum(1 for _ in project.glob('run*'))}"
    argv = ["prune", f"model={base.weights()}", f"data={data}", f"macs={cut}", f"criterion={criterion}"]
    job_args = ["rect=False"] if isinstance(base, RealModel) else ["warmup_epochs=0"]  # real: the job's defaults
    argv += [f"epochs={epochs}", f"imgsz={base.imgsz}", "batch=16", f"seed={seed}", "workers=2", *job_args]
    argv += [*extra, f"project={project}", f"name={name}"]
    assert entrypoint(argv) == 0, argv
    return json.loads((project / name / "report.json").read_text())


def collect(cfg: dict, store: Path | None) -> dict:
    """{json key: {"pruned": mAP, "curve": [mAP per epoch]}}, resumable from ``store``."""
    base, epochs, methods = cfg["base"], cfg["epochs"], cfg["methods"]
    results = ResultStore(store)
    project = Path(tempfile.mkdtemp(prefix="nexp-recovery-"))
    free = unlabelled(base.data(), project)  # project/unlabelled/data.yaml
    jobs = [(c, cut, m, methods[m]) for c in cfg["criteria"] for cut in cfg["cuts"] for m in methods]
    if not isinstance(base, RealModel):
        jobs.append((DEFAULT_CRITERION, cfg["cuts"][0], "distill, no labels", ["distill=1"]))
    for criterion, cut, method, extra in jobs:
        for seed in cfg["seeds"]:
            key = json.dumps([criterion, cut, method, seed])
            if key in results:
                continue
            data = free if method.endswith("no labels") else base.data()
            t0 = time.perf_counter()
            report = run(base, data, epochs, criterion, cut, seed, extra, project)
            results.add(
                key,
                {
                    "pruned": report["stages"]["pruned"]["map"],
                    "curve": [c["map"] for c in report["recovery"]["curve"]],
                    "final_cut": 1 - report["stages"]["finetuned"]["macs"] / report["stages"]["dense"]["macs"],
                    "seconds": time.perf_counter() - t0,
                },
            )
    return results


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {(max(values) - min(values)) / 2:.3f}"


def tables(results: dict, cfg: dict, dense: float, epochs: int) -> list[str]:
    """Per criterion and cut: one row per method, mAP50-95 right after pruning and after every epoch."""
    lines = []
    groups = {}
    for key, r in results.items():
        criterion, cut, method, _ = json.loads(key)
        groups.setdefault((criterion, cut), {}).setdefault(method, []).append(r)
    for (criterion, cut), methods in groups.items():
        lines += [f"### {criterion}, -{cut:.0%} MACs", ""]
        lines += [
            "| method | final MACs cut | after pruning | " + " | ".join(f"epoch {e}" for e in range(1, epochs + 1))
        ]
        lines[-1] += " | first epoch within 1 point of dense, at the final cut |"
        lines += ["|---|---|---|" + "---|" * epochs + "---|"]
        for method, runs in methods.items():
            curves = [r["curve"] for r in runs]
            means = [statistics.mean(c[e] for c in curves) for e in range(min(len(c) for c in curves))]
            final = every(epochs, 2) if method.startswith("gradual") else 0  # epochs before the last step do not count
            within = next((str(e + 1) for e, m in enumerate(means) if e >= final and m >= dense - 0.01), "not reached")
            cells = [_fmt([c[e] for c in curves]) for e in range(len(means))]
            cut_done = statistics.mean(r["final_cut"] for r in runs)
            lines.append(
                f"| {method} | {cut_done:.1%} | {_fmt([r['pruned'] for r in runs])} | "
                + " | ".join(cells)
                + f" | {within} |"
            )
        lines.append("")
    return lines


def comparisons(results: dict) -> list[str]:
    """Distillation against plain fine-tuning at every epoch: where the seeds do not overlap, and which way."""
    by = {}
    for key, r in results.items():
        criterion, cut, method, _ = json.loads(key)
        by.setdefault((criterion, cut, method), []).append(r["curve"])
    lines = ["Each method minus plain fine-tuning, mean mAP50-95 per epoch (`*`: the seeds do not overlap):", ""]
    for (criterion, cut, method), curves in by.items():
        if method == "fine-tune" or method.startswith("gradual") or (criterion, cut, "fine-tune") not in by:
            continue
        plain = by[(criterion, cut, "fine-tune")]
        gaps = []
        for e in range(min(len(c) for c in curves + plain)):
            ours, theirs = [c[e] for c in curves], [c[e] for c in plain]
            gap = statistics.mean(ours) - statistics.mean(theirs)
            apart = min(ours) > max(theirs) or max(ours) < min(theirs)
            gaps.append(f"{gap:+.3f}{' *' if apart and len(ours) > 1 else ''}")
        lines.append(f"- {criterion}, -{cut:.0%}, {method}: " + ", ".join(gaps))
    return lines


def plot(results: dict, dense: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {}
    for key, r in results.items():
        criterion, cut, method, _ = json.loads(key)
        groups.setdefault((criterion, cut), {}).setdefault(method, []).append([r["pruned"], *r["curve"]])
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), tight_layout=True, squeeze=False)
    for ax, ((criterion, cut), methods) in zip(axes[0], groups.items()):
        for method, curves in methods.items():
            n = min(len(c) for c in curves)
            ax.plot(range(n), [statistics.mean(c[e] for c in curves) for e in range(n)], marker=".", label=method)
        ax.axhline(dense, color="#888888", linestyle="--", label="dense")
        ax.set_title(f"{criterion}, -{cut:.0%} MACs")
        ax.set_xlabel("epoch of recovery (0: right after pruning)")
        ax.set_ylabel("mAP50-95")
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny baseline, one cut and seed: a smoke run")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--model", default=None, help="the baseline's scale (default yolov8n)")
    ap.add_argument("--criteria", nargs="+", default=None, help=f"criteria to run (default {FULL['criteria']})")
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default 0 1)")
    ap.add_argument("--methods", nargs="+", default=None, help="run only these methods (labels of the table)")
    ap.add_argument("--epochs", type=int, default=None, help="recovery epochs (real model: default 3, the budget)")
    args = ap.parse_args()
    real = args.model == RealModel.model
    cfg = dict(REAL if real else QUICK if args.quick else FULL)
    if real:
        cfg["base"] = RealModel()
        cfg["methods"] = real_methods(cfg["base"].weights())
        if args.methods:
            cfg["methods"] = {m: a for m, a in cfg["methods"].items() if m in args.methods}
    else:
        cfg["base"] = dataclasses.replace(cfg["base"], model=args.model) if args.model else cfg["base"]
        cfg["methods"] = METHODS
        cfg["epochs"] = max(2, cfg["base"].epochs // 10)  # 2 at least: gradual pruning needs one epoch per step
    cfg["epochs"] = args.epochs or cfg["epochs"]
    cfg["criteria"] = tuple(args.criteria or cfg["criteria"])
    cfg["seeds"] = tuple(args.seeds if args.seeds is not None else cfg["seeds"])
    base, epochs = cfg["base"], cfg["epochs"]
    results = collect(cfg, args.out.with_suffix(".json") if args.out else None)
    if real:
        dense = validate(YOLO(str(base.weights())), base.data(), base.imgsz)["map"]
    else:
        dense = float(
            YOLO(str(base.weights()))
            .val(data=base.data(), imgsz=base.imgsz, batch=32, plots=False, verbose=False)
            .box.map
        )
    minutes = sum(r["seconds"] for r in results.values()) / 60
    lines = [
        "# Recovery after pruning: mAP50-95 per epoch", "",
        f"Command: `{command_line()}`", "",
        f"Baseline: {base.describe()}; dense validation mAP50-95 **{dense:.3f}**. Each row runs `yolo-nexp prune "
        f"macs=<cut> criterion=<criterion> epochs={epochs} imgsz={base.imgsz} batch=16 "
        f"{'rect=False' if real else 'warmup_epochs=0'}` with the method's arguments (the job's defaults otherwise), "
        f"{'a budget a CPU affords' if real else 'a tenth of the baseline training (2 at least)'}. "
        f"Seeds {list(cfg['seeds'])}: mean ± half-range. 'after pruning' is the one-shot "
        f"model (for gradual pruning: after its first step, half the cut). {minutes:.0f} min of jobs on 2 CPU cores.",
        "",
        *(["`--quick` is a smoke run on a baseline that detects nothing.", ""] if args.quick else []),
        *tables(results, cfg, dense, epochs),
        *comparisons(results), "",
    ]  # fmt: skip
    publish("\n".join(lines), args.out)
    if args.out:
        plot(results, dense, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
