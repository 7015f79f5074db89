"""NEXP against the other criteria at equal MACs, before and after the same fine-tuning budget.

A yolov8n trained from scratch on a seeded synthetic detection dataset (8 classes, clutter,
occlusion, objects from 5% to 60% of the image; the trained baseline is cached, not committed) is
pruned to remove 46% (the paper's YOLOv8 point) and 70% of its MACs by each criterion, and by the
hybrid at alpha 0, 0.25, 0.5, 0.75 and 1; mAP50-95 is measured right after pruning and after
fine-tuning, over several seeds (calibration sample, random criterion, fine-tuning order). Milder
cuts (probes) are measured right after pruning only, where a one-shot cut still leaves a detector.

Two criteria that prune to the identical model (same weights, bit for bit) share their runs: with
layer-uniform allocation, hybrid a=1 ranks like nexp and hybrid a=0 like tp (both group L2). The
results file says which rows were shared; this is checked on the pruned weights, not assumed.

Usage:
    python benchmarks/criteria.py --out benchmarks/results/criteria.md            # full (under an hour, 2 cores)
    python benchmarks/criteria.py --quick --out benchmarks/results/criteria-quick.md   # a few minutes
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ultralytics import YOLO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import yolo_nexp  # noqa: E402
from benchmarks.common import Baseline, publish  # noqa: E402

CRITERIA = [("nexp", None), ("l1", None), ("l2", None), ("random", None), ("bn", None), ("tp", None)] + [
    ("hybrid", a) for a in (0.0, 0.25, 0.5, 0.75, 1.0)
]
FULL = dict(base=Baseline(), ft_epochs=2, targets=(0.46, 0.70), probes=(0.10, 0.20, 0.30), seeds=(0, 1))
SMOKE_NOTE = [
    "`--quick` is a smoke run: its baseline trains too briefly to detect anything, so these numbers only show "
    "that every step runs end to end; which criterion is better is answered by `criteria.md`.",
    "",
]
QUICK = dict(base=Baseline(n_train=48, n_val=16, epochs=5), ft_epochs=1, targets=(0.46,), probes=(0.20,), seeds=(0,))
MIN_GAP = 0.005  # mAP50-95 differences below this are not flagged, whatever the spread (e.g. 0.00001 vs 0)
CALIBRATION = dict(batches=4, batch=16)  # NEXP scores on 4 batches of 16 training images


def label_of(criterion: str, alpha) -> str:
    return criterion if alpha is None else f"hybrid a={alpha:g}"


def fingerprint(model: YOLO) -> str:
    """Hash of every tensor of the model: equal only for bit-identical pruned models."""
    h = hashlib.sha1()
    for key, value in model.model.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Bench:
    """Prune, validate and fine-tune copies of the baseline; runs on identical pruned models are done once."""

    def __init__(self, cfg: dict, project: Path):
        self.cfg, self.base, self.project = cfg, cfg["base"], project
        self.data, self.weights = self.base.data(), self.base.weights()
        self.ratios = {}  # MACs target -> ratio found by the first search (layer-uniform widths depend on it only)
        self.done = {}  # (fingerprint, seed or None) -> (result, label that computed it)
        self.shared = {}  # (label, target) -> label whose runs it reused

    def evaluate(self, model: YOLO) -> float:
        return float(model.val(data=self.data, imgsz=self.base.imgsz, batch=16, plots=False, verbose=False).box.map)

    def once(self, key, label: str, target: float, compute):
        """``compute()`` unless an identical pruned model already ran it (then record whose result was reused)."""
        if key not in self.done:
            self.done[key] = (compute(), label)
        result, owner = self.done[key]
        if owner != label:
            self.shared[label, target] = owner
        return result

    def run(self, criterion: str, alpha, target: float, seed: int, finetune: bool) -> tuple[float, float, float]:
        """One pruned copy: (MACs cut, mAP50-95 right after pruning, after fine-tuning or NaN)."""
        label = label_of(criterion, alpha)
        model = YOLO(str(self.weights))
        report = yolo_nexp.prune(
            model,
            ratio=self.ratios.get(target),
            macs=None if target in self.ratios else target,
            criterion=criterion,
            alpha=0.5 if alpha is None else alpha,
            source=self.data,
            imgsz=self.base.imgsz,
            round_to=1,  # fine widths, so that every criterion lands on the MACs target
            seed=seed,
            verbose=False,
            **CALIBRATION,
        )
        self.ratios.setdefault(target, report.ratio)
        fp = fingerprint(model)
        pruned = self.once((fp, None), label, target, lambda: self.evaluate(model))
        tuned = float("nan")
        if finetune:
            tuned = self.once((fp, seed), label, target, lambda: self.finetune(model, f"{label}-{target}-{seed}", seed))
        return report.macs_reduction, pruned, tuned

    def finetune(self, model: YOLO, name: str, seed: int) -> float:
        metrics = model.train(
            trainer=yolo_nexp.NexpTrainer,
            data=self.data,
            epochs=self.cfg["ft_epochs"],
            imgsz=self.base.imgsz,
            batch=16,
            seed=seed,
            workers=2,
            project=str(self.project),
            name=name.replace(" ", "").replace("=", ""),
            warmup_epochs=0,  # Ultralytics' warm-up (>= 100 steps, bias lr 0.1) would fill the whole short budget
            val=False,  # validate once, at the end
            plots=False,
            verbose=False,
        )
        return float(metrics.box.map)


def fmt(values: list[float]) -> str:
    """mean ± half the range (the spread over seeds)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {(max(values) - min(values)) / 2:.3f}"


def collect(bench: Bench, cuts, finetune: bool) -> dict:
    """(label, cut) -> [MACs cuts, mAPs after pruning, mAPs after fine-tuning], one entry per seed."""
    results = {}
    for cut in cuts:
        for criterion, alpha in CRITERIA:
            label = label_of(criterion, alpha)
            runs = [bench.run(criterion, alpha, cut, s, finetune) for s in bench.cfg["seeds"]]
            results[label, cut] = [list(x) for x in zip(*runs)]
            print(label, cut, runs, flush=True)
    return results


def training_curve(base: Baseline) -> tuple[str, float]:
    """The baseline's validation mAP50-95 over its last epochs, and its training time in seconds, from the
    cached run's results.csv (so that both are known when the checkpoint comes from the cache)."""
    rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(base.weights().with_suffix(".csv").open())]
    marks = sorted({max(1, len(rows) - d) for d in (20, 10, 5, 0)})
    curve = ", ".join(f"epoch {e}: {float(rows[e - 1]['metrics/mAP50-95(B)']):.3f}" for e in marks)
    return curve, float(rows[-1]["time"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny data, one target and seed: a smoke run of minutes")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cfg = QUICK if args.quick else FULL

    cached = cfg["base"].cached()
    t_start = time.perf_counter()
    project = Path(tempfile.mkdtemp(prefix="nexp-criteria-"))
    bench = Bench(cfg, project)  # trains the baseline unless it is cached
    t_cache = time.perf_counter() - t_start  # training the baseline, or seconds when it is cached
    curve, t_base = training_curve(cfg["base"])
    base_map = bench.evaluate(YOLO(str(bench.weights)))
    try:
        results = collect(bench, cfg["targets"], finetune=True)
        t_main = time.perf_counter() - t_start - t_cache
        probes = collect(bench, cfg["probes"], finetune=False)
    finally:
        shutil.rmtree(project, ignore_errors=True)
    t_probes = time.perf_counter() - t_start - t_cache - t_main

    targets = cfg["targets"]
    lines = [
        "# Criteria at equal MACs: mAP50-95 right after pruning and after fine-tuning",
        "",
        f"Command: `python {' '.join(sys.argv)}`",
        "",
        f"Baseline: {cfg['base'].describe()}; validation mAP50-95 **{base_map:.3f}** "
        f"(during training: {curve}). Each criterion prunes it to the MACs target (layer-uniform; "
        f"the ratio is found by search once per target, round_to 1 so that the MACs can match; NEXP on "
        f"{CALIBRATION['batches']} batches of {CALIBRATION['batch']} training images), then fine-tunes "
        f"{cfg['ft_epochs']} epoch(s) with NexpTrainer (AdamW as Ultralytics chooses it, no warm-up, no mosaic). "
        f"Seeds {list(cfg['seeds'])} (calibration batches, random criterion, fine-tuning order): mean ± half-range. "
        f"Wall time on 2 CPU cores: {(t_base + t_main + t_probes) / 60:.1f} min in all: training the baseline "
        f"{t_base / 60:.1f} min (its results.csv; {'cached this time' if cached else 'trained in this run'}), "
        f"targets {t_main / 60:.1f} min, probes {t_probes / 60:.1f} min.",
        "",
        *SMOKE_NOTE * args.quick,
        "| criterion | "
        + " | ".join(f"MACs cut ({t:.0%}) | after pruning | after fine-tuning" for t in targets)
        + " |",
        "|---|" + "---|---|---|" * len(targets),
    ]
    for criterion, alpha in CRITERIA:
        label = label_of(criterion, alpha)
        cells = []
        for t in targets:
            cut, pruned, tuned = results[label, t]
            cells += [f"{statistics.mean(cut):.1%}", fmt(pruned), fmt(tuned)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", *nexp_margins(results, targets, stages=(1, 2)), "", *probe_table(probes, cfg["probes"])]
    lines += ["", *shared_note(bench.shared), ""]
    publish("\n".join(lines), args.out)
    if args.out:
        plot(results, probes, cfg, args.out.with_suffix(".png"))


def nexp_margins(results: dict, cuts, stages) -> list[str]:
    """Table of NEXP's mean mAP50-95 minus each other criterion's, flagged where the gap exceeds both spreads."""
    names = {1: "after pruning", 2: "after fine-tuning"}

    def cell(label: str, cut: float, stage: int) -> str:
        ours, theirs = results["nexp", cut][stage], results[label, cut][stage]
        gap = statistics.mean(ours) - statistics.mean(theirs)
        spreads = (max(ours) - min(ours)) / 2 + (max(theirs) - min(theirs)) / 2
        return f"{gap:+.3f}" + (" *" if abs(gap) > max(spreads, MIN_GAP) else "")

    lines = [
        "NEXP's mean mAP50-95 minus each criterion's (positive: NEXP better; `*`: the gap is larger than the two "
        f"half-ranges together, i.e. the seeds do not overlap, and at least {MIN_GAP}):",
        "",
        "| criterion | " + " | ".join(f"target {c:.0%}: {names[k]}" for c in cuts for k in stages) + " |",
        "|---|" + "---|" * (len(cuts) * len(stages)),
    ]
    for criterion, alpha in CRITERIA[1:]:
        label = label_of(criterion, alpha)
        lines.append(f"| {label} | " + " | ".join(cell(label, c, k) for c in cuts for k in stages) + " |")
    return lines


def probe_table(probes: dict, cuts) -> list[str]:
    """mAP50-95 right after pruning at milder MACs cuts, with NEXP's margins."""
    lines = [
        "Milder cuts, right after pruning (no fine-tuning): mAP50-95, mean ± half-range over the seeds.",
        "",
        "| criterion | "
        + " | ".join(f"target {c:.0%} (cut {statistics.mean(probes['nexp', c][0]):.1%})" for c in cuts)
        + " |",
        "|---|" + "---|" * len(cuts),
    ]
    for criterion, alpha in CRITERIA:
        label = label_of(criterion, alpha)
        lines.append(f"| {label} | " + " | ".join(fmt(probes[label, c][1]) for c in cuts) + " |")
    return lines + ["", *nexp_margins(probes, cuts, stages=(1,))]


def shared_note(shared: dict) -> list[str]:
    """Which rows reused another criterion's runs because their pruned models were bit-identical."""
    pairs = sorted({(label, owner) for (label, _), owner in shared.items()})
    if not pairs:
        return ["No two criteria pruned to the identical model: every row is its own runs."]
    said = "; ".join(f"{label} = {owner}" for label, owner in pairs)
    return [
        f"Rows that pruned to a bit-identical model and so share another row's runs (same model, same seed, "
        f"same result): {said}."
    ]


def plot(results: dict, probes: dict, cfg: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [c if a is None else f"hyb {a:g}" for c, a in CRITERIA]
    keys = [label_of(c, a) for c, a in CRITERIA]
    targets = cfg["targets"]
    fig, axes = plt.subplots(1, len(targets) + 1, figsize=(5.5 * (len(targets) + 1), 4), tight_layout=True)
    for ax, t in zip(axes, targets):
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
    ax = axes[-1]
    cuts = sorted(cfg["probes"]) + sorted(targets)
    both = {**probes, **results}
    for key, name in zip(keys, labels):
        style = "-" if key in ("nexp", "tp", "bn", "l1") else ":"
        ax.plot(
            [100 * c for c in cuts], [statistics.mean(both[key, c][1]) for c in cuts], style, marker=".", label=name
        )
    ax.set_xlabel("MACs removed (%)")
    ax.set_ylabel("mAP50-95 right after pruning")
    ax.set_title("one-shot pruning, no fine-tuning")
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
