"""Data-free recovery by output distillation, outside Ultralytics' trainer: does it recover the real model faster?

The job's recovery trains with Ultralytics' trainer (BatchNorm in train mode, SGD, Ultralytics' ``nbs=64`` gradient
accumulation, labels plus our logit distillation). This script tries the protocol of post-training compression
instead, on images without labels: the pruned model (the default prune of the real YOLOv8s to ``--macs``, seed 0,
as ``fidelity_profile.pruned_copy`` makes it) is trained to reproduce the dense model's raw head outputs with the
job's distillation loss (``yolo_nexp.training.distill.kd_loss``: class KL and confidence-weighted DFL KL, no task
loss), BatchNorm frozen (eval mode, statistics kept), Adam with a cosine schedule, one optimizer step per batch, on
scale-preserving random crops (``--crop`` px, stride-aligned, random horizontal flip) of the 128 train2017 images
letterboxed to 640: a crop costs a quarter of a whole image and sees the features at their real scale. The
fidelity mAP50-95 (square validation, NMS never cut) is measured every ``--every`` steps.

Usage:
    python benchmarks/recovery_output_kd.py --out benchmarks/results/recovery_output_kd-real.md
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import command_line, publish  # noqa: E402
from benchmarks.fidelity_profile import pruned_copy  # noqa: E402
from benchmarks.real_model import RealModel, validate  # noqa: E402


def crops(images: torch.Tensor, batch: int, size: int, rng: random.Random) -> torch.Tensor:
    """``batch`` random ``size`` px crops (offsets on the stride-32 grid, half flipped) of uint8 ``images``, in [0, 1]."""
    out = []
    for _ in range(batch):
        im = images[rng.randrange(len(images))]
        if size < im.shape[-1]:
            y = rng.randrange(0, im.shape[-2] - size + 1, 32)
            x = rng.randrange(0, im.shape[-1] - size + 1, 32)
            im = im[:, y : y + size, x : x + size]
        out.append(im.flip(-1) if rng.random() < 0.5 else im)
    return torch.stack(out).float() / 255


def evaluate(path: str, student, data: str, imgsz: int) -> dict:
    """Fidelity of a copy of ``student`` (validation fuses the model it is given)."""
    from ultralytics import YOLO

    y = YOLO(path)
    y.model = copy.deepcopy(student).eval()
    return validate(y, data, imgsz)


def main():
    from ultralytics import YOLO

    from yolo_nexp.scoring.sources import load_letterboxed, train_images
    from yolo_nexp.training.distill import _raw, kd_loss

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--macs", type=float, default=0.46)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=320)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    real = RealModel()
    data = real.data()
    teacher = YOLO(str(real.weights())).model.float().eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    with tempfile.TemporaryDirectory() as tmp:
        path = pruned_copy(real, data, a.macs, Path(tmp))
        student = YOLO(path).model.float().eval()  # eval: BatchNorm statistics frozen while the weights train
        for p in student.parameters():
            p.requires_grad_(True)
        images = torch.stack([(load_letterboxed(f, 640) * 255).round().to(torch.uint8) for f in train_images(data)])
        opt = torch.optim.Adam(student.parameters(), lr=a.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / a.steps)))
        reg_max = student.model[-1].reg_max
        curve = [(0, evaluate(path, student, data, real.imgsz), 0.0)]
        print(curve[-1], flush=True)
        t0 = time.perf_counter()
        for step in range(1, a.steps + 1):
            x = crops(images, a.batch, a.crop, rng)
            with torch.no_grad():
                t = _raw(teacher(x))
            student.model[-1].shape = None  # the anchors follow the input size
            loss = kd_loss(_raw(student(x)), t, reg_max) / a.batch
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if step % a.every == 0 or step == a.steps:
                curve.append((step, evaluate(path, student, data, real.imgsz), time.perf_counter() - t0))
                print(curve[-1], flush=True)
    lines = [
        "# Data-free recovery by output distillation (BatchNorm frozen, Adam, crops) on the real model",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Baseline: {real.describe()}. The default prune to -{a.macs:.0%} MACs (seed 0, calibration 4 x 8 at 640), "
        f"then {a.steps} Adam steps (lr {a.lr:g}, cosine) of {a.batch} crops of {a.crop} px, no labels; "
        "seconds since the first step, earlier validations included. Square validation, NMS never cut.",
        "",
        "| step | seconds | mAP50-95 | mAP50 |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s} | {sec:.0f} | {r['map']:.3f} | {r['map50']:.3f} |" for s, r, sec in curve]
    publish("\n".join(lines) + "\n", a.out)


if __name__ == "__main__":
    main()
