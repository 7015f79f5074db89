"""Cost of NEXP scoring against the number of calibration images: time and peak memory, against plain
forward passes of the same images (the overhead) and against a naive pairwise implementation.

Every measurement runs in a fresh process so that its peak resident memory is its own.

Usage:
    python benchmarks/scoring_cost.py --scales n s m --images 8 32 128 256 --out benchmarks/results/scoring_cost.md
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import publish  # noqa: E402

BATCH = 8


def worker(mode: str, scale: str, n: int, imgsz: int) -> dict:
    """One measurement in this process: seconds and peak RSS (MB) of ``mode`` on ``n`` noise images."""
    from ultralytics import YOLO

    import yolo_nexp
    from yolo_nexp.data import calibration_batches
    from yolo_nexp.graph import conv_blocks
    from yolo_nexp.nexp import nexp_pairwise

    model = YOLO(f"yolov8{scale}.yaml").model.eval()
    batches = max(1, n // BATCH)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    if mode == "forward":
        with torch.inference_mode():
            for x in calibration_batches("noise", batches=batches, imgsz=imgsz, batch=BATCH):
                model(x)
    elif mode == "nexp":
        yolo_nexp.score(model, "noise", batches=batches, imgsz=imgsz, batch=BATCH, verbose=False)
    else:  # naive: keep every binary activation map, then compare all pairs of images
        maps = {name: [] for name in conv_blocks(model)}
        hooks = [
            m.register_forward_hook(lambda _m, _i, out, k=name: maps[k].append(out > 0))
            for name, m in conv_blocks(model).items()
        ]
        with torch.inference_mode():
            for x in calibration_batches("noise", batches=batches, imgsz=imgsz, batch=BATCH):
                model(x)
        for h in hooks:
            h.remove()
        for name in maps:
            nexp_pairwise(torch.cat(maps[name]))
    return {
        "seconds": time.perf_counter() - t,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "start_mb": rss0,
    }


def measure(mode: str, scale: str, n: int, imgsz: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", mode, scale, str(n), str(imgsz)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", nargs="+", default=["n", "s", "m"])
    ap.add_argument("--images", nargs="+", type=int, default=[8, 32, 128, 256])
    ap.add_argument("--naive-images", nargs="+", type=int, default=[8, 16, 32], help="yolov8n only: it is O(N^2)")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.worker:
        mode, scale, n, imgsz = args.worker
        print(json.dumps(worker(mode, scale, int(n), int(imgsz))))
        return

    rows = []
    for scale in args.scales:
        for n in args.images:
            fwd, nexp = measure("forward", scale, n, args.imgsz), measure("nexp", scale, n, args.imgsz)
            rows.append(
                f"| yolov8{scale} | {n} | {fwd['seconds']:.1f} | {nexp['seconds']:.1f} | "
                f"{nexp['seconds'] / fwd['seconds'] - 1:+.0%} | {fwd['peak_mb']:.0f} | {nexp['peak_mb']:.0f} | "
                f"{nexp['peak_mb'] - fwd['peak_mb']:+.0f} |"
            )
            print(rows[-1], flush=True)
    naive_rows = []
    for n in args.naive_images:
        nexp, naive = measure("nexp", "n", n, args.imgsz), measure("naive", "n", n, args.imgsz)
        naive_rows.append(
            f"| yolov8n | {n} | {nexp['seconds']:.1f} | {naive['seconds']:.1f} | {nexp['peak_mb']:.0f} "
            f"| {naive['peak_mb']:.0f} |"
        )
        print(naive_rows[-1], flush=True)

    text = "\n".join(
        [
            "# Cost of NEXP scoring against the number of calibration images",
            "",
            f"Command: `python {' '.join(sys.argv)}`",
            "",
            f"Random-init models, noise images at {args.imgsz}x{args.imgsz} in batches of {BATCH}, CPU (2 cores, torch "
            f"{torch.__version__}). Each cell is a fresh process; `peak MB` is its peak resident memory (model, torch "
            f"and the work). Overhead = NEXP time / forward time - 1.",
            "",
            "| model | images | forward s | NEXP s | overhead | forward peak MB | NEXP peak MB | NEXP extra MB |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Naive pairwise NEXP (every binary map kept, all ordered pairs of images compared; `nexp_pairwise`):",
            "",
            "| model | images | NEXP s | naive s | NEXP peak MB | naive peak MB |",
            "|---|---|---|---|---|---|",
            *naive_rows,
            "",
        ]
    )
    publish(text, args.out)


if __name__ == "__main__":
    main()
