"""The ``yolo-nexp prune`` job: validate the dense model, score, prune, validate, fine-tune, validate, report."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ultralytics import YOLO
from ultralytics.data.utils import check_det_dataset
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import LOGGER, SETTINGS
from ultralytics.utils.files import increment_path

from .graph import detection_model
from .pruner import prune
from .report import atomic_write, macs_and_params, plot_channels, save_json, stage_table
from .synthetic import make_dataset
from .trainer import NexpTrainer

SYNTHETIC_VERSION = 1  # bump when the generator changes, so caches are rebuilt


def cache_dir() -> Path:
    """Where generated data is cached: ``$YOLO_NEXP_CACHE`` or ``~/.cache/yolo-nexp``."""
    return Path(os.environ.get("YOLO_NEXP_CACHE", Path.home() / ".cache" / "yolo-nexp"))


def resolve_data(data) -> str:
    """The data yaml to use; ``synthetic`` (or nothing) generates the seeded offline dataset once and reuses it."""
    if data in (None, "", "synthetic"):
        return str(make_dataset(cache_dir() / f"synthetic-v{SYNTHETIC_VERSION}", n_train=128, n_val=32, imgsz=320))
    return str(data)


def run_dir(project, name: str) -> Path:
    """A new run folder, placed and incremented as Ultralytics does: ``<runs_dir>/prune/[project/]<name>[N]``."""
    project = Path(project or "")
    if not project.is_absolute():
        project = Path(SETTINGS["runs_dir"]) / "prune" / project
    return increment_path(project / name, exist_ok=False, mkdir=True).resolve()


def load_model(model: str, data: dict) -> YOLO:
    """A ``YOLO`` for a checkpoint, or for a yaml built with the data's class count (as Ultralytics' trainer does).

    Raises:
        ValueError: If a checkpoint's class count differs from the data's.
    """
    yolo = YOLO(model)
    det = detection_model(yolo)
    if str(model).endswith((".yaml", ".yml")):
        yolo.model = DetectionModel(det.yaml, nc=data["nc"], verbose=False)
        yolo.model.names = data["names"]
    elif det.nc != data["nc"]:
        raise ValueError(
            f"data: model '{model}' predicts {det.nc} classes but the data has {data['nc']}; "
            f"train it on this data first (yolo train model={model} data=...), then prune the result."
        )
    return yolo


def _validate(yolo: YOLO, overrides: dict, save_dir: Path, stage: str) -> dict:
    """mAP50 and mAP50-95 of ``yolo`` on the data's val split, with its MACs and params."""
    args = {k: v for k, v in overrides.items() if k not in ("model", "project", "name", "exist_ok", "plots", "epochs")}
    metrics = yolo.val(**args, project=str(save_dir), name=f"val-{stage}", exist_ok=True, plots=False, verbose=False)
    return _stage(yolo, overrides["imgsz"], metrics)


def _stage(yolo: YOLO, imgsz: int, metrics) -> dict:
    macs, params = macs_and_params(detection_model(yolo), imgsz)
    return {"macs": macs, "params": params, "map50": float(metrics.box.map50), "map": float(metrics.box.map)}


def run_prune(plugin: dict, overrides: dict, command: str = "") -> dict:
    """Run the whole job and return the report written to ``<save_dir>/report.json``.

    Args:
        plugin (dict): The plugin's arguments (see ``configs/default.yaml``).
        overrides (dict): Ultralytics arguments (data, epochs, imgsz, batch, device, project, name, ...).
        command (str): The command line, recorded in the report.
    """
    t_start = time.perf_counter()
    overrides = {"imgsz": 640, "batch": 16, "seed": 0, **overrides}
    overrides["data"] = resolve_data(overrides.get("data"))
    data = check_det_dataset(overrides["data"], autodownload=False)
    model_arg = str(overrides.pop("model"))
    yolo = load_model(model_arg, data)
    name = overrides.pop("name", None) or f"{Path(model_arg).stem}-{plugin['criterion']}{round(plugin['ratio'] * 100)}"
    save_dir = run_dir(overrides.pop("project", None), name)
    LOGGER.info(f"yolo-nexp: run folder {save_dir}")

    stages = {"dense": _validate(yolo, overrides, save_dir, "dense")}
    source = overrides["data"] if plugin["source"] == "train" else plugin["source"]
    report = prune(
        yolo,
        ratio=plugin["ratio"],
        criterion=plugin["criterion"],
        source=source,
        batches=plugin["batches"],
        imgsz=overrides["imgsz"],
        batch=overrides["batch"],
        round_to=plugin["round_to"],
        alpha=plugin["alpha"],
        global_pruning=plugin["global_pruning"],
        seed=overrides["seed"],
    )
    atomic_write(save_dir / "weights" / "pruned.pt", yolo.save)
    stages["pruned"] = _validate(yolo, overrides, save_dir, "pruned")

    t_train = time.perf_counter()
    if overrides.get("epochs", 0) > 0:
        metrics = yolo.train(trainer=NexpTrainer, **overrides, project=str(save_dir.parent), name=save_dir.name, exist_ok=True)
        stages["finetuned"] = _stage(yolo, overrides["imgsz"], metrics)  # yolo now holds best.pt, validated by the trainer
        if stages["finetuned"]["params"] != stages["pruned"]["params"]:
            raise RuntimeError("fine-tuning changed the architecture: best.pt does not hold the pruned model.")
    seconds_train = time.perf_counter() - t_train

    result = {
        "command": command,
        "plugin": plugin,
        "ultralytics": {**overrides, "model": model_arg},
        "save_dir": str(save_dir),
        "stages": stages,
        "macs_reduction": 1 - stages["pruned"]["macs"] / stages["dense"]["macs"],
        "params_reduction": 1 - stages["pruned"]["params"] / stages["dense"]["params"],
        "prune": report.to_dict(),
        "seconds": {
            "scoring": report.seconds_scoring,
            "pruning": report.seconds_pruning,
            "finetuning": seconds_train,
            "total": time.perf_counter() - t_start,
        },
    }
    save_json(result, save_dir / "report.json")
    plot_channels(report.channels, save_dir / "channels.png", title=f"{Path(model_arg).stem}: {report.summary().split(':')[0]}")
    LOGGER.info(f"\n{stage_table(stages)}\n\nResults saved to {save_dir} (report.json, channels.png, weights/)")
    return result
