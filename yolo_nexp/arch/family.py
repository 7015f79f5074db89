"""Ultralytics-aware dependency handling for the detection family: what Torch-Pruning cannot trace by itself.

Torch-Pruning follows concat, add, upsample, max-pool, depthwise and transposed convs by itself, which
covers SPPF, the neck, C3/C3k and GhostConv/GhostBottleneck (primary and cheap depthwise conv
concatenated: their channels are coupled as one group). What it cannot trace, or traces into groups
that could be cut inconsistently, is handled per block family:

- :mod:`yolo_nexp.arch.csp`: ``chunk`` in C2f, C3k2 and C2; split into two convs while pruning, folded
  back into the original class afterwards, so saved checkpoints hold only Ultralytics and torch classes.
- :mod:`yolo_nexp.arch.ghost`: C3Ghost's residual stream ties channels ``j`` and ``j + c_`` of its ``cv1``;
  ``cv1`` is split in halves the same way, so the pair is always removed together.
- :mod:`yolo_nexp.arch.attention`: attention reshapes in C2PSA/PSABlock; their internals keep their width.
- :mod:`yolo_nexp.arch.heads`: Detect, Segment, Pose and OBB heads' cross-level views; traced per level, and the
  output convs, DFL and Proto's output are never pruned.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn
from ultralytics.engine.model import Model
from ultralytics.nn.modules import (
    C2,
    C2PSA,
    C3,
    SPPF,
    C2f,
    C3Ghost,
    C3k2,
    Concat,
    Conv,
    Detect,
    GhostConv,
)
from ultralytics.nn.tasks import DetectionModel

from yolo_nexp.arch.attention import attention_locked
from yolo_nexp.arch.csp import SPLITS, C2fSplit, C2Split, HalvesSplit
from yolo_nexp.arch.fit import dense_for_data
from yolo_nexp.arch.ghost import GHOST_SPLITS, C3GhostSplit
from yolo_nexp.arch.heads import HEADS, output_layers, traceable_head

__all__ = (
    "C2Split",
    "C2fSplit",
    "C3GhostSplit",
    "HalvesSplit",
    "SUPPORTED_BLOCKS",
    "YOLOV8_BLOCKS",
    "bn_of_conv",
    "c2f_split",
    "conv_blocks",
    "conv_widths",
    "detection_model",
    "is_pruned",
    "never_pruned",
    "traceable_head",
)

# Top-level blocks of YOLOv8 detection models (n/s/m/l/x, p2): the original scope of the plugin.
YOLOV8_BLOCKS = (Conv, C2f, C2fSplit, SPPF, Concat, nn.Upsample, Detect)
# Top-level blocks of every supported config: YOLOv8 (p2/p6, ghost, seg/pose/obb) and YOLO11 (all tasks).
SUPPORTED_BLOCKS = (*YOLOV8_BLOCKS, C2, C2Split, C3, C3Ghost, C3GhostSplit, GhostConv, C3k2, C2PSA, *HEADS)
_SPLITS = {**SPLITS, **GHOST_SPLITS}  # stock class -> its split form while pruning


def _refuse_model(det: nn.Module, head: nn.Module | None) -> None:
    """Raise TypeError unless ``det`` is a detection-family model with a supported head."""
    if isinstance(det, DetectionModel) and type(head) in HEADS and type(det) in {m for _, m in HEADS.values()}:
        return
    found = type(head).__name__ if head is not None else type(det).__name__
    raise TypeError(
        f"model: yolo-nexp prunes detection-family models (a Detect, Segment, Pose or OBB head: YOLOv8, YOLO11); "
        f"this one has {found}. Classification and RT-DETR models are not supported."
    )


def detection_model(model) -> DetectionModel:
    """The ``DetectionModel`` (or Segmentation/Pose/OBB model) of an Ultralytics ``YOLO`` object, or the model itself.

    Raises:
        TypeError: If it has another head (classification, RT-DETR, YOLOE, World...) or a block not handled here.
    """
    det = model.model if isinstance(model, Model) else model
    layers = getattr(det, "model", None)
    head = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
    _refuse_model(det, head)
    others = sorted({type(m).__name__ for m in det.model if type(m) not in SUPPORTED_BLOCKS})
    if others:
        raise TypeError(
            f"model: contains {', '.join(others)}, which yolo-nexp cannot prune; it prunes YOLOv8 and YOLO11 models "
            f"built from {', '.join(sorted({b.__name__ for b in SUPPORTED_BLOCKS if 'Split' not in b.__name__}))}."
        )
    if getattr(head, "end2end", False) or getattr(head, "one2one_cv2", None) is not None:
        raise TypeError("model: end-to-end (NMS-free) heads are not supported by yolo-nexp; use a YOLOv8/YOLO11 model.")
    return det


def _replace_modules(model: nn.Module, convert: dict[type, object]) -> int:
    """Replace every submodule whose exact type is a key of ``convert`` by ``convert[type](module)``."""
    targets = [(name, m) for name, m in model.named_modules() if type(m) in convert]
    for name, m in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, convert[type(m)](m))
    return len(targets)


@contextmanager
def c2f_split(model: nn.Module) -> Iterator[nn.Module]:
    """Split every C2f, C3k2, C2 and C3Ghost for the duration of the block, then fold them back into their classes (also on error)."""
    _replace_modules(model, _SPLITS)
    try:
        yield model
    finally:
        _replace_modules(model, {cls: cls.fold for cls in set(_SPLITS.values())})


def never_pruned(model: DetectionModel) -> list[nn.Module]:
    """Layers whose output channels must be kept: the head's outputs (see :mod:`yolo_nexp.arch.heads`) and attention.

    Given as every submodule (``nn.Conv2d``, BatchNorm...), which is what Torch-Pruning compares group members to.
    """
    layers = {id(m): m for block in output_layers(model) + attention_locked(model) for m in block.modules()}
    return list(layers.values())


def conv_blocks(model: nn.Module) -> dict[str, Conv]:
    """Every Ultralytics ``Conv`` block (Conv2d + BN + act, DWConv included) by module name: the prunable units."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Conv)}


def bn_of_conv(model: nn.Module) -> dict[nn.Conv2d, nn.BatchNorm2d]:
    """The BatchNorm after the ``nn.Conv2d`` of every Ultralytics ``Conv`` block that has one, keyed by the conv."""
    return {b.conv: b.bn for b in conv_blocks(model).values() if isinstance(getattr(b, "bn", None), nn.BatchNorm2d)}


def conv_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every Ultralytics ``Conv`` block, by module name."""
    return {name: m.conv.out_channels for name, m in conv_blocks(model).items()}


def is_pruned(model: DetectionModel) -> bool:
    """Whether ``model``'s layer widths differ from what its own ``yaml`` builds (the dense architecture)."""
    return conv_widths(dense_for_data(model)) != conv_widths(model)
