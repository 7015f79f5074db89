"""Where onnxruntime spends its time, per operator type, in a dense and a pruned YOLOv8 (batch 1, CPU).

Explains the gap between the MACs speed-up and the latency speed-up: convolutions shrink with the
square of the kept channels, element-wise and data-movement operators only linearly, and fixed
per-node costs not at all.

Usage:
    python benchmarks/ort_profile.py --scale s --ratio 0.5 --out benchmarks/results/ort_profile.md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
from ultralytics import YOLO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import yolo_nexp  # noqa: E402
from benchmarks.common import command_line, publish  # noqa: E402
from yolo_nexp.report import macs_and_params  # noqa: E402


def op_times(onnx_file: Path, imgsz: int, runs: int) -> tuple[dict[str, float], float]:
    """Mean milliseconds per run for each operator type, and the mean total, from onnxruntime's profiler."""
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(onnx_file.with_suffix(""))
    session = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
    x = {session.get_inputs()[0].name: np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)}
    for _ in range(5):  # warm-up, left out below
        session.run(None, x)
    session.end_profiling()
    opts.profile_file_prefix = str(onnx_file.with_suffix("")) + "-timed"
    session = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
    for _ in range(runs + 5):
        session.run(None, x)
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op, total = defaultdict(float), 0.0
    runs_seen = [e for e in events if e.get("name") == "model_run"][5:]  # skip this session's own warm-up
    start = runs_seen[0]["ts"] if runs_seen else 0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            per_op[e["args"]["op_name"]] += e["dur"] / 1e3 / runs
    total = sum(e["dur"] for e in runs_seen) / 1e3 / max(len(runs_seen), 1)
    return dict(per_op), total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="s")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--round_to", type=int, default=8)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="nexp-profile-"))
    results = {}
    for label, ratio in (("dense", 0.0), ("pruned", args.ratio)):
        model = YOLO(f"yolov8{args.scale}.yaml")
        if ratio:
            yolo_nexp.prune(
                model,
                ratio=ratio,
                round_to=args.round_to,
                imgsz=args.imgsz,
                batches=1,
                batch=2,
                verbose=False,
                criterion="nexp",
                allocation="uniform",  # what the profiles measured: every layer loses `ratio`
            )
        macs, _ = macs_and_params(model.model, args.imgsz)
        pt = tmp / f"{label}.pt"
        model.save(pt)
        onnx_file = Path(YOLO(str(pt)).export(format="onnx", imgsz=args.imgsz, verbose=False))
        results[label] = (*op_times(onnx_file, args.imgsz, args.runs), macs)

    (dense_ops, dense_total, dense_macs), (pruned_ops, pruned_total, pruned_macs) = results["dense"], results["pruned"]
    lines = [
        f"# onnxruntime time per operator type: yolov8{args.scale} dense vs pruned (ratio {args.ratio}, "
        f"round_to {args.round_to})",
        "",
        f"Command: `{command_line()}`",
        "",
        f"onnxruntime {ort.__version__}, CPUExecutionProvider, batch 1, {args.imgsz}x{args.imgsz}, mean of "
        f"{args.runs} profiled runs after warm-up. MACs speed-up {dense_macs / pruned_macs:.2f}x; "
        f"whole-run time {dense_total:.1f} ms -> {pruned_total:.1f} ms ({dense_total / pruned_total:.2f}x).",
        "",
        "| operator | dense ms | dense share | pruned ms | pruned share | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    dense_sum, pruned_sum = sum(dense_ops.values()), sum(pruned_ops.values())
    for op in sorted(dense_ops, key=dense_ops.get, reverse=True):
        d, p = dense_ops[op], pruned_ops.get(op, 0.0)
        lines.append(
            f"| {op} | {d:.2f} | {d / dense_sum:.0%} | {p:.2f} | {p / pruned_sum:.0%} | "
            f"{d / p if p else float('inf'):.2f} |"
        )
    lines += [f"| all kernels | {dense_sum:.2f} | 100% | {pruned_sum:.2f} | 100% | {dense_sum / pruned_sum:.2f} |", ""]
    text = "\n".join(lines)
    publish(text, args.out)


if __name__ == "__main__":
    main()
