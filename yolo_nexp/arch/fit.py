"""Does a model fit what it is asked to work with: its task, the data's classes and keypoints, a dense twin for them."""

from __future__ import annotations

import copy
from pathlib import Path

from ultralytics.nn.modules import Pose
from ultralytics.nn.tasks import DetectionModel, PoseModel, guess_model_task

from yolo_nexp.arch.heads import HEADS


def task_of(model, trust: bool = False) -> str:
    """The task of a model module (by its head), or of a model file: a yaml, or a checkpoint (read safely unless
    ``trust``, see :func:`yolo_nexp.load`)."""
    if isinstance(model, (str, Path)):
        if Path(model).suffix != ".pt":
            return guess_model_task(str(model))
        from yolo_nexp.checkpoints.loader import load  # a checkpoint is only ever opened through the safe loader

        return load(model, trust=trust).task
    head = model.model[-1]
    return HEADS[type(head)][0] if type(head) in HEADS else guess_model_task(model)


def check_fits_data(model: DetectionModel, data: dict, source: str = "the model", hint: str = "") -> None:
    """Raise ValueError if the head's classes (or keypoint shape) differ from the data's; ``hint`` says what to do."""
    head, kpt = model.model[-1], data.get("kpt_shape")
    if head.nc != data["nc"]:
        raise ValueError(f"data: {source} predicts {head.nc} classes but the data has {data['nc']}. {hint}".rstrip())
    if isinstance(head, Pose) and kpt is not None and list(head.kpt_shape) != list(kpt):
        shapes = f"keypoints of shape {list(head.kpt_shape)} but the data has {list(kpt)}"
        raise ValueError(f"data: {source} predicts {shapes}. {hint}".rstrip())


def dense_for_data(model: DetectionModel, data: dict | None = None, verbose: bool = False) -> DetectionModel:
    """A freshly built dense model of ``model``'s own class and yaml, for ``data``'s classes and keypoints."""
    head = model.model[-1]
    kwargs = {"nc": data["nc"] if data else head.nc, "verbose": verbose}
    if isinstance(model, PoseModel):
        kwargs["data_kpt_shape"] = tuple((data or {}).get("kpt_shape") or head.kpt_shape)
    dense = type(model)(copy.deepcopy(model.yaml), **kwargs)
    if data and "names" in data:
        dense.names = data["names"]
    return dense
