"""The output heads of the detection family: Detect, Segment, Pose and OBB.

Every head runs, per level, one small conv branch per output kind: boxes (``cv2``), classes (``cv3``) and a
task branch ``cv4`` (Segment: mask coefficients, Pose: keypoints, OBB: angles); Segment adds ``proto``,
prototype masks computed from the first level. Their forward flattens and concatenates all levels after
a ``view``, which confuses Torch-Pruning's index mapping, so while tracing the head returns each
branch's per-level output instead (and the prototypes).

Never pruned: the last conv of every branch (its outputs are boxes, classes, mask coefficients, keypoints
or angles), DFL, Proto's output conv (the mask coefficients index its channels), and Proto's first conv,
whose consumer is a transposed conv: a removed input's constant mean reaches each output through one
of four kernel taps depending on the position's parity, so it cannot be folded into a per-channel bias
(the repair), and the upsampling is left at full width on its input side.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from ultralytics.nn.modules import OBB, Detect, Pose, Segment
from ultralytics.nn.tasks import DetectionModel, OBBModel, PoseModel, SegmentationModel

# Head class -> (task, model class); exact types (YOLOE, World, RT-DETR and *26 heads are other classes).
HEADS: dict[type, tuple[str, type]] = {
    Detect: ("detect", DetectionModel),
    Segment: ("segment", SegmentationModel),
    Pose: ("pose", PoseModel),
    OBB: ("obb", OBBModel),
}
TASKS = tuple(task for task, _ in HEADS.values())


def branches(head: Detect) -> list[nn.ModuleList]:
    """Every per-level branch list of the head: ``cv2``, ``cv3`` and the task's ``cv4`` (end-to-end heads, with
    one-to-one copies, are refused by :func:`yolo_nexp.arch.family.detection_model`)."""
    return [b for b in head.one2many.values() if b is not None]


def _per_level_forward(head: Detect):
    """A head forward returning per-level branch outputs (and prototypes), with no cross-level view or concat."""

    def forward(x: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = [branch[i](x[i]) for branch in branches(head) for i in range(head.nl)]
        if isinstance(head, Segment):
            outputs.append(head.proto(x[0]))
        return outputs

    return forward


@contextmanager
def traceable_head(model: DetectionModel) -> Iterator[Detect]:
    """Let the head return per-level outputs for the duration of the block."""
    head = model.model[-1]
    head.forward = _per_level_forward(head)
    try:
        yield head
    finally:
        del head.forward  # back to the class method


def output_layers(model: DetectionModel) -> list[nn.Module]:
    """Layers of the head whose output channels must be kept (see the module docstring)."""
    head = model.model[-1]
    layers = [branch[i][-1] for branch in branches(head) for i in range(head.nl)] + [head.dfl]
    if isinstance(head, Segment):
        layers += [head.proto.cv3, head.proto.cv1]
    return layers
