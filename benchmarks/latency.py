"""Batch-1 CPU latency of dense and pruned YOLOv8 in onnxruntime and PyTorch, with ONNX parity on COCO128.

For each scale: the dense model, NEXP-pruned at ratios 0.25/0.5/0.75 (round_to 8), and ratio 0.5 with
round_to 1/16/32. Each model is saved as an Ultralytics checkpoint, exported with Ultralytics' ONNX
exporter, checked against PyTorch (raw outputs and detections on COCO128 val images), and timed:
median of --runs runs after --warmup runs, at --imgsz, batch 1, on the CPU.

Usage:
    python benchmarks/latency.py --scales n s m --out benchmarks/results/latency.md

``--targets``: the latency-target table (issue 28). For each scale, ``latency=0.5`` and ``latency=0.33`` on
onnxruntime (the default allocation, criterion and passes, calibrated on noise), and for comparison the default
``macs=``-targeted allocation at the MACs cut each latency model reached; every model saved, then exported and
timed again in a fresh process (``--time``), interleaved with the dense model. Run on a quiet machine:

    python benchmarks/latency.py --targets --scales n s m --imgsz 640 --out benchmarks/results/latency_targets.md

``--targets --real``: the same on the real trained YOLOv8s of ``benchmarks/real_model.py``, calibrated on its
fidelity set's training images (4 x 8 at 640, as ``criteria.py`` does), every model validated on it: mAP50-95 at
equal measured latency.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from ultralytics import YOLO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import yolo_nexp  # noqa: E402
from benchmarks.common import command_line, publish  # noqa: E402
from yolo_nexp.export import onnx_parity  # noqa: E402
from yolo_nexp.latency.backends import model_runner  # noqa: E402
from yolo_nexp.latency.timing import interleaved_ms  # noqa: E402
from yolo_nexp.report import macs_and_params  # noqa: E402
from yolo_nexp.testing import informative  # noqa: E402

COCO_VAL = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco128" / "images" / "val2017"
CONFIGS = [(0.0, 8), (0.25, 8), (0.5, 8), (0.75, 8), (0.5, 1), (0.5, 16), (0.5, 32)]  # (ratio, round_to)


def onnx_runner(file: Path, imgsz: int):
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    x = {session.get_inputs()[0].name: np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)}
    return lambda: session.run(None, x)


def torch_runner(pt: Path, imgsz: int):
    model = YOLO(str(pt)).model.float().fuse().eval()
    x = torch.rand(1, 3, imgsz, imgsz)

    def run():
        with torch.inference_mode():
            model(x)

    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", nargs="+", default=["n", "s", "m"])
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--images", type=int, default=8, help="COCO128 val images for the detection parity check")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--targets", action="store_true", help="the latency-target table (see the module docstring)")
    ap.add_argument("--passes", type=int, default=None, help="--targets: prune passes (default: the plugin's)")
    ap.add_argument("--real", action="store_true", help="--targets on the real trained YOLOv8s, with its mAP50-95")
    ap.add_argument(
        "--time", nargs="+", type=Path, default=None, help="time these checkpoints (first: dense), print JSON"
    )
    args = ap.parse_args()
    if args.time:
        return time_checkpoints(args.time, args.imgsz, args.runs, args.warmup)
    if args.targets:
        return targets(args)

    torch.set_num_threads(os.cpu_count())  # Ultralytics lowers it to cores - 1; compare both runtimes on all cores
    images = sorted(COCO_VAL.glob("*.jpg"))[: args.images]
    rows, tmp = [], Path(tempfile.mkdtemp(prefix="nexp-latency-"))
    for scale in args.scales:
        built = {}
        for ratio, round_to in CONFIGS:
            model = YOLO(f"yolov8{scale}.yaml")
            if ratio:
                yolo_nexp.prune(
                    model,
                    ratio=ratio,
                    round_to=round_to,
                    imgsz=args.imgsz,
                    batches=2,
                    batch=4,
                    verbose=False,
                    criterion="nexp",
                    allocation="uniform",  # what latency.md measured: every layer loses `ratio`
                )
            informative(model)  # input-dependent scores, so the detection parity check means something
            macs, params = macs_and_params(model.model, args.imgsz)
            pt = tmp / f"yolov8{scale}-r{ratio}-rt{round_to}.pt"
            model.save(pt)
            onnx_file = Path(YOLO(str(pt)).export(format="onnx", imgsz=args.imgsz, verbose=False))
            parity = onnx_parity(pt, onnx_file, imgsz=args.imgsz, images=images)
            built[ratio, round_to] = {
                "model": f"yolov8{scale}",
                "ratio": ratio,
                "round_to": round_to,
                "macs": macs,
                "params": params,
                "parity": parity,
                "pt": pt,
                "onnx": onnx_file,
            }
        ort_ms = interleaved_ms(
            {k: onnx_runner(b["onnx"], args.imgsz) for k, b in built.items()}, args.runs, args.warmup
        )
        torch_ms = interleaved_ms(
            {k: torch_runner(b["pt"], args.imgsz) for k, b in built.items()}, args.runs, args.warmup
        )
        dense = None
        for key, row in built.items():
            row.update(
                ort_ms=ort_ms[key].median,
                ort_min=ort_ms[key].min,
                torch_ms=torch_ms[key].median,
                torch_min=torch_ms[key].min,
            )
            dense = dense or row
            rows.append((row, dense))
            print(format_row(row, dense), flush=True)

    text = "\n".join(
        [
            "# Batch-1 CPU latency: dense vs NEXP-pruned YOLOv8",
            "",
            f"Command: `{command_line()}`",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__} ({torch.get_num_threads()} "
            f"threads), onnxruntime {ort.__version__} (CPUExecutionProvider, default threads). Input {args.imgsz}x"
            f"{args.imgsz}, batch 1; median (and min) of {args.runs} runs per model after {args.warmup} warm-up runs, "
            f"timed in 5 rounds interleaved across the models of one scale. Models from yaml (random init, "
            f"BatchNorm recalibrated on noise after pruning so that scores are input-dependent), pruned with NEXP on "
            f"noise.",
            "MACs x = dense MACs / MACs; speed-up = dense latency / latency; efficiency = speed-up / MACs x.",
            f"Parity: onnxruntime vs PyTorch, max |diff| of class scores and of boxes relative to imgsz on random "
            f"inputs (limit 1e-4); and detections after NMS on {len(images)} COCO128 val images (about the 50 most "
            f"confident per image): images whose detections were identical, and how many detections were compared.",
            "",
            HEADER,
            "|" + "---|" * (HEADER.count("|") - 1),
            *(format_row(r, d) for r, d in rows),
            "",
        ]
    )
    publish(text, args.out)


def time_checkpoints(files: list[Path], imgsz: int, runs: int, warmup: int) -> None:
    """Export every checkpoint with Ultralytics (onnx), time them interleaved, print ``{file: Timing}`` as JSON."""
    runners = {str(f): model_runner(YOLO(str(f)).model, "onnxruntime", imgsz, 1) for f in files}
    print(json.dumps({k: t.to_dict() for k, t in interleaved_ms(runners, runs, warmup).items()}))


def targets(args) -> None:
    """The latency-target table: each target's model, and the default macs= allocation at the same MACs cut."""
    tmp, rows = Path(tempfile.mkdtemp(prefix="nexp-targets-")), []
    common = dict(source="noise", imgsz=args.imgsz, batches=2, batch=4, verbose=False)
    common.update({"passes": args.passes} if args.passes else {})
    models = {f"yolov8{scale}": f"yolov8{scale}.yaml" for scale in args.scales}
    quality, about = None, "Models from yaml (random init), pruned with the plugin's defaults on noise. "
    if args.real:  # mAP50-95 on the real model's fidelity set
        from benchmarks.real_model import RealModel, validate

        real = RealModel()
        models, data = {real.model: str(real.weights())}, real.data()
        common.update(source=data, batches=4, batch=8)
        about = f"The real YOLOv8s ({real.describe()}), calibrated on 4 x 8 of its training images. "

        def quality(model):
            return validate(model, data, args.imgsz)["map"]

    for name, spec in models.items():
        dense = YOLO(spec)
        files, built = [tmp / f"{name}-dense.pt"], []
        dense.save(files[0])
        dense_map = quality(dense) if quality else None
        for target in (0.5, 0.33):
            for kind in ("latency", "macs"):
                model = YOLO(spec)
                cut = built[-1]["report"].macs_reduction if kind == "macs" else None
                t0 = time.perf_counter()
                report = yolo_nexp.prune(
                    model, **({"latency": target} if kind == "latency" else {"macs": cut}), **common
                )
                seconds = time.perf_counter() - t0
                files.append(tmp / f"{name}-{kind}{target}.pt")
                model.save(files[-1])
                kept = quality(model) / dense_map if quality else None
                built.append({"target": target, "kind": kind, "report": report, "seconds": seconds, "kept": kept})
                print(f"{name} {kind} (latency {target}): {report.summary()}; mAP kept {kept}", flush=True)
        cmd = [sys.executable, __file__, "--time", *map(str, files), "--imgsz", str(args.imgsz)]
        cmd += ["--runs", str(args.runs), "--warmup", str(args.warmup)]
        fresh = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        dense_ms = fresh[str(files[0])]["median"]
        for b, f in zip(built, files[1:]):
            rows.append({"model": name, "dense_ms": dense_ms, "fresh": fresh[str(f)], "dense_map": dense_map, **b})
    lines = [
        "# Pruning to a measured latency: onnxruntime CPU",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; onnxruntime {ort.__version__} (default providers). "
        f"Input {args.imgsz}x{args.imgsz}, batch 1. {about}"
        f"'in-process' is the ratio prune() measured and reported; 'fresh' is pruned / dense median ms "
        f"measured again in a new process ({args.runs} runs each after {args.warmup} warm-up, 5 interleaved rounds). "
        f"The macs= rows target the MACs cut of the latency row above them (the default allocation, by MACs).",
        "",
        "| model | target | allocation by | MACs cut | in-process ratio | fresh ms (p25-p75) | fresh ratio "
        "| within 5% | speed-up | MACs x | speed-up per MACs x | prune s |" + (" mAP50-95 kept |" if quality else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if quality else ""),
    ]
    for r in rows:
        rep, f = r["report"], r["fresh"]
        ratio, macs_x = f["median"] / r["dense_ms"], rep.macs_before / rep.macs_after
        inproc = f"{1 / rep.speedup:.3f}" if rep.speedup else "n/a"
        close = f"{abs(ratio - r['target']) <= 0.05 * r['target']}" if r["kind"] == "latency" else ""
        lines.append(
            f"| {r['model']} | {r['target']:g} | {'ms' if r['kind'] == 'latency' else 'MACs'} | "
            f"{rep.macs_reduction:.1%} | {inproc} | {f['median']:.1f} ({f['p25']:.1f}-{f['p75']:.1f}) | {ratio:.3f} "
            f"| {close} | {1 / ratio:.2f} | {macs_x:.2f} | {1 / ratio / macs_x:.0%} | {r['seconds']:.0f} |"
            + (f" {r['kept']:.1%} ({r['kept'] * r['dense_map']:.3f}) |" if r["kept"] is not None else "")
        )
    publish("\n".join(lines + [""]), args.out)


HEADER = (
    "| model | ratio | round_to | GMACs | Mparams | MACs x | ORT ms (min) | ORT speed-up | ORT eff. | torch ms (min) "
    "| torch speed-up | torch eff. | parity: raw, max diff scores, boxes; images with identical detections (compared) |"
)


def format_row(r: dict, d: dict) -> str:
    macs_x = d["macs"] / r["macs"]
    ort_x, torch_x = d["ort_ms"] / r["ort_ms"], d["torch_ms"] / r["torch_ms"]
    p = r["parity"]
    raw = p["raw_max_abs_diff"]
    ok = "ok" if p["raw_ok"] else "FAIL"
    return (
        f"| {r['model']} | {r['ratio']:g} | {r['round_to']} | {r['macs'] / 1e9:.2f} | {r['params'] / 1e6:.2f} "
        f"| {macs_x:.2f} | {r['ort_ms']:.1f} ({r['ort_min']:.1f}) | {ort_x:.2f} | {ort_x / macs_x:.0%} "
        f"| {r['torch_ms']:.1f} ({r['torch_min']:.1f}) "
        f"| {torch_x:.2f} | {torch_x / macs_x:.0%} | {ok}: {raw['scores']:.0e}, {raw['boxes_rel']:.0e}, "
        f"{p['images_matched']}/{p['images']} ({p['detections']}) |"
    )


if __name__ == "__main__":
    main()
