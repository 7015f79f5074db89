"""Gradients of a detection loss on the calibration images, for Torch-Pruning's ``taylor`` and ``hessian`` criteria.

The criteria themselves are Torch-Pruning's (``GroupTaylorImportance``: ``|w * dL/dw|`` summed over a channel's
weights in every coupled layer; ``GroupHessianImportance``: ``w^2 * E[(dL/dw)^2]``, the diagonal Fisher
approximation of Optimal Brain Damage); this module supplies the gradients they read from ``param.grad``.

The loss. Calibration images need not have labels (noise, a folder of photos), so the model is its own teacher:
the labels of an image are the dense model's own detections on it (NMS at confidence :data:`PSEUDO_CONF`, IoU
:data:`PSEUDO_IOU`), and the loss is Ultralytics' detection loss (``v8DetectionLoss``: CIoU box loss, class BCE and
DFL, with the model's own gains if it carries them, else Ultralytics' defaults) of the same forward pass against
them. The boxes are read from the head as Detect reads them, for every task: mask coefficients, keypoints and OBB
angles are not part of the loss (an OBB box is taken axis-aligned, for its labels as for the loss), so channels
that only feed them (Segment's prototypes) get no gradient and score 0. A model that detects nothing (random
initialisation) still has a loss: the class BCE that pushes every score down.

Costs: ``taylor`` one forward and one backward pass per kept calibration batch (the gradients of the batches add
up); ``hessian`` one forward and one backward pass per image (per-sample gradients, squared and averaged with
Torch-Pruning's ``accumulate_grad`` as its examples do) for the first :data:`HESSIAN_SAMPLES` images of the kept
batches. The model is in eval mode (BatchNorm statistics frozen), so per-image passes give each image's gradient.
Gradients are kept aside and set on the parameters only while a group is scored: the model is left without any.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import torch
import torch_pruning as tp
from torch import nn
from ultralytics.utils import DEFAULT_CFG_DICT
from ultralytics.utils.loss import v8DetectionLoss
from ultralytics.utils.nms import non_max_suppression
from ultralytics.utils.ops import xyxy2xywh
from ultralytics.utils.tal import make_anchors

from yolo_nexp.utils import mode

PSEUDO_CONF = 0.25  # confidence of the dense model's detections taken as labels
PSEUDO_IOU = 0.7  # NMS IoU for those detections (Ultralytics' predict default)
HESSIAN_SAMPLES = 16  # images whose per-sample gradients the hessian criterion averages (first of the kept batches)
GAINS = ("box", "cls", "dfl")  # the loss gains read from the model's training arguments, else Ultralytics' defaults


def detection_loss(model: nn.Module) -> v8DetectionLoss:
    """Ultralytics' detection loss for ``model``, with the box/cls/dfl gains of its training arguments if it has them."""
    args = vars(model).get("args")
    own = args if isinstance(args, dict) else vars(args) if args is not None else {}
    hyp = SimpleNamespace(**{k: own.get(k, DEFAULT_CFG_DICT[k]) for k in GAINS})
    had = "args" in vars(model)
    model.args = hyp  # v8DetectionLoss reads its gains from model.args
    try:
        return v8DetectionLoss(model)
    finally:
        if had:
            model.args = args
        else:
            del model.args


def pseudo_labels(criterion: v8DetectionLoss, preds: dict, imgsz: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The model's own detections on a batch as an Ultralytics label batch (``batch_idx``, ``cls``, normalised ``bboxes``).

    Args:
        criterion (v8DetectionLoss): The loss, whose box decoding is used.
        preds (dict): The head's raw outputs (``boxes``, ``scores``, ``feats``).
        imgsz (tuple[int, int]): Height and width of the input.
    """
    anchors, strides = make_anchors(preds["feats"], criterion.stride, 0.5)
    xyxy = criterion.bbox_decode(anchors, preds["boxes"].detach().permute(0, 2, 1)) * strides  # pixels
    decoded = torch.cat((xyxy2xywh(xyxy), preds["scores"].detach().sigmoid().permute(0, 2, 1)), 2).permute(0, 2, 1)
    dets = non_max_suppression(decoded.float(), PSEUDO_CONF, PSEUDO_IOU, nc=criterion.nc)
    h, w = imgsz
    scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=decoded.device)
    return {
        "batch_idx": torch.cat([torch.full((len(d),), float(i), device=decoded.device) for i, d in enumerate(dets)]),
        "cls": torch.cat([d[:, 5] for d in dets]).view(-1, 1),
        "bboxes": torch.cat([xyxy2xywh(d[:, :4]) / scale for d in dets]),
    }


def self_supervised_loss(model: nn.Module, criterion: v8DetectionLoss, images: torch.Tensor) -> torch.Tensor:
    """Detection loss of one forward pass of ``images`` against the model's own detections on them (a scalar)."""
    model.model[-1].shape = None  # the head's anchors may be cached from an inference-mode pass
    out = model(images)
    preds = out[1] if isinstance(out, (tuple, list)) else out
    loss, _ = criterion.loss(preds, pseudo_labels(criterion, preds, images.shape[2:]))
    return loss.sum()


@contextmanager
def _gradients_on(model: nn.Module):
    """Eval mode, grad enabled, every parameter requiring grad with no gradient; flags and gradients restored after."""
    saved = {p: (p.requires_grad, p.grad) for p in model.parameters()}
    try:
        for p in saved:
            p.requires_grad_(True)
            p.grad = None
        with mode(model), torch.enable_grad():
            yield list(saved)
    finally:
        for p, (flag, grad) in saved.items():
            p.requires_grad_(flag)
            p.grad = grad


def _images(batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """Ordinary copies of the kept batches (those are inference tensors: autograd cannot record them)."""
    return [b.detach().clone() for b in batches]


def loss_gradients(model: nn.Module, batches: list[torch.Tensor]) -> dict[nn.Parameter, torch.Tensor]:
    """Gradient of the self-supervised loss, summed over ``batches``, of every parameter (zeros where it has none)."""
    with _gradients_on(model) as params:
        criterion = detection_loss(model)
        for x in _images(batches):
            self_supervised_loss(model, criterion, x).backward()
        return {p: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params}


class SizedReduce:
    """A mixin for Torch-Pruning's group importances: the reduced score has one entry per channel of the group.

    Torch-Pruning's ``_reduce`` sizes its result by the first layer it scored. Taylor and FPGM skip BatchNorm and
    depthwise convs, so in a Ghost group the first may be a consumer that reads every channel twice (the primary and
    the cheap half of the concat), and the result came out twice as long, zeros after the group's channels. A zero
    term the size of the group, put first, fixes the length; with the ``mean`` reduction it also adds one to the
    count it divides by, a factor common to the group that the ``mean`` normaliser removes.
    """

    def _reduce(self, group_imp, group_idxs):
        """Torch-Pruning's reduction, seeded with a zero term over every root channel."""
        roots = [r for idxs in group_idxs if None not in idxs for r in idxs]
        if not group_imp or not roots:
            return super()._reduce(group_imp, group_idxs)
        n = max(roots) + 1
        zero = torch.zeros(n, dtype=group_imp[0].dtype, device=group_imp[0].device)
        return super()._reduce([zero, *group_imp], [list(range(n)), *group_idxs])


class TaylorImportance(SizedReduce, tp.importance.GroupTaylorImportance):
    """Torch-Pruning's ``GroupTaylorImportance``, one score per group channel (see :class:`SizedReduce`)."""


class HessianImportance(SizedReduce, tp.importance.GroupHessianImportance):
    """Torch-Pruning's ``GroupHessianImportance`` whose ``accumulate_grad`` sums every sample.

    Torch-Pruning 1.6.1 tests a parameter's *name* against its accumulator, which is keyed by the parameter, so
    each sample replaced the one before and only the last counted; here the squared gradients add up. Scoring is
    Torch-Pruning's (with :class:`SizedReduce`).
    """

    def accumulate_grad(self, model: nn.Module) -> None:
        """Add the square of every parameter's current gradient, and count the sample."""
        for p in model.parameters():
            if p.grad is not None:
                self._accu_grad[p] = self._accu_grad.get(p, 0) + p.grad.detach().pow(2)
                self._counter[p] = self._counter.get(p, 0) + 1

    def mean_squared(self) -> dict[nn.Parameter, torch.Tensor]:
        """The mean squared gradient of every accumulated parameter; the accumulators are emptied."""
        means = {p: g / self._counter[p] for p, g in self._accu_grad.items()}
        self.zero_grad()
        return means


def squared_gradients(
    model: nn.Module, batches: list[torch.Tensor], importance: HessianImportance, samples: int = HESSIAN_SAMPLES
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of the first ``samples`` images, accumulated by ``importance``; their mean square."""
    with _gradients_on(model) as params:
        criterion = detection_loss(model)
        images = [x[None] for b in _images(batches) for x in b][:samples]
        for x in images:
            model.zero_grad(set_to_none=True)
            self_supervised_loss(model, criterion, x).backward()
            importance.accumulate_grad(model)
        means = importance.mean_squared()
        return {p: means.get(p, torch.zeros_like(p)) for p in params}


def _copy(group):
    """A copy of ``group`` with its own index lists (Torch-Pruning's Taylor and Hessian sort them in place)."""
    copy = tp.dependency.Group()
    copy._DG = group._DG
    for item in group:
        copy.add_dep(item.dep, list(item.idxs))
        copy[len(copy) - 1].root_idxs = list(item.root_idxs)
    return copy


class WithGradients(tp.importance.Importance):
    """A Torch-Pruning importance that reads ``param.grad``, given the gradients to read.

    Each call sets them on the parameters, scores a copy of the group, and puts the parameters' own back.
    A group whose gradients are all zero (nothing in the loss depends on it) scores 0 rather than Torch-Pruning's
    0 / 0 of its mean normalisation.

    Args:
        importance (tp.importance.Importance): E.g. ``GroupTaylorImportance``.
        grads (dict[nn.Parameter, torch.Tensor]): What ``param.grad`` holds while a group is scored.
    """

    def __init__(self, importance: tp.importance.Importance, grads: dict[nn.Parameter, torch.Tensor]):
        """Keep the importance and the gradients."""
        self.importance, self.grads = importance, grads

    def __call__(self, group) -> torch.Tensor | None:
        """The wrapped importance of ``group`` with the kept gradients in place."""
        own = {p: p.grad for p in self.grads}
        try:
            for p, g in self.grads.items():
                p.grad = g
            imp = self.importance(_copy(group))
        finally:
            for p, g in own.items():
                p.grad = g
        return None if imp is None else torch.nan_to_num(imp, nan=0.0)


def taylor_importance(model: nn.Module, batches: list[torch.Tensor]) -> WithGradients:
    """Torch-Pruning's ``GroupTaylorImportance`` on the loss gradients of ``batches`` (see the module docstring)."""
    return WithGradients(TaylorImportance(), loss_gradients(model, batches))


def hessian_importance(model: nn.Module, batches: list[torch.Tensor], samples: int = HESSIAN_SAMPLES) -> WithGradients:
    """Torch-Pruning's ``GroupHessianImportance`` on per-sample gradients of the first ``samples`` images."""
    importance = HessianImportance()
    return WithGradients(importance, squared_gradients(model, batches, importance, samples))
