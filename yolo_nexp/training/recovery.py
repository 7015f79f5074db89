"""Recovery after pruning in the ``yolo-nexp prune`` job: fine-tune (distilling from the dense model unless
``distill=0``), optionally pruning gradually within the same epoch budget, and the recovery curve.

Gradual pruning (``steps=n``) uses the training callback's schedule (:class:`~yolo_nexp.training.callback.NexpPruneCallback`):
the job prunes step 1 before training, and the callback prunes steps 2 to n at the start of every
``epochs // n``-th epoch, each step removing an equal share of the target.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import yaml
from ultralytics import YOLO
from ultralytics.data.utils import img2label_paths
from ultralytics.utils import LOGGER

from yolo_nexp.checkpoints.loader import load
from yolo_nexp.pruning.allocation import step_fraction
from yolo_nexp.pruning.pruner import DEFAULT_RATIO, prune_kwargs
from yolo_nexp.scoring.sources import image_files
from yolo_nexp.training.callback import NexpPruneCallback
from yolo_nexp.training.distill import save_teacher
from yolo_nexp.training.trainers import trainer_for
from yolo_nexp.utils import atomic_write


def method_name(distill: float, steps: int, labels: bool, features: bool = False) -> str:
    """How the model recovers, in words, for reports; ``features``: Ultralytics' ``distill_model=`` also runs."""
    how = (
        "fine-tuning"
        if distill <= 0
        else "distillation"
        if labels
        else "distillation from the teacher alone (no labels)"
    )
    if features:  # Ultralytics' neck-feature distillation, beside or instead of our logit distillation
        how = ("" if distill <= 0 else f"{how} (logits) + ") + "Ultralytics' feature distillation (distill_model)"
    return how + (f", pruned gradually in {steps} steps" if steps > 1 else "")


def has_labels(data: dict) -> bool:
    """Whether any training image of an Ultralytics data dict has a non-empty label file."""
    labels = map(Path, img2label_paths([str(image) for image in image_files(data["train"])]))
    return any(label.is_file() and label.stat().st_size > 0 for label in labels)


def check_recovery(plugin: dict, epochs: int, labels: bool) -> None:
    """Refuse, before anything is written, a recovery that cannot work.

    Raises:
        ValueError: For bad ``distill``/``steps`` values, or fine-tuning on data without labels and without a teacher.
    """
    distill, steps = plugin["distill"], plugin["steps"]
    if not (isinstance(distill, (int, float)) and not isinstance(distill, bool) and distill >= 0):
        raise ValueError(f"distill must be a number >= 0 (0 turns distillation off); got {distill!r}.")
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
        raise ValueError(f"steps must be a whole number >= 1; got {steps!r}.")
    if steps > 1 and steps > epochs:
        raise ValueError(f"steps={steps} needs at least as many epochs of recovery (epochs={epochs}).")
    if epochs > 0 and not labels and distill <= 0:
        raise ValueError("data: the train split has no labels; recover from the dense model alone with distill > 0.")


def first_step(kwargs: dict, steps: int) -> dict:
    """:func:`yolo_nexp.prune` arguments for the job's own (first) step of a gradual schedule."""
    if steps <= 1:
        return kwargs
    if kwargs.get("latency") is not None:  # the fraction of the latency kept, compounding as a cut does
        return {**kwargs, "latency": 1.0 - step_fraction(1.0 - kwargs["latency"], 1, steps)}
    key = "macs" if kwargs.get("macs") is not None else "ratio"
    return {**kwargs, key: step_fraction(DEFAULT_RATIO if kwargs.get(key) is None else kwargs[key], 1, steps)}


def recovery_report(save_dir: Path, plugin: dict, labels: bool, stages: dict, gradual=None, features=False) -> dict:
    """What recovered the model and how (per epoch), for report.json; also draws ``recovery.png``."""
    curve = recovery_curve(save_dir)
    method = method_name(plugin["distill"], plugin["steps"], labels, features)
    steps = [r.to_dict() for r in gradual.reports] if gradual else []
    if curve:
        title = f"recovery: {method}"
        plot_recovery(curve, stages["dense"]["map"], stages["pruned"]["map"], save_dir / "recovery.png", title)
    return {"method": method, "distill": plugin["distill"], "labels": labels, "curve": curve, "later_steps": steps}


def curve_line(recovery: dict) -> str:
    """One line of the printed summary: mAP50-95 per epoch of recovery."""
    points = ", ".join(f"{c['epoch']}: {c['map']:.4f}" for c in recovery["curve"]) or "not validated per epoch"
    best = recovery.get("best", "")
    kept = "the pruned model (no epoch beat it)" if best == "pruned" else best
    return f"recovery ({recovery['method']}), mAP50-95 per epoch: {points}" + (f"; best.pt: {kept}" if best else "")


def unlabelled_train_split(data: dict, save_dir: Path) -> str:
    """A data yaml in the run folder whose train split links the data's images beside empty label files.

    Ultralytics refuses to train on a split with no label files at all; empty ones (background images) it
    accepts, and with ``labels=False`` the task loss is not used anyway. The user's files are not touched.
    """
    root = save_dir / "unlabelled"
    for i, image in enumerate(image_files(data["train"])):
        link = root / "images" / "train" / f"{i:06d}{image.suffix}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(image).resolve())
        label = root / "labels" / "train" / f"{i:06d}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.touch()
    spec = {"path": str(root), "train": "images/train", "val": str(data["val"]), "names": data["names"]}
    spec.update({k: data[k] for k in ("kpt_shape", "flip_idx") if k in data})
    (root / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(root / "data.yaml")


def every(epochs: int, steps: int) -> int:
    """Epochs between two gradual pruning steps, so that all ``steps`` fall within ``epochs``."""
    return max(1, epochs // steps)


def schedule(plugin: dict, epochs: int) -> NexpPruneCallback:
    """The gradual-pruning schedule of the job (step 1 is pruned by the job itself, before training).

    Every later step prunes as the first did: same target, criterion, allocation, repair, rounding.
    """
    kwargs = prune_kwargs(plugin)
    return NexpPruneCallback(**kwargs, steps=plugin["steps"], every=every(epochs, plugin["steps"]), first_step=2)


def _floor_best_fitness(floor: float):
    """A callback making ``floor`` the fitness an epoch must beat to be saved as ``best.pt``."""

    def set_floor(trainer) -> None:
        trainer.best_fitness = max(trainer.best_fitness or 0.0, floor)

    return set_floor


def _square_validation(trainer) -> None:
    trainer.square_val = True


def finetune(
    yolo: YOLO,
    overrides: dict,
    save_dir: Path,
    plugin: dict,
    data: dict,
    teacher=None,
    labels=True,
    gradual=None,
    floor: float | None = None,
):
    """Fine-tune with the task's keep-pruned trainer in ``save_dir``; on Ctrl-C, leave a ``weights/last.pt`` that loads.

    With ``floor`` (the pruned model's fitness) an epoch becomes ``best.pt`` only if it validates better than the
    pruned model did; if none does, ``best.pt`` is the pruned model, and ``yolo`` holds it again.

    Args:
        yolo (YOLO): The pruned model.
        overrides (dict): Ultralytics training arguments.
        save_dir (Path): The run folder.
        plugin (dict): The plugin's arguments (``distill``).
        data (dict): The checked data yaml's contents.
        teacher (nn.Module | None): The dense model; with ``distill > 0`` it is written to the run folder first.
        labels (bool): Whether the data has labels (without, the model recovers from the teacher alone).
        gradual (NexpPruneCallback | None): Further pruning steps during training.
        floor (float | None): Ultralytics' fitness of the pruned model's validation (``metrics.fitness``); ignored
            with gradual steps, whose later steps change the model.

    Returns:
        (tuple): The trainer's final metrics, or None when no epoch beat the pruned model; and ``"epoch N"`` or
            ``"pruned"``, which model ``best.pt`` holds.
    """
    weights = save_dir / "weights"
    if plugin["distill"] > 0 and teacher is not None:
        save_teacher(teacher, weights, plugin["distill"], labels=labels)
    if not labels:
        overrides = {**overrides, "data": unlabelled_train_split(data, save_dir)}
    if gradual is not None:
        gradual.register(yolo)
    elif floor is not None:
        yolo.add_callback("on_pretrain_routine_end", _floor_best_fitness(floor))
    best = {}

    def note_best(trainer) -> None:  # final_eval calls this once more, at epoch ``epochs``: not an epoch
        if trainer.epoch < trainer.epochs and trainer.fitness == trainer.best_fitness:
            best["epoch"] = trainer.epoch + 1

    yolo.add_callback("on_fit_epoch_end", note_best)
    if overrides.get("rect") is False:  # the job validated dense and pruned on square inputs: so must the trainer
        yolo.add_callback("on_pretrain_routine_start", _square_validation)
    try:
        metrics = yolo.train(
            trainer=trainer_for(yolo.task), **overrides, project=str(save_dir.parent), name=save_dir.name, exist_ok=True
        )
    except KeyboardInterrupt:
        if not (weights / "last.pt").exists():
            atomic_write(weights / "last.pt", lambda tmp: shutil.copyfile(weights / "pruned.pt", tmp))
        LOGGER.warning(f"yolo-nexp: interrupted; {weights / 'last.pt'} holds the pruned model.")
        raise
    if (weights / "best.pt").is_file():
        return metrics, f"epoch {best.get('epoch', '?')}"
    atomic_write(weights / "best.pt", lambda tmp: shutil.copyfile(weights / "pruned.pt", tmp))
    LOGGER.warning("yolo-nexp: no epoch of recovery beat the pruned model; best.pt holds the pruned model.")
    yolo.model = load(weights / "best.pt").model
    return None, "pruned"


def recovery_curve(save_dir: Path) -> list[dict]:
    """Per epoch: mAP50 and mAP50-95 (boxes) from Ultralytics' ``results.csv`` in the run folder."""
    path = save_dir / "results.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(f)]
    return [
        {"epoch": int(float(r["epoch"])), "map50": float(r["metrics/mAP50(B)"]), "map": float(r["metrics/mAP50-95(B)"])}
        for r in rows
        if r.get("metrics/mAP50-95(B)") not in (None, "")
    ]


def plot_recovery(curve: list[dict], dense: float, pruned: float, path: Path, title: str) -> Path:
    """mAP50-95 per epoch of recovery against the dense and the just-pruned model, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), tight_layout=True)
    ax.plot([0] + [c["epoch"] for c in curve], [pruned] + [c["map"] for c in curve], marker=".", label="pruned model")
    ax.axhline(dense, color="#888888", linestyle="--", label="dense model")
    ax.set_xlabel("epoch of recovery")
    ax.set_ylabel("mAP50-95")
    ax.set_title(title)
    ax.legend()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
