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


def trained_baseline(
    data: str, epochs: int | tuple[int, ...], imgsz: int, cache_name: str, initial: bool = False
) -> Path:
    """A yolov8n trained from its yaml on ``data`` (seed 0), cached under the plugin's cache folder, never committed.

    Training is the slow part of the benchmarks; the cached checkpoint is reused while the arguments match.
    ``epochs`` may be a tuple of stages, e.g. ``(40, 60)``: each stage is a fresh Ultralytics run (its own
    warm-up and learning-rate decay) started from the previous stage's best.pt, and each stage is cached,
    so a longer schedule extends a shorter one instead of starting over.
    With ``initial``, the first stage's weights before its first step (the untrained state of that model).
    """
    from ultralytics import YOLO

    from yolo_nexp.pipeline import cache_dir

    stages = (epochs,) if isinstance(epochs, int) else tuple(epochs)
    start = "yolov8n.yaml"
    for k in range(1, len(stages) + 1):
        target = cache_dir() / "baselines" / f"{cache_name}-e{'+'.join(map(str, stages[:k]))}-s{imgsz}.pt"
        init = target.with_name(f"{target.stem}-init.pt") if k == 1 else None
        if not target.is_file() or (init and not init.is_file()):
            _train_stage(YOLO(start), data, stages[k - 1], imgsz, target, init)
        if k == 1 and initial:
            return init
        start = str(target)
    return target


def schedule(epochs: int | tuple[int, ...]) -> str:
    """How a baseline was trained, in words, for results files."""
    stages = (epochs,) if isinstance(epochs, int) else tuple(epochs)
    if len(stages) == 1:
        return f"{stages[0]} epochs"
    return (
        f"{' + '.join(map(str, stages))} epochs ({len(stages)} Ultralytics runs, each from the previous run's best.pt)"
    )


def _train_stage(model, data: str, epochs: int, imgsz: int, target: Path, init: Path | None) -> None:
    """One Ultralytics training run: best.pt to ``target``, its results.csv beside it, weights before step 1 to ``init``."""
    from yolo_nexp.report import atomic_write

    project = Path(tempfile.mkdtemp(prefix="nexp-baseline-"))
    if init:

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
    run = project / "base"
    atomic_write(target.with_suffix(".csv"), lambda tmp: shutil.copyfile(run / "results.csv", tmp))  # the curve
    atomic_write(target, lambda tmp: shutil.copyfile(run / "weights" / "best.pt", tmp))


def publish(text: str, out: Path | None) -> None:
    """Write a results file (when ``out`` is given) and print it."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    print(text)
