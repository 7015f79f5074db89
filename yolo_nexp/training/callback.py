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

from yolo_nexp.pruning.allocation import step_fraction
from yolo_nexp.pruning.pruner import DEFAULT_CRITERION, DEFAULT_RATIO, PLUGIN_KEYS, check_prune_args, prune
from yolo_nexp.report import PruneReport
from yolo_nexp.training import distill
from yolo_nexp.training.trainers import KeepPruned, keep_pruned_get_model


class NexpPruneCallback:
    """Ultralytics callbacks that prune a model during training (the one gradual-pruning schedule of the plugin).

    Args:
        ratio (float | None): Fraction of the channels removed in the end (see :func:`yolo_nexp.prune`);
            :data:`~yolo_nexp.pruning.pruner.DEFAULT_RATIO` when neither ``ratio`` nor ``macs`` is given.
        epoch (int): Epoch at whose start pruning begins (0 = before any training).
        steps (int): Number of pruning steps, reaching the target at the last.
        every (int): Epochs between two steps.
        macs (float | None): Instead of ``ratio``: the fraction of the MACs removed in the end.
        latency (float | None): Instead of ``ratio`` or ``macs``: the fraction of the measured latency kept in the end
            (each step keeps its compounding share of it, measured against the model as that step found it).
        first_step (int): Steps before this one were done elsewhere (the ``yolo-nexp prune`` job prunes step 1).
        distill (float | None): Weight of distillation from the model as it was before the first step (0: off;
            None: on, weight 1, when the model was trained, i.e. pruning after epoch 0 or from a ``.pt``).
        **prune_kwargs: Passed to :func:`yolo_nexp.prune` (criterion, batches, round_to, allocation, ...).

    Attributes:
        reports (list[PruneReport]): One report per pruning step done in this process.
    """

    def __init__(
        self, ratio=None, epoch=0, steps=1, every=1, macs=None, first_step=1, distill=0.0, latency=None, **prune_kwargs
    ):  # fmt: skip
        """Check the schedule; nothing happens until training starts."""
        ratio = DEFAULT_RATIO if ratio is None and macs is None and latency is None else ratio
        check_prune_args(ratio, macs, latency=latency, **{k: v for k, v in prune_kwargs.items() if k in PLUGIN_KEYS})
        if epoch < 0 or steps < 1 or every < 1:
            raise ValueError(
                f"epoch must be >= 0, steps and every >= 1; got epoch={epoch}, steps={steps}, every={every}."
            )
        self.target = (
            {"macs": macs} if macs is not None else {"latency": latency} if latency is not None else {"ratio": ratio}
        )
        self.epoch, self.steps, self.every, self.first_step, self.distill = epoch, steps, every, first_step, distill
        self.prune_kwargs = prune_kwargs
        self.reports: list[PruneReport] = []

    @property
    def ratio(self) -> float | None:
        """The channel ratio reached at the last step (None for a MACs target)."""
        return self.target.get("ratio")

    def step_ratio(self, step: int) -> float:
        """Fraction of the *current* channels (or MACs) to remove at ``step`` (1-based); for a latency target, the
        fraction of the current latency to keep."""
        ((key, total),) = self.target.items()
        if key == "latency":
            return 1.0 - step_fraction(1.0 - total, step, self.steps)
        return step_fraction(total, step, self.steps)

    def step_at(self, epoch: int) -> int | None:
        """The step (1-based) done at the start of ``epoch``, or None."""
        k, rest = divmod(epoch - self.epoch, self.every)
        return k + 1 if rest == 0 and self.first_step - 1 <= k < self.steps else None

    def on_pretrain_routine_start(self, trainer) -> None:
        """Make a stock trainer keep a pruned model (from a resumed checkpoint) and find a teacher in its run folder."""
        if not isinstance(trainer, KeepPruned):
            trainer.get_model = partial(keep_pruned_get_model, trainer, trainer.get_model)
            trainer.add_callback("on_train_start", distill.install)

    def check_single_process(self, trainer) -> None:
        """Refuse a schedule with steps still to do in a multi-GPU (DDP) run, in every worker, before any epoch.

        Raises:
            RuntimeError: If ``trainer.world_size > 1`` and a pruning step falls in an epoch still to train.
        """
        if trainer.world_size > 1 and any(self.step_at(e) for e in range(trainer.start_epoch, trainer.epochs)):
            # Each DDP worker holds its own copy of this callback (Ultralytics pickles the callbacks for it): each
            # would score its own share of the data, prune its own copy of the model to different channels, and
            # replace parameters that DistributedDataParallel has already registered for gradient averaging.
            raise RuntimeError(
                "yolo-nexp: pruning during training runs in a single process; with several GPUs (DDP) each worker "
                "would prune its own copy differently. Prune first (yolo_nexp.prune, or yolo-nexp prune with "
                "steps=1), then fine-tune on several GPUs with trainer=NexpTrainer."
            )

    def on_train_epoch_start(self, trainer) -> None:
        """Prune if this epoch is one of the schedule's; before the first, keep the model as the teacher."""
        step = self.step_at(trainer.epoch)
        if step is None:
            return
        model = unwrap_model(trainer.model)
        weight = (
            self.distill
            if self.distill is not None
            else float(self.epoch > 0 or str(trainer.args.model).endswith(".pt"))
        )
        if weight > 0 and not (trainer.wdir / distill.TEACHER_FILE).exists():
            distill.save_teacher(model, trainer.wdir, weight)
            distill.install(trainer)
        ((key, _),) = self.target.items()
        kw = {"ratio": None, "macs": None, "latency": None, key: self.step_ratio(step)}
        report = prune(
            model,
            source=trainer.train_loader,
            imgsz=trainer.args.imgsz,
            seed=trainer.args.seed,
            **kw,
            **self.prune_kwargs,
        )
        self.reports.append(report)
        LOGGER.info(f"yolo-nexp: pruning step {step}/{self.steps} at epoch {trainer.epoch}: {report.summary()}")
        rebuild_training_state(trainer)

    def register(self, model) -> NexpPruneCallback:
        """Add these callbacks to an Ultralytics ``YOLO`` object; returns ``self``."""
        model.add_callback("on_pretrain_routine_start", self.on_pretrain_routine_start)
        model.add_callback("on_train_start", self.check_single_process)
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
    ratio: float | None = None,
    epoch: int = 0,
    criterion: str = DEFAULT_CRITERION,
    batches: int = 4,
    steps: int = 1,
    every: int = 1,
    distill: float | None = None,
    **prune_kwargs,
) -> NexpPruneCallback:
    """Register pruning on an Ultralytics ``YOLO`` object; its next ``model.train(...)`` prunes during training.

    Args:
        model (ultralytics.YOLO): The model whose training should prune.
        ratio (float | None): Fraction of the channels removed in the end, in [0, 1): from every prunable group
            with ``allocation="uniform"``, of all prunable channels together with the other allocations.
            :data:`~yolo_nexp.pruning.pruner.DEFAULT_RATIO` (0.5) when neither ``ratio`` nor ``macs`` is given.
        epoch (int): Epoch at whose start to prune; 0 prunes at initialisation, before any training.
        criterion (str): Importance criterion (see :func:`yolo_nexp.prune`).
        batches (int): Training-loader batches used to score NEXP.
        steps (int): Prune gradually in this many steps, starting at ``epoch``.
        every (int): Epochs between two steps.
        distill (float | None): Distil from the model as it was before pruning with this weight (0: off); by
            default on when the model was trained (pruning after epoch 0, or a ``.pt``), off for pruning at init.
        **prune_kwargs: Further :func:`yolo_nexp.prune` arguments: ``macs`` (instead of ``ratio``, the fraction
            of MACs removed in the end), ``latency`` (instead of both, the fraction of the measured latency kept),
            backend, latency_batch, round_to, alpha, repair, allocation, bn_recal, verbose.

    Returns:
        (NexpPruneCallback): The registered callback (its ``reports`` fill in as pruning happens).

    Examples:
        >>> model = YOLO("yolov8n.yaml")
        >>> yolo_nexp.attach(model, ratio=0.5, epoch=1)
        >>> model.train(data="coco128.yaml", epochs=10)
    """
    return NexpPruneCallback(
        ratio, epoch, steps, every, criterion=criterion, batches=batches, distill=distill, **prune_kwargs
    ).register(model)
