"""Trainers that keep the pruned architecture, one per task.

Ultralytics' trainer rebuilds the model from ``model.yaml`` and copies only the tensors whose shapes
match, so a pruned model silently turns back into the dense one. :class:`KeepPruned` makes a task's
stock trainer train the pruned module itself; for a dense model it behaves exactly like the stock one.
:class:`NexpTrainer` (detect), :class:`NexpSegmentationTrainer`, :class:`NexpPoseTrainer` and
:class:`NexpOBBTrainer` are that mixin on Ultralytics' trainer of each task; :func:`trainer_for` picks one.
"""

from __future__ import annotations

import os

from ultralytics.data import build_yolo_dataset
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.models.yolo.obb import OBBTrainer
from ultralytics.models.yolo.pose import PoseTrainer
from ultralytics.models.yolo.segment import SegmentationTrainer
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import LOGGER, RANK
from ultralytics.utils.torch_utils import unwrap_model

from yolo_nexp.arch.family import is_pruned
from yolo_nexp.arch.fit import check_fits_data
from yolo_nexp.checkpoints.loader import check_resume
from yolo_nexp.training.distill import install


def keep_pruned_get_model(trainer, fallback, cfg=None, weights=None, verbose: bool = True) -> DetectionModel:
    """``trainer.get_model`` that returns a pruned ``weights`` module as it is, else ``fallback(cfg, weights)``.

    Raises:
        ValueError: If a pruned model's class count (or keypoint shape) differs from the data's: its head
            cannot be rebuilt.
    """
    if not (isinstance(weights, DetectionModel) and is_pruned(weights)):
        return fallback(cfg=cfg, weights=weights, verbose=verbose)
    check_fits_data(weights, trainer.data, "the pruned model", "Prune a model trained on this data.")
    if verbose and RANK in {-1, 0}:
        n = sum(p.numel() for p in weights.parameters())
        LOGGER.info(f"yolo-nexp: training the pruned model as it is ({n:,} parameters)")
    return trainer.set_model_names_for_load(weights.float())


class KeepPruned:
    """Mixin for an Ultralytics trainer: fine-tune, and resume, a pruned model without losing its architecture.

    Put it first in the bases, before the task's trainer (e.g. ``class T(KeepPruned, SegmentationTrainer)``).
    When the run folder holds a teacher (``weights/teacher.pt``), training distils from it (see :mod:`.distill`):
    a first run, ``resume=True`` and DDP workers all find it there.
    """

    # Validate between epochs on square inputs, as ``model.val(rect=False)`` does: the stock trainer always
    # validates on rectangular batches, so its fitness would not compare with such a validation of the
    # pruned model (the job sets this when the user gives ``rect=False``).
    square_val = False

    def __init__(self, *args, **kwargs):
        """The task trainer, plus distillation from the run folder's teacher when there is one."""
        super().__init__(*args, **kwargs)
        self.add_callback("on_train_start", install)

    def train(self):
        """Ultralytics' ``train``; when it launches DDP workers, the run folder is kept for them.

        Ultralytics' launcher (``generate_ddp_command`` in ``ultralytics/utils/dist.py``) deletes the run folder
        before it starts the workers unless the run resumes; the workers then rebuild it, empty.
        """
        if not self.ddp or self.resume:
            return super().train()
        # The folder holds what the workers need: the teacher (weights/teacher.pt), and for the prune job also
        # pruned.pt and the data split of a recovery without labels. In the DDP parent only that launcher reads
        # ``self.resume``, so setting it keeps the folder and changes nothing else; the workers read ``args.resume``.
        self.resume = True
        try:
            return super().train()
        finally:
            self.resume = False

    def check_resume(self, overrides):
        """Refuse an unsafe ``resume`` checkpoint (see :mod:`yolo_nexp.checkpoints.loader`) before Ultralytics unpickles it."""
        check_resume(self.args.resume)
        super().check_resume(overrides)

    def get_model(self, cfg=None, weights=None, verbose: bool = True) -> DetectionModel:
        """The pruned ``weights`` module itself; otherwise the task's stock model built from ``cfg``."""
        return keep_pruned_get_model(self, super().get_model, cfg=cfg, weights=weights, verbose=verbose)

    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None):
        """The task's dataset; for validation with :attr:`square_val`, square letterboxed inputs."""
        if mode == "val" and self.square_val:
            stride = max(int(unwrap_model(self.model).stride.max()), 32)
            return build_yolo_dataset(self.args, img_path, batch, self.data, mode=mode, rect=False, stride=stride)
        return super().build_dataset(img_path, mode, batch)

    def save_model(self):
        """Ultralytics' ``save_model``, but ``last.pt``/``best.pt`` are written to temporary files and renamed.

        A crash or a full disk mid-write then leaves the previous checkpoint intact instead of a truncated one.
        """
        final = {"last": self.last, "best": self.best}
        temporary = {k: p.with_name(f".{p.stem}.partial{p.suffix}") for k, p in final.items()}
        self.last, self.best = temporary["last"], temporary["best"]
        try:
            saved = super().save_model()
            for key, tmp in temporary.items():
                if tmp.exists():
                    os.replace(tmp, final[key])
        finally:
            self.last, self.best = final["last"], final["best"]
            for tmp in temporary.values():
                tmp.unlink(missing_ok=True)
        return saved


class NexpTrainer(KeepPruned, DetectionTrainer):
    """Fine-tune, and resume, a pruned detection model without losing its architecture.

    Examples:
        >>> from ultralytics import YOLO
        >>> from yolo_nexp import NexpTrainer
        >>> YOLO("pruned.pt").train(trainer=NexpTrainer, data="coco128.yaml", epochs=10)
    """


class NexpSegmentationTrainer(KeepPruned, SegmentationTrainer):
    """Fine-tune, and resume, a pruned segmentation model without losing its architecture."""


class NexpPoseTrainer(KeepPruned, PoseTrainer):
    """Fine-tune, and resume, a pruned pose model without losing its architecture."""


class NexpOBBTrainer(KeepPruned, OBBTrainer):
    """Fine-tune, and resume, a pruned oriented-box model without losing its architecture."""


TRAINERS = {"detect": NexpTrainer, "segment": NexpSegmentationTrainer, "pose": NexpPoseTrainer, "obb": NexpOBBTrainer}


def trainer_for(task: str) -> type:
    """The keep-pruned trainer class for an Ultralytics task (``YOLO(...).task``).

    Raises:
        ValueError: For a task without one (classify, semantic, depth...).
    """
    if task not in TRAINERS:
        raise ValueError(f"task: yolo-nexp fine-tunes {', '.join(TRAINERS)} models, not '{task}'.")
    return TRAINERS[task]
