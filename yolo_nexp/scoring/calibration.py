"""One calibration pass: every activation statistic the pruner needs, from the same forward passes.

Scoring, repair and allocation all read the calibration images; doing it once keeps the cost at
one forward pass per image. What is recorded is chosen by the caller and streamed batch by batch,
so memory does not grow with the number of images:

- ``firing``: binary firing counts per (channel, position) of every ``Conv`` block's output (NEXP);
- ``spread``: mean and squared deviations per (channel, position) over images (continuous NEXP);
- ``inputs``: mean and variance per input channel of every ``nn.Conv2d`` (what a removed channel
  feeds its consumers: the repair folds the mean, the ``nexp_use`` criterion weighs the variance);
- ``cross``: the channel covariance of every ``nn.Conv2d``'s input (the least-squares repair);
- ``information``: per channel of every ``Conv`` block's output, the mean rank of its maps and the entropy of
  its values (allocation by information concentration, :mod:`yolo_nexp.pruning.information`);
- ``images``: the first batches themselves, for allocation by sensitivity and BatchNorm re-estimation.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
from torch import nn
from ultralytics.utils import LOGGER, TQDM

from yolo_nexp.arch.family import conv_blocks, detection_model
from yolo_nexp.scoring.feature_information import FeatureInformation
from yolo_nexp.scoring.nexp import FiringCounter
from yolo_nexp.scoring.sources import calibration_batches
from yolo_nexp.utils import chunks, mode


class Moments:
    """Streaming mean and sum of squared deviations over the leading dimension (Chan's parallel update).

    Args:
        reduce (tuple[int, ...]): Dimensions of each batch reduced with the images (e.g. positions).
    """

    def __init__(self, reduce: tuple[int, ...] = (0,)):
        """Start empty."""
        self.reduce, self.n, self.mean, self.m2 = reduce, 0, None, None

    def update(self, x: torch.Tensor) -> None:
        """Add one batch; float32 deviations from the batch mean keep the sums stable without float64 state."""
        x = x.detach().float()
        nb = 1
        for d in self.reduce:
            nb *= x.shape[d]
        mean_b = x.mean(self.reduce)
        m2_b = (x - _expand(mean_b, x, self.reduce)).pow(2).sum(self.reduce)
        if self.mean is None:
            self.n, self.mean, self.m2 = nb, mean_b, m2_b
            return
        delta, n = mean_b - self.mean, self.n + nb
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2_b + delta.pow(2) * (self.n * nb / n)
        self.n = n

    @property
    def var(self) -> torch.Tensor:
        """Unbiased variance (0 where fewer than 2 samples)."""
        return self.m2 / max(self.n - 1, 1)


MAX_POSITIONS = 1024  # positions per image the covariance of a conv's input is read on (16384 in a batch of 16)


class CrossMoments:
    """Streaming mean and covariance of the channels of a (B, C, H, W) input, over images and positions.

    Per batch one (C, C) product in float32, summed in float64: what the least-squares repair regresses on. Large
    maps are read on a regular grid of at most :data:`MAX_POSITIONS` positions per image: a regression of one
    channel on the others needs far fewer samples than a high-resolution map has, and the cost stays bounded.
    """

    def __init__(self):
        """Start empty."""
        self.n, self.sum, self.outer = 0, None, None

    def update(self, x: torch.Tensor) -> None:
        """Add one batch."""
        step = math.ceil(math.sqrt(x.shape[2] * x.shape[3] / MAX_POSITIONS))
        x = x[:, :, ::step, ::step] if step > 1 else x
        flat = x.detach().float().transpose(0, 1).reshape(x.shape[1], -1)
        s, o = flat.sum(1).double(), (flat @ flat.T).double()
        self.sum, self.outer = (s, o) if self.sum is None else (self.sum + s, self.outer + o)
        self.n += flat.shape[1]

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.n

    @property
    def cov(self) -> torch.Tensor:
        """Covariance (biased: the positions are many)."""
        return self.outer / self.n - torch.outer(self.mean, self.mean)


def _expand(stat: torch.Tensor, x: torch.Tensor, reduce: tuple[int, ...]) -> torch.Tensor:
    shape = [1 if d in reduce else s for d, s in enumerate(x.shape)]
    return stat.reshape(shape)


@dataclass
class Calibration:
    """Statistics of one calibration pass (see the module docstring); empty dicts for what was not asked."""

    firing: dict[str, FiringCounter] = field(default_factory=dict)
    spread: dict[str, Moments] = field(default_factory=dict)
    inputs: dict[nn.Conv2d, Moments] = field(default_factory=dict)
    cross: dict[nn.Conv2d, CrossMoments] = field(default_factory=dict)
    information: dict[str, FeatureInformation] = field(default_factory=dict)
    images: list[torch.Tensor] = field(default_factory=list)
    n_images: int = 0

    def input_means(self) -> dict[nn.Conv2d, torch.Tensor]:
        """Mean of every input channel of every recorded conv."""
        return {conv: m.mean for conv, m in self.inputs.items()}


def _hook_outputs(stack: ExitStack, blocks: dict[str, nn.Module], make) -> dict[str, object]:
    """One recorder per block, fed the block's output; hooks are removed when ``stack`` closes."""
    recorders = {name: make() for name in blocks}
    for name, block in blocks.items():
        handle = block.register_forward_hook(lambda _m, _i, out, r=recorders[name]: r.update(out.detach()))
        stack.callback(handle.remove)
    return recorders


def _hook_inputs(stack: ExitStack, model: nn.Module, make=lambda: Moments(reduce=(0, 2, 3))) -> dict[nn.Conv2d, object]:
    """Per-input-channel moments of every ``nn.Conv2d`` (over images and positions); ``make()`` is the recorder."""
    recorders = {}
    for conv in model.modules():
        if isinstance(conv, nn.Conv2d):
            recorders[conv] = rec = make()
            handle = conv.register_forward_pre_hook(lambda _m, args, r=rec: r.update(args[0]))
            stack.callback(handle.remove)
    return recorders


def calibrate(
    model: nn.Module,
    source="noise",
    batches: int = 4,
    imgsz: int = 640,
    batch: int = 8,
    seed: int = 0,
    firing: bool = False,
    spread: bool = False,
    inputs: bool = False,
    cross: bool = False,
    information: bool = False,
    keep_images: int = 0,
    verbose: bool = True,
    part: tuple[int, int] = (0, 1),
) -> Calibration:
    """Run the calibration images through ``model`` once (eval mode, no grad) and record what is asked.

    Args:
        model (nn.Module): A detection model (C2f blocks may be split; statistics are keyed by its modules).
        source (str | Path | Iterable): Calibration data (see :func:`yolo_nexp.scoring.sources.calibration_batches`).
        batches (int): Number of batches.
        imgsz (int): Square input size.
        batch (int): Images per batch (iterables bring their own).
        seed (int): Seed for noise and the choice of images.
        firing (bool): Record binary firing counts of every ``Conv`` block (NEXP).
        spread (bool): Record per-position moments of every ``Conv`` block (continuous NEXP).
        inputs (bool): Record per-input-channel moments of every ``nn.Conv2d`` (repair, use criteria).
        cross (bool): Record the channel covariance of every ``nn.Conv2d``'s input (the least-squares repair).
        information (bool): Record per-channel map rank and activation entropy of every ``Conv`` block.
        keep_images (int): Keep up to this many batches of images for later passes.
        verbose (bool): Show a progress bar.
        part (tuple[int, int]): ``(index, count)``: read only every ``count``-th batch from ``index`` on (a
            pruning pass's share, :func:`yolo_nexp.scoring.sources.calibration_batches`).

    Returns:
        (Calibration): The statistics, on the CPU for scores and on the model's device for inputs.
    """
    param = next(model.parameters())
    calib = Calibration()
    blocks = conv_blocks(model)
    with mode(model), ExitStack() as stack, torch.inference_mode():
        if firing:
            calib.firing = _hook_outputs(stack, blocks, FiringCounter)
        if spread:
            calib.spread = _hook_outputs(stack, blocks, lambda: Moments(reduce=(0,)))
        if inputs:
            calib.inputs = _hook_inputs(stack, model)
        if cross:
            calib.cross = _hook_inputs(stack, model, CrossMoments)
        if information:
            calib.information = _hook_outputs(stack, blocks, FeatureInformation)
        stream = calibration_batches(source, batches=batches, imgsz=imgsz, batch=batch, seed=seed, part=part)
        total = len(range(part[0], batches, part[1]))
        for images in TQDM(stream, total=total, desc="calibration", disable=not verbose):
            images = images.to(param.device, param.dtype)
            if len(calib.images) < keep_images:
                calib.images.append(images)
            # chunks: faster, and every statistic is a sum over images except the information one's first-batch range
            for part in (images,) if information else chunks(images):
                model(part)
            calib.n_images += images.shape[0]
    if calib.n_images == 0:
        raise ValueError("the calibration source gave no images: check 'source' (or the data's train split).")
    if verbose:
        LOGGER.info(f"yolo-nexp: calibrated on {calib.n_images} images")
    return calib


def score(
    model,
    source="noise",
    batches: int = 4,
    imgsz: int = 640,
    batch: int = 8,
    seed: int = 0,
    verbose: bool = True,
) -> dict[str, torch.Tensor]:
    """Score every prunable conv block's output channels by NEXP (the binary score: mean over positions of 2k(N-k) / (N(N-1)), k the images that fire).

    Args:
        model (ultralytics.YOLO | nn.Module): The model; a ``YOLO`` object is unwrapped to its detection model.
        source (str | Path | Iterable): ``"noise"``, a folder of images, an Ultralytics data yaml (its train split),
            or an iterable of image batches (tensors in [0, 1] or Ultralytics batch dicts with ``"img"``).
        batches (int): Number of calibration batches.
        imgsz (int): Square input size of the calibration images.
        batch (int): Images per calibration batch (ignored for iterables, which bring their own).
        seed (int): Seed for noise and for the choice of images.
        verbose (bool): Show a progress bar.

    Returns:
        (dict[str, torch.Tensor]): ``{module_name: tensor[C]}`` for every ``Conv`` block, float32 on the CPU.
    """
    calib = calibrate(detection_model(model), source, batches, imgsz, batch, seed, firing=True, verbose=verbose)
    return {name: counter.score() for name, counter in calib.firing.items()}
