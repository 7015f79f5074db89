"""Cost of NEXP scoring against the number of calibration images: time and peak memory, against plain
forward passes of the same images (the overhead) and against a naive pairwise implementation.

Every measurement runs in a fresh process so that its peak resident memory is its own.

Usage:
    python benchmarks/scoring_cost.py --scales n s m --images 8 32 128 256 --repeats 2 --out benchmarks/results/scoring_cost.md
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import command_line, publish  # noqa: E402

BATCH = 8


def worker(mode: str, scale: str, n: int, imgsz: int) -> dict:
    """One measurement in this process: seconds and peak RSS (MB) of ``mode`` on ``n`` noise images.

    One batch runs first, untimed, so that one-off costs (allocator, kernel selection) are not counted.
    """
    from ultralytics import YOLO

    import yolo_nexp
    from yolo_nexp.arch.family import conv_blocks
    from yolo_nexp.scoring.nexp import nexp_pairwise
    from yolo_nexp.scoring.sources import calibration_batches

    model = YOLO(f"yolov8{scale}.yaml").model.eval()
    batches = max(1, n // BATCH)
    with torch.inference_mode():
        model(next(iter(calibration_batches("noise", batches=1, imgsz=imgsz, batch=BATCH, seed=1))))
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
    return {"seconds": time.perf_counter() - t, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def state_mb(scale: str, n: int, imgsz: int) -> tuple[float, float]:
    """What each method keeps between batches, in MB: NEXP's int32 count per (channel, position) of every
    conv block (:class:`yolo_nexp.scoring.nexp.FiringCounter`), and the naive form's one byte per image, channel and position.
    """
    from ultralytics import YOLO

    from yolo_nexp.arch.family import conv_blocks
    from yolo_nexp.scoring.nexp import recording

    model = YOLO(f"yolov8{scale}.yaml").model.eval()
    with recording(conv_blocks(model)) as counters, torch.inference_mode():
        model(torch.zeros(1, 3, imgsz, imgsz))
    counts = [c.counts for c in counters.values()]
    return sum(c.numel() * c.element_size() for c in counts) / 2**20, n * sum(c.numel() for c in counts) / 2**20


def measure(mode: str, scale: str, n: int, imgsz: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", mode, scale, str(n), str(imgsz)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_pair(modes: tuple[str, str], scale: str, n: int, imgsz: int, repeats: int) -> list[dict]:
    """Both modes, alternating, ``repeats`` times each; per mode the fastest time and the median peak RSS.

    Alternating fresh processes, so that a slow spell of the machine hits both modes alike.
    """
    runs = {mode: [] for mode in modes}
    for _ in range(repeats):
        for mode in modes:
            runs[mode].append(measure(mode, scale, n, imgsz))
    return [
        {
            "seconds": min(r["seconds"] for r in runs[mode]),
            "peak_mb": statistics.median(r["peak_mb"] for r in runs[mode]),
        }
        for mode in modes
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", nargs="+", default=["n", "s", "m"])
    ap.add_argument("--images", nargs="+", type=int, default=[8, 32, 128, 256])
    ap.add_argument("--naive-images", nargs="+", type=int, default=[8, 16, 32], help="yolov8n only: it is O(N^2)")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per mode and cell (fastest time counts)")
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
            fwd, nexp = measure_pair(("forward", "nexp"), scale, n, args.imgsz, args.repeats)
            rows.append(
                f"| yolov8{scale} | {n} | {fwd['seconds']:.2f} | {nexp['seconds']:.2f} | "
                f"{nexp['seconds'] / fwd['seconds'] - 1:+.0%} | {fwd['peak_mb']:.0f} | {nexp['peak_mb']:.0f} | "
                f"{nexp['peak_mb'] - fwd['peak_mb']:+.0f} | {state_mb(scale, n, args.imgsz)[0]:.1f} |"
            )
            print(rows[-1], flush=True)
    naive_rows = []
    for n in args.naive_images:
        nexp, naive = measure_pair(("nexp", "naive"), "n", n, args.imgsz, args.repeats)
        kept = state_mb("n", n, args.imgsz)
        naive_rows.append(
            f"| yolov8n | {n} | {nexp['seconds']:.2f} | {naive['seconds']:.2f} | {nexp['peak_mb']:.0f} "
            f"| {naive['peak_mb']:.0f} | {kept[0]:.1f} | {kept[1]:.1f} |"
        )
        print(naive_rows[-1], flush=True)

    text = "\n".join(
        [
            "# Cost of NEXP scoring against the number of calibration images",
            "",
            f"Command: `{command_line()}`",
            "",
            f"Random-init models, noise images at {args.imgsz}x{args.imgsz} in batches of {BATCH}, CPU (2 cores, torch "
            f"{torch.__version__}). Each measurement is a fresh process that runs one untimed batch first; the two "
            f"modes of a row alternate, {args.repeats} processes each: the time is the fastest, `peak MB` the median "
            f"peak resident memory (model, torch and the work). Overhead = NEXP time / forward time - 1. `state MB`: "
            f"what the scorer keeps between batches (an int32 count per channel and position of every conv block), "
            f"exact and independent of the number of images.",
            "",
            "| model | images | forward s | NEXP s | overhead | forward peak MB | NEXP peak MB | NEXP extra MB | NEXP state MB |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Naive pairwise NEXP (every binary map kept, all ordered pairs of images compared; `nexp_pairwise`):",
            "",
            "| model | images | NEXP s | naive s | NEXP peak MB | naive peak MB | NEXP state MB | naive state MB |",
            "|---|---|---|---|---|---|---|---|",
            *naive_rows,
            "",
        ]
    )
    publish(text, args.out)


if __name__ == "__main__":
    main()
