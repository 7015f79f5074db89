"""Recovery by knowledge distillation from the dense model (the teacher) while a pruned model fine-tunes.

The teacher lives in the run folder as ``weights/teacher.pt`` (an ordinary Ultralytics checkpoint with
the distillation weight beside the model), so every process that trains in that folder finds it: the
first run, ``resume=True`` and Ultralytics' DDP workers. :func:`install` puts :class:`DistillationLoss`
in place of the model's criterion when training starts; it is a plain object, not an ``nn.Module``,
so the teacher never enters the model's state dict, the EMA or a saved ``best.pt``/``last.pt``.

Under DDP (``device=0,1``) each worker runs :func:`install` itself at ``on_train_start``, after Ultralytics has
moved its model to ``cuda:LOCAL_RANK`` and wrapped it in ``DistributedDataParallel``: it reads the file from the
shared run folder and puts its own frozen copy of the teacher on that GPU, outside what DDP synchronises. The
folder survives the launch because :meth:`~yolo_nexp.training.trainers.KeepPruned.train` keeps Ultralytics'
launcher from deleting it (README, "Multi-GPU (DDP) recovery").

Loss = the task's own loss + ``weight`` x (class KD + box KD), per anchor of the same input:

- class KD: binary KL divergence from the teacher's class probabilities to the student's, summed over
  classes and anchors (a student that fires where the teacher does not pays as much as a missed object);
- box KD: KL divergence between the teacher's and the student's DFL distributions of every box side,
  weighted by the teacher's confidence at that anchor;

both divided by the teacher's summed confidence, so that the scale does not depend on the image size.
With ``labels=False`` only the KD terms train (data-free recovery from images without labels).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.utils import LOGGER, RANK
from ultralytics.utils.torch_utils import unwrap_model

from yolo_nexp.utils import atomic_write

TEACHER_FILE = "teacher.pt"


def save_teacher(model: nn.Module, weights_dir: Path, weight: float, labels: bool = True) -> Path:
    """Write the teacher (a copy of ``model``, half precision as Ultralytics saves) to ``weights_dir``.

    A model that has trained carries its loss object (``criterion``); it stays out of the copy, so the file
    holds only what a stock checkpoint holds (and loads through the safe loader).
    """
    model = unwrap_model(model)
    criterion = model.__dict__.pop("criterion", None)
    try:
        teacher = copy.deepcopy(model).half().eval()
    finally:
        if criterion is not None:
            model.criterion = criterion
    for p in teacher.parameters():
        p.requires_grad_(False)
    ckpt = {"model": teacher, "distill": float(weight), "labels": bool(labels)}
    return atomic_write(Path(weights_dir) / TEACHER_FILE, lambda tmp: torch.save(ckpt, tmp))


def load_teacher(path: Path) -> tuple[nn.Module, float, bool]:
    """The teacher model (float, eval, frozen), its distillation weight and whether labels are used."""
    from yolo_nexp.checkpoints.loader import read_checkpoint

    ckpt = read_checkpoint(path, arg="teacher")
    teacher = ckpt["model"].float().eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, float(ckpt.get("distill", 1.0)), bool(ckpt.get("labels", True))


def _raw(preds) -> dict:
    """The raw prediction dict of a Detect-family head (training output, or the second item in eval)."""
    preds = preds[1] if isinstance(preds, (tuple, list)) else preds
    return preds.get("one2many", preds)


def kd_loss(student: dict, teacher: dict, reg_max: int) -> torch.Tensor:
    """Class and box distillation on the same anchors (see the module docstring); a scalar per image."""
    s_cls, t_cls = student["scores"].float(), teacher["scores"].float()  # (B, nc, A) logits
    t_prob = t_cls.sigmoid()
    conf = t_prob.max(1).values  # (B, A)
    norm = conf.sum().clamp(min=1.0)
    cls = (F.binary_cross_entropy_with_logits(s_cls, t_prob, reduction="none")
           - F.binary_cross_entropy_with_logits(t_cls, t_prob, reduction="none")).sum() / norm  # fmt: skip
    b, _, a = student["boxes"].shape
    s_box = student["boxes"].float().view(b, 4, reg_max, a).log_softmax(2)
    t_box = teacher["boxes"].float().view(b, 4, reg_max, a).log_softmax(2)
    box = ((t_box.exp() * (t_box - s_box)).sum(2).sum(1) * conf).sum() / norm
    return (cls + box) * b  # times the batch size, as Ultralytics scales its losses


class DistillationLoss:
    """Wraps a task criterion: ``criterion(preds, batch)`` plus ``weight`` x KD from ``teacher`` on ``batch["img"]``.

    Args:
        criterion: The model's own criterion (``model.init_criterion()``).
        teacher (nn.Module): The dense model, frozen, in eval mode, on the student's device.
        weight (float): Weight of the KD terms.
        labels (bool): Whether the task loss is used; False distils from the teacher alone.
        reg_max (int): DFL bins per box side of the head.
    """

    def __init__(self, criterion, teacher: nn.Module, weight: float, labels: bool, reg_max: int):
        """Keep the pieces; nothing is registered on the student."""
        self.criterion, self.teacher, self.weight, self.labels, self.reg_max = (
            criterion,
            teacher,
            weight,
            labels,
            reg_max,
        )

    def __call__(self, preds, batch: dict):
        """Task loss terms (zeroed if ``labels`` is False) and the weighted KD after them, with ``kd`` among the items."""
        loss, items = self.criterion(preds, batch)
        if not self.labels:
            loss, items = loss * 0.0, {k: v * 0.0 for k, v in items.items()}
        with torch.no_grad():
            teacher = _raw(self.teacher(batch["img"].to(next(self.teacher.parameters()).dtype)))
        kd = kd_loss(_raw(preds), teacher, self.reg_max)
        # a vector like the task loss's: the trainer sums it, Ultralytics' DistillationModel appends its own term
        total = torch.cat([loss.reshape(-1), (self.weight * kd).reshape(1)])
        return total, {**items, "kd": kd.detach() / max(len(batch["img"]), 1)}


def install(trainer) -> bool:
    """If the run folder holds a teacher, make the trainer's model distil from it; returns whether it did."""
    path = Path(trainer.wdir) / TEACHER_FILE
    if not path.is_file():
        return False
    model = unwrap_model(trainer.model)
    # with Ultralytics' own distillation (distill_model=) the trainer's model wraps the student, whose loss it calls
    model = getattr(model, "student_model", model)
    if isinstance(getattr(model, "criterion", None), DistillationLoss):
        return True  # installed already (by the trainer and by a callback)
    teacher, weight, labels = load_teacher(path)
    teacher.to(next(model.parameters()).device)
    model.criterion = DistillationLoss(model.init_criterion(), teacher, weight, labels, model.model[-1].reg_max)
    if RANK in {-1, 0}:
        LOGGER.info(f"yolo-nexp: distilling from {path} (weight {weight:g}{', no labels' if not labels else ''})")
    return True
