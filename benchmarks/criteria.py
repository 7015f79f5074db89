"""Criteria, repair and allocation on trained models: mAP50-95 kept at equal MACs, one-shot and after recovery.

A YOLOv8 trained from scratch on the seeded synthetic detection dataset (the cached ``Baseline``; yolov8n
by default, ``--model yolov8s`` for the second scale) is pruned by every criterion, with the mean repair
and without, to remove 10%, 25% and 46% of its MACs (``macs=`` target, ``round_to 1``), and validated
right away (one-shot); the 46% cut is also fine-tuned for a short budget (recovery). Retention is the
pruned model's mAP50-95 as a share of the dense model's. Two further tables vary one thing at a time
for the default criterion and ``tp``: the allocation (uniform, global, sensitivity) and BatchNorm
re-estimation. Every cell is over several seeds (calibration sample, random criterion, fine-tuning order).

Each run's result is appended to a JSON file beside the output as soon as it is known, and a rerun with
the same arguments skips what is there, so an interrupted benchmark resumes where it stopped.

Usage:
    python benchmarks/criteria.py --out benchmarks/results/criteria.md
    python benchmarks/criteria.py --model yolov8s --tables criteria --out benchmarks/results/criteria-yolov8s.md
    python benchmarks/criteria.py --quick --out /tmp/criteria-quick.md     # smoke run, minutes
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ultralytics import YOLO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import yolo_nexp  # noqa: E402
from benchmarks.common import Baseline, ResultStore, command_line, publish  # noqa: E402
from benchmarks.criteria_tables import plot, render  # noqa: E402
from benchmarks.real_model import RealModel, validate  # noqa: E402

# The tables were measured with nexp_use and the mean sensitivity estimate, the defaults until the "lsq estimates"
# table made nexp_lsq with the lsq estimate the default: rows keep what they measured.
DEFAULT_CRITERION = "nexp_use"

CRITERIA = ["nexp_use", "nexpc", "nexp", "hybrid", "l1", "l2", "tp", "bn", "random"]
FULL = dict(cuts=(0.10, 0.25, 0.46), recover=0.46, ft_epochs=2, seeds=(0, 1), epochs=80, n_train=384, n_val=96)
QUICK = dict(cuts=(0.25,), recover=0.25, ft_epochs=1, seeds=(0,), epochs=5, n_train=48, n_val=16)
REAL = dict(cuts=(0.10, 0.25, 0.46), recover=None, ft_epochs=0, seeds=(0,))
CALIBRATION = dict(batches=4, batch=16)  # 64 training images; the sensitivity uses the first 16
REAL_CALIBRATION = dict(batches=4, batch=8)  # 32 images at 640 px; the sensitivity uses the first 8


class Bench:
    """Runs (pruning setting, cut, seed) once each, remembering results in a JSON file."""

    def __init__(self, cfg: dict, base: Baseline | RealModel, store: Path | None, calibration: dict = CALIBRATION):
        self.cfg, self.base, self.calibration = cfg, base, calibration
        self.data, self.weights = base.data(), base.weights()
        self.results = ResultStore(store)
        self.project = Path(tempfile.mkdtemp(prefix="nexp-criteria-"))

    def evaluate(self, model: YOLO) -> float:
        """mAP50-95 on the val split: square inputs, NMS never cut (``real_model.validate``)."""
        return validate(model, self.data, self.base.imgsz)["map"]

    def run(self, setting: dict, cut: float, seed: int, recover: bool) -> dict:
        """Prune a fresh copy of the baseline with ``setting``; mAP50-95 one-shot and, if asked, after fine-tuning."""
        key = json.dumps([setting, cut, seed, recover], sort_keys=True)
        if key not in self.results:
            model = YOLO(str(self.weights))
            t0 = time.perf_counter()
            report = yolo_nexp.prune(
                model, macs=cut, source=self.data, imgsz=self.base.imgsz, round_to=1, seed=seed, verbose=False,
                **{"passes": 1, "estimate": "mean", **self.calibration, **setting},  # unless the row says otherwise
            )  # fmt: skip
            seconds = time.perf_counter() - t0
            result = {"cut": report.macs_reduction, "pruned": self.evaluate(model), "seconds": seconds}
            result["floored"] = len(report.floored)  # layers cut to their narrowest allowed width
            if recover:
                result["recovered"] = self.finetune(model, seed)
            self.results.add(key, result)
        return self.results[key]

    def finetune(self, model: YOLO, seed: int) -> float:
        metrics = model.train(
            trainer=yolo_nexp.NexpTrainer,
            data=self.data,
            epochs=self.cfg["ft_epochs"],
            imgsz=self.base.imgsz,
            batch=16,
            seed=seed,
            workers=2,
            project=str(self.project),
            name="ft",
            exist_ok=True,
            warmup_epochs=0,  # Ultralytics' warm-up (>= 100 steps, bias lr 0.1) would fill the whole short budget
            val=False,  # validate once, at the end
            plots=False,
            verbose=False,
        )
        return float(metrics.box.map)

    def cells(self, setting: dict, recover_cut=None) -> dict:
        """{cut: [result per seed]} for every cut, with recovery at ``recover_cut``."""
        return {
            cut: [self.run(setting, cut, s, recover=cut == recover_cut) for s in self.cfg["seeds"]]
            for cut in self.cfg["cuts"]
        }


def settings() -> dict[str, list[tuple[str, dict]]]:
    """The rows of each table: (label, prune() arguments)."""
    other = "tp"
    default = {"criterion": DEFAULT_CRITERION, "repair": "lsq", "allocation": "sensitivity"}
    tp_example = {"criterion": "tp", "repair": "none", "allocation": "uniform"}
    lsq_default = {**default, "criterion": "nexp_lsq", "passes": 4, "estimate": "lsq"}
    return {
        "criteria": [
            (f"{c} / repair {r}", {"criterion": c, "repair": r, "allocation": "sensitivity"})
            for c in CRITERIA
            for r in ("lsq", "mean", "none")
        ],
        "uniform": [
            (f"{c} / repair {r}", {"criterion": c, "repair": r, "allocation": "uniform"})
            for c in CRITERIA
            for r in ("lsq", "mean", "none")
        ],
        "allocation": [
            (f"{c} / {a}", {"criterion": c, "repair": "mean", "allocation": a})
            for c in (DEFAULT_CRITERION, other)
            for a in ("uniform", "global", "sensitivity")
        ],
        "bn_recal": [
            (
                f"{c} / bn_recal {b}",
                {"criterion": c, "repair": "mean", "allocation": "sensitivity", **({"bn_recal": True} if b else {})},
            )
            for c in (DEFAULT_CRITERION, other)
            for b in (False, True)
        ],
        "passes": [  # several smaller prunes, each recalibrated on the pruned model, against one (passes 1)
            (f"{DEFAULT_CRITERION} / lsq / passes {k}", {**default, **({"passes": k} if k > 1 else {})})
            for k in (1, 2, 4, 8)
        ]
        + [(f"{DEFAULT_CRITERION} / lsq / passes 4 / 2 batches", {**default, "passes": 4, "batches": 2})]
        + [(f"{DEFAULT_CRITERION} / lsq / bn_recal", {**default, "bn_recal": True})]
        # Torch-Pruning's examples/yolov8: group L2, the same ratio in every layer, 16 steps, no repair
        # (its fine-tuning between steps is left out: this table is one-shot)
        + [("tp / uniform / none / passes 16 (TP's yolov8 example)", {**tp_example, "passes": 16})],
        "rivals": [  # one pass each, beside the default criterion's one-pass row
            (f"{c} / lsq", {"criterion": c, "repair": "lsq", "allocation": "sensitivity"})
            for c in (DEFAULT_CRITERION, "taylor", "hessian", "fpgm")  # lamp orders a group as tp does
        ]
        + [(f"{DEFAULT_CRITERION} / lsq / {a} allocation", {**default, "allocation": a}) for a in ("information",)]
        + [
            (
                "taylor / lsq / passes 4",
                {"criterion": "taylor", "repair": "lsq", "allocation": "sensitivity", "passes": 4},
            )
        ],
        "rivals lsq": [  # the library's defaults against the closest rival with the same repair, estimate and passes
            (f"{c} / lsq / passes 4 / lsq estimate", {**lsq_default, "criterion": c})
            for c in ("nexp_lsq", "taylor", "hessian")  # hessian: the one-pass rival ahead at -25% (seed 0)
        ],
        "lsq estimates": [  # what the lsq repair leaves, in the sensitivity estimate and in the criterion
            (f"{c} / lsq / passes {k} / {e} estimate", {**default, "criterion": c, "passes": k, "estimate": e})
            for k in (1, 4)
            for c in (DEFAULT_CRITERION, "nexp_lsq")
            for e in ("mean", "lsq")
        ],
        "share": [  # the library's defaults (nexp_lsq, lsq estimate, 4 passes), the passes sharing the images or not
            (f"nexp_lsq / lsq / passes 4 / lsq estimate{label}", {**lsq_default, **extra})
            for label, extra in (("", {}), (" / shared calibration", {"share": True}))
        ],
        "candidates": [  # one pass, the best of 4 one-pass prunes (about the time of 4 passes), 4 passes, best of 2 of them
            (f"nexp_lsq / lsq / passes {k} / lsq estimate{label}", {**lsq_default, "passes": k, **extra})
            for k, label, extra in (
                (1, "", {}),
                (1, " / best of 4 candidates", {"candidates": 4}),
                (4, "", {}),
                (4, " / best of 2 candidates", {"candidates": 2}),
            )
        ],
        "reconstruct": [  # the defaults, then every conv refit to the dense model's outputs after the passes
            (f"nexp_lsq / lsq / passes {k} / lsq estimate{label}", {**lsq_default, "passes": k, **extra})
            for k, label, extra in (
                (4, "", {}),
                (4, " / reconstruct", {"reconstruct": True}),
                (1, " / reconstruct", {"reconstruct": True}),
            )
        ],
        "sensitivity images": [  # the defaults, the sensitivity estimated on 1 (the library's) or all 4 batches
            (f"nexp_lsq / lsq / passes 4 / lsq estimate{label}", {**lsq_default, **extra})
            for label, extra in (("", {}), (" / sensitivity on 4 batches", {"sensitivity_batches": 4}))
        ],
        "calibration": [  # images behind the scores, the sensitivity estimate and the lsq covariances
            (f"{DEFAULT_CRITERION} / lsq / {b} batches", {**default, **({"batches": b} if b != 4 else {})})
            for b in (2, 4, 8)
        ],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="yolov8n", help="yolov8n, yolov8s (synthetic baselines) or fall-yolov8s (real)")
    ap.add_argument("--criteria", nargs="+", default=None, help="which criteria rows to run (default: all)")
    ap.add_argument("--quick", action="store_true", help="tiny data and one seed: a smoke run of minutes")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--tables", nargs="+", default=list(settings()), help="which tables to run (default: all)")
    ap.add_argument(
        "--repair", nargs="+", default=["lsq", "mean", "none"], help="which repair rows to run (default: all)"
    )
    ap.add_argument("--rows", nargs="+", default=None, help="run only the rows with these exact labels")
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: 0 1, real model 0)")
    ap.add_argument("--cuts", nargs="+", type=float, default=None, help="MACs cuts (default: 0.10 0.25 0.46)")
    args = ap.parse_args()
    real = args.model == RealModel.model
    cfg = dict(REAL if real else QUICK if args.quick else FULL)
    cfg["seeds"] = tuple(args.seeds) if args.seeds else cfg["seeds"]
    cfg["cuts"] = tuple(args.cuts) if args.cuts else cfg["cuts"]
    if real:
        base = RealModel()
    else:
        base = Baseline(model=args.model, epochs=cfg["epochs"], n_train=cfg["n_train"], n_val=cfg["n_val"])
    cached = base.cached()
    t0 = time.perf_counter()
    calibration = REAL_CALIBRATION if real else CALIBRATION
    bench = Bench(cfg, base, args.out.with_suffix(".json") if args.out else None, calibration)
    t_base = time.perf_counter() - t0
    dense = bench.evaluate(YOLO(str(bench.weights)))
    tables = {}
    try:
        for name, rows in settings().items():
            if name not in args.tables:
                continue
            recover = cfg["recover"] if name == "criteria" else None
            rows = [(label, setting) for label, setting in rows if setting["repair"] in args.repair]
            rows = [(lb, s) for lb, s in rows if args.criteria is None or s["criterion"] in args.criteria]
            rows = [(lb, s) for lb, s in rows if args.rows is None or lb in args.rows]
            tables[name] = [(label, bench.cells(setting, recover)) for label, setting in rows]
    finally:
        shutil.rmtree(bench.project, ignore_errors=True)
    seconds = sum(r["seconds"] for r in bench.results.values())
    intro = (
        f"Baseline: {base.describe()}; dense validation mAP50-95 **{dense:.3f}** "
        f"({'cached' if cached else f'trained in this run, {t_base / 60:.1f} min'}). "
        f"Pruning: `macs=` target, round_to 1, one pass unless a row says otherwise, calibration on {calibration['batches']} batches of "
        f"{calibration['batch']} training images at {base.imgsz} px (sensitivity on the first batch); recovery: "
        f"{cfg['ft_epochs']} epoch(s) of NexpTrainer (no warm-up). Seeds {list(cfg['seeds'])}: mean ± half-range. "
        f"Validation: square inputs (rect=False), NMS time limit lifted (no figure is cut). "
        f"Pruning and one-shot validation took {seconds / 60:.1f} min of the runs in all (2 CPU cores)."
    )
    text = render(tables, dense, cfg, intro, command=command_line(), quick=args.quick)
    publish(text, args.out)
    if args.out:
        for name, rows in tables.items():  # retention against MACs cut, one line per row, seeds' range shaded
            plot(
                rows,
                dense,
                args.out.with_name(f"{args.out.stem}-{name}.png"),
                f"{args.model}, {name} (dense {dense:.3f})",
            )


if __name__ == "__main__":
    main()
