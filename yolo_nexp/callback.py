"""Pruning inside an existing Ultralytics training run: two lines in a training script.

    model = YOLO("yolov8n.yaml")
    yolo_nexp.attach(model, ratio=0.5, epoch=0)   # epoch 0: pruning at initialisation
    model.train(data="coco128.yaml", epochs=100)

At the start of epoch ``epoch`` (and of the ``steps - 1`` following ones, for gradual pruning) the
callback scores on batches of ``trainer.train_loader``, prunes ``trainer.model`` in place, and
rebuilds what holds parameters (EMA, optimizer with Ultralytics' parameter groups, LR scheduler at
the current epoch). Checkpoints written afterwards hold the pruned model. On ``resume=True`` the
pruned model comes from the checkpoint, and pruning steps of epochs already done are not repeated.
"""

from __future__ import annotations

import math
from functools import partial

from ultralytics.utils import LOGGER
from ultralytics.utils.torch_utils import EarlyStopping, ModelEMA, unwrap_model

from .pruner import DEFAULT_CRITERION, prune
from .report import PruneReport
from .trainer import NexpTrainer, keep_pruned_get_model


class NexpPruneCallback:
    """Ultralytics callbacks that prune a model during training.

    Args:
        ratio (float): Fraction of each prunable group's original channels removed in the end.
        epoch (int): Epoch at whose start pruning begins (0 = before any training).
        steps (int): Number of pruning steps, one per epoch from ``epoch`` on, reaching ``ratio`` at the last.
        **prune_kwargs: Passed to :func:`yolo_nexp.prune` (criterion, batches, round_to, alpha, ...).

    Attributes:
        reports (list[PruneReport]): One report per pruning step done in this process.
    """

    def __init__(self, ratio: float = 0.5, epoch: int = 0, steps: int = 1, **prune_kwargs):
        """Check the schedule; nothing happens until training starts."""
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {ratio!r}.")
        if epoch < 0 or steps < 1:
            raise ValueError(f"epoch must be >= 0 and steps >= 1, got epoch={epoch}, steps={steps}.")
        self.ratio, self.epoch, self.steps, self.prune_kwargs = ratio, epoch, steps, prune_kwargs
        self.reports: list[PruneReport] = []

    def step_ratio(self, step: int) -> float:
        """Fraction of the *current* channels to remove at ``step`` (1-based) so the total after it is ``ratio * step / steps``."""
        before, after = self.ratio * (step - 1) / self.steps, self.ratio * step / self.steps
        return 1.0 - (1.0 - after) / (1.0 - before)

    def on_pretrain_routine_start(self, trainer) -> None:
        """Make the trainer keep a pruned model (from a resumed checkpoint) instead of rebuilding it from yaml."""
        if not isinstance(trainer, NexpTrainer):
            trainer.get_model = partial(keep_pruned_get_model, trainer, trainer.get_model)

    def on_train_epoch_start(self, trainer) -> None:
        """Prune if this epoch is one of the schedule's."""
        step = trainer.epoch - self.epoch + 1
        if not 1 <= step <= self.steps:
            return
        model = unwrap_model(trainer.model)
        report = prune(
            model,
            ratio=self.step_ratio(step),
            source=trainer.train_loader,
            imgsz=trainer.args.imgsz,
            seed=trainer.args.seed,
            **self.prune_kwargs,
        )
        self.reports.append(report)
        LOGGER.info(f"yolo-nexp: pruning step {step}/{self.steps} at epoch {trainer.epoch}: {report.summary()}")
        rebuild_training_state(trainer)

    def register(self, model) -> NexpPruneCallback:
        """Add these callbacks to an Ultralytics ``YOLO`` object; returns ``self``."""
        model.add_callback("on_pretrain_routine_start", self.on_pretrain_routine_start)
        model.add_callback("on_train_epoch_start", self.on_train_epoch_start)
        return self


def rebuild_training_state(trainer) -> None:
    """After pruning inside training: new EMA, optimizer, scheduler (at the current epoch) and best-fitness tracking.

    The old ones hold tensors of the dense shapes. The AMP scaler keeps no per-parameter state, so it is kept.
    """
    updates = trainer.ema.updates if trainer.ema else 0
    trainer.ema = ModelEMA(trainer.model, updates=updates)
    decay = next(
        (g["weight_decay"] for g in trainer.optimizer.param_groups if g.get("param_group") in {"weight", "muon"}),
        trainer.args.weight_decay,
    )
    iterations = (
        math.ceil(len(trainer.train_loader.dataset) / max(trainer.batch_size, trainer.args.nbs)) * trainer.epochs
    )
    trainer.optimizer = trainer.build_optimizer(
        model=trainer.model,
        name=trainer.args.optimizer,
        lr=trainer.args.lr0,
        momentum=trainer.args.momentum,
        decay=decay,
        iterations=iterations,
    )
    trainer._setup_scheduler()
    trainer.scheduler.last_epoch = trainer.epoch - 1  # the training loop steps it to this epoch next
    # Fitness before pruning belongs to another architecture: best.pt must come from the pruned model.
    trainer.best_fitness = None
    trainer.stopper = EarlyStopping(patience=trainer.args.patience)


def attach(
    model,
    ratio: float = 0.5,
    epoch: int = 0,
    criterion: str = DEFAULT_CRITERION,
    batches: int = 4,
    steps: int = 1,
    **prune_kwargs,
) -> NexpPruneCallback:
    """Register pruning on an Ultralytics ``YOLO`` object; its next ``model.train(...)`` prunes during training.

    Args:
        model (ultralytics.YOLO): The model whose training should prune.
        ratio (float): Fraction of every prunable group's channels removed in the end, in [0, 1).
        epoch (int): Epoch at whose start to prune; 0 prunes at initialisation, before any training.
        criterion (str): Importance criterion (see :func:`yolo_nexp.prune`).
        batches (int): Training-loader batches used to score NEXP.
        steps (int): Prune gradually over this many epochs, starting at ``epoch``.
        **prune_kwargs: Further :func:`yolo_nexp.prune` arguments (round_to, alpha, repair, allocation, bn_recal, verbose).

    Returns:
        (NexpPruneCallback): The registered callback (its ``reports`` fill in as pruning happens).

    Examples:
        >>> model = YOLO("yolov8n.yaml")
        >>> yolo_nexp.attach(model, ratio=0.5, epoch=1)
        >>> model.train(data="coco128.yaml", epochs=10)
    """
    return NexpPruneCallback(ratio, epoch, steps, criterion=criterion, batches=batches, **prune_kwargs).register(model)
