"""Helpers shared by the benchmark scripts (and the export tests)."""

from __future__ import annotations

import shutil
import tempfile
from copy import deepcopy
from pathlib import Path

import torch
from torch import nn


@torch.no_grad()
def informative(model, batches: int = 4, imgsz: int = 64, seed: int = 0, gain: float = 0.7):
    """Make a randomly initialised YOLO give input-dependent scores: recalibrate BatchNorm, zero the head's priors.

    In a model built from yaml, activations shrink layer by layer to ~1e-7 at the head and every anchor
    gets the same score (Ultralytics' class prior, about -11.5), so NMS picks among ties arbitrarily and
    comparing detections would be meaningless. Recomputing BatchNorm statistics on noise brings every
    layer back to a useful scale; ``gain`` < 1 keeps the random network out of the chaotic regime where
    fp32 rounding differences grow layer by layer (gain 1 gave 4e-4 score differences between PyTorch
    and onnxruntime for yolov8n, 0.7 gives 2e-7). Zeroing the prior lets the features decide the scores.
    Conv weights are untouched, so speed and MACs are those of the model.
    """
    det = model.model if hasattr(model, "model") and isinstance(model.model, nn.Module) else model
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in det.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    det.train()
    for _ in range(batches):
        det(torch.rand(2, 3, imgsz, imgsz, generator=gen))
    det.eval()
    for m in norms:
        m.weight.mul_(gain)
    head = det.model[-1]
    for seq in (*head.cv2, *head.cv3):
        seq[-1].bias.zero_()
    return model


def trained_baseline(data: str, epochs: int, imgsz: int, cache_name: str, initial: bool = False) -> Path:
    """A yolov8n trained from its yaml on ``data`` (seed 0), cached under the plugin's cache folder, never committed.

    Training is the slow part of the benchmarks; the cached checkpoint is reused while the arguments match.
    With ``initial``, the same run's weights before its first step (the untrained state of that model).
    """
    from ultralytics import YOLO

    from yolo_nexp.pipeline import cache_dir
    from yolo_nexp.report import atomic_write

    target = cache_dir() / "baselines" / f"{cache_name}-e{epochs}-s{imgsz}.pt"
    init = target.with_name(f"{target.stem}-init.pt")
    if not (target.is_file() and init.is_file()):
        project = Path(tempfile.mkdtemp(prefix="nexp-baseline-"))
        model = YOLO("yolov8n.yaml")

        def save_initial(trainer):
            atomic_write(init, lambda tmp: torch.save({"model": deepcopy(trainer.model).half()}, tmp))

        model.add_callback("on_pretrain_routine_end", save_initial)
        model.train(
            data=data,
            epochs=epochs,
            imgsz=imgsz,
            batch=16,
            seed=0,
            workers=2,
            project=str(project),
            name="base",
            plots=False,
            verbose=False,
        )
        atomic_write(target, lambda tmp: shutil.copyfile(project / "base" / "weights" / "best.pt", tmp))
    return init if initial else target


def publish(text: str, out: Path | None) -> None:
    """Write a results file (when ``out`` is given) and print it."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    print(text)
