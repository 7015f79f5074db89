"""Batch-1 CPU latency of dense and pruned YOLOv8 in onnxruntime and PyTorch, with ONNX parity on COCO128.

For each scale: the dense model, NEXP-pruned at ratios 0.25/0.5/0.75 (round_to 8), and ratio 0.5 with
round_to 1/16/32. Each model is saved as an Ultralytics checkpoint, exported with Ultralytics' ONNX
exporter, checked against PyTorch (raw outputs and detections on COCO128 val images), and timed:
median of --runs runs after --warmup runs, at --imgsz, batch 1, on the CPU.

Usage:
    python benchmarks/latency.py --scales n s m --out benchmarks/results/latency.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
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
from benchmarks.common import publish  # noqa: E402
from yolo_nexp.export import onnx_parity  # noqa: E402
from yolo_nexp.report import macs_and_params  # noqa: E402
from yolo_nexp.testing import informative  # noqa: E402

COCO_VAL = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco128" / "images" / "val2017"
CONFIGS = [(0.0, 8), (0.25, 8), (0.5, 8), (0.75, 8), (0.5, 1), (0.5, 16), (0.5, 32)]  # (ratio, round_to)


def interleaved_ms(runners: dict, runs: int, warmup: int, rounds: int = 5) -> dict:
    """Median and min milliseconds of each runner, timed in ``rounds`` interleaved rounds.

    This machine's speed drifts by 10-20% over minutes (shared cores); interleaving spreads slow
    periods evenly over the models compared instead of landing on whichever ran then.
    """
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times = {key: [] for key in runners}
    for _ in range(rounds):
        for key, fn in runners.items():
            for _ in range(max(1, runs // rounds)):
                t = time.perf_counter()
                fn()
                times[key].append((time.perf_counter() - t) * 1e3)
    return {key: (statistics.median(t), min(t)) for key, t in times.items()}


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
    args = ap.parse_args()

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
                ort_ms=ort_ms[key][0], ort_min=ort_ms[key][1], torch_ms=torch_ms[key][0], torch_min=torch_ms[key][1]
            )
            dense = dense or row
            rows.append((row, dense))
            print(format_row(row, dense), flush=True)

    text = "\n".join(
        [
            "# Batch-1 CPU latency: dense vs NEXP-pruned YOLOv8",
            "",
            f"Command: `python {' '.join(sys.argv)}`",
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
