"""The ``yolo-nexp prune`` job: validate the dense model, score, prune, validate, fine-tune, validate, report."""

from __future__ import annotations

import copy
import time
from pathlib import Path

from ultralytics import YOLO
from ultralytics.data.utils import check_det_dataset
from ultralytics.utils import LOGGER, SETTINGS
from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES, attempt_download_asset
from ultralytics.utils.files import increment_path

from yolo_nexp.arch.family import detection_model
from yolo_nexp.arch.fit import check_fits_data, dense_for_data, task_of
from yolo_nexp.checkpoints.loader import load
from yolo_nexp.checkpoints.safety import UnsafeCheckpointError, check_checkpoint
from yolo_nexp.coco import NOT_AVAILABLE, coco_metrics, find_annotations
from yolo_nexp.export import export
from yolo_nexp.latency.target import open_bench
from yolo_nexp.pruning.pruner import prune, prune_kwargs
from yolo_nexp.report import macs_and_params, plot_channels, save_json, stage_table
from yolo_nexp.scoring.sources import image_files
from yolo_nexp.synthetic import demo
from yolo_nexp.synthetic.dataset import SYNTHETIC_VERSION, make_dataset
from yolo_nexp.training.recovery import (
    check_recovery,
    curve_line,
    finetune,
    first_step,
    has_labels,
    recovery_report,
    schedule,
)
from yolo_nexp.utils import atomic_write, cache_dir, first_line
from yolo_nexp.validation import uncut_nms


def resolve_data(data, model=None, trust: bool = False) -> str:
    """The data yaml; ``synthetic`` (or nothing) generates the seeded offline dataset of ``model``'s task once."""
    if data in (None, "", "synthetic"):
        task = task_of(model, trust) if model is not None else "detect"
        name = f"synthetic-v{SYNTHETIC_VERSION}" if task == "detect" else f"synthetic-{task}-v{SYNTHETIC_VERSION}"
        return str(make_dataset(cache_dir() / name, n_train=128, n_val=32, imgsz=320, task=task))
    return str(data)


def run_dir(project, name: str) -> Path:
    """A new run folder, placed and incremented as Ultralytics does: ``<runs_dir>/prune/[project/]<name>[N]``."""
    project = Path(project or "")
    if not project.is_absolute():
        project = Path(SETTINGS["runs_dir"]) / "prune" / project
    return increment_path(project / name, exist_ok=False, mkdir=True).resolve()


def check_data(data: str) -> dict:
    """The parsed data yaml, or a one-line error naming what is wrong with it.

    Raises:
        ValueError: If the yaml is missing, empty or malformed, or a split it names holds no images.
    """
    try:
        info = check_det_dataset(data, autodownload=False)
    except Exception as e:  # Ultralytics raises FileNotFoundError, SyntaxError, KeyError... with multi-line text
        raise ValueError(f"data: {first_line(e)}") from None
    for split in ("train", "val"):
        try:
            found = image_files(info[split])
        except FileNotFoundError:
            found = []
        if not found:
            raise ValueError(f"data: the {split} split of '{data}' holds no images ({info[split]}).")
    return info


def check_model_file(model: str, trust: bool = False) -> Path:
    """The model's path, once a checkpoint's pickle is scanned (:mod:`yolo_nexp.checkpoints.safety`), before anything is written.

    An official asset name that is not a local file is downloaded by Ultralytics where a network is available.

    Raises:
        FileNotFoundError: If the checkpoint does not exist (and cannot be downloaded).
        ValueError: If it is not a readable checkpoint, refers to untrusted code, or is neither .pt nor .yaml.
    """
    path = Path(model)
    if path.suffix == ".pt":
        if not path.exists() and path.name in GITHUB_ASSETS_NAMES:
            try:
                path = Path(attempt_download_asset(path))
            except Exception as e:
                raise FileNotFoundError(
                    f"model: '{model}' is not a local file and could not be downloaded ({first_line(e)})."
                ) from None
        check_checkpoint(path, trust=trust)
    elif path.suffix not in (".yaml", ".yml"):
        raise ValueError(f"model: '{model}' is neither a .pt checkpoint nor a model .yaml.")
    return path


def load_model(path: Path, data: dict, trust: bool = False) -> YOLO:
    """A ``YOLO`` for a checkpoint (:func:`yolo_nexp.load`), or for a yaml built with the data's class count.

    Raises:
        ValueError: If it cannot be loaded, is refused (unless ``trust``), or its class count differs from the data's.
        TypeError: If it is not a detection-family model (detect, segment, pose, obb) of supported blocks.
    """
    model = str(path)
    try:
        yolo = load(path, trust=trust) if path.suffix == ".pt" else YOLO(model)
    except UnsafeCheckpointError:
        raise  # one line already, naming what was refused
    except Exception as e:
        raise ValueError(f"model: cannot load '{model}': {first_line(e)}") from None
    det = detection_model(yolo)  # refuses models outside the family
    if path.suffix != ".pt":  # the model's own class, with the data's classes and keypoints
        yolo.model = dense_for_data(det, data)
    hint = f"Train it on this data first (yolo train model={model} data=...), then prune the result."
    check_fits_data(yolo.model, data, f"model '{model}'", hint)  # classes, and a pose model's keypoint shape
    return yolo


def _validate(yolo: YOLO, overrides: dict, save_dir: Path, stage: str, coco: dict | None) -> dict:
    """mAP50 and mAP50-95 of ``yolo`` on the data's val split, with its MACs and params."""
    args = {k: v for k, v in overrides.items() if k not in ("model", "project", "name", "exist_ok", "plots", "epochs")}
    metrics = yolo.val(**args, project=str(save_dir), name=f"val-{stage}", exist_ok=True, plots=False, verbose=False)
    return _stage(yolo, overrides, metrics, coco)


def _stage(yolo: YOLO, overrides: dict, metrics, coco: dict | None) -> dict:
    """MACs, params and Ultralytics' mAP of one stage, and pycocotools' when ``coco`` (data, annotations) is given."""
    macs, params = macs_and_params(detection_model(yolo), overrides["imgsz"])
    stage = {"macs": macs, "params": params, "map50": float(metrics.box.map50), "map": float(metrics.box.map)}
    stage["fitness"] = float(metrics.fitness)  # what Ultralytics' trainer compares to pick best.pt
    for kind in ("seg", "pose"):  # the task's own mAP (masks, keypoints) next to the boxes'
        if hasattr(metrics, kind):
            task_metric = getattr(metrics, kind)
            stage[f"{kind}_map50"], stage[f"{kind}_map"] = float(task_metric.map50), float(task_metric.map)
    if coco:
        stage["coco"] = coco_metrics(yolo, coco["data"], coco["annotations"], overrides["imgsz"], overrides["batch"])
    return stage


def _default_name(model: str, plugin: dict) -> str:
    """``<model stem>-<criterion><ratio %>``, or ``...-macs<target %>`` / ``...-latency<target %>`` for those targets."""
    amount = f"macs{round(plugin['macs'] * 100)}" if plugin["macs"] is not None else round((plugin["ratio"] or 0) * 100)
    amount = f"latency{round(plugin['latency'] * 100)}" if plugin.get("latency") is not None else amount
    return f"{Path(model).stem}-{plugin['criterion']}{amount}"


def run_prune(plugin: dict, overrides: dict, command: str = "") -> dict:
    """Run the whole job with Ultralytics' NMS time limit lifted (:mod:`yolo_nexp.validation`); see :func:`_job`."""
    with uncut_nms() as cuts:
        return _job(plugin, overrides, command, cuts)


def _job(plugin: dict, overrides: dict, command: str, cuts) -> dict:
    """Run the whole job and return the report written to ``<save_dir>/report.json``.

    Args:
        plugin (dict): The plugin's arguments (see ``configs/default.yaml``).
        overrides (dict): Ultralytics arguments (model, data, epochs, imgsz, batch, device, project, name, ...); no
            model, or ``demo``: the demo model (:mod:`yolo_nexp.synthetic.demo`).
        command (str): The command line, recorded in the report.
        cuts (NmsCuts): Counts NMS runs cut short anyway (reported; none are expected).
    """
    t_start = time.perf_counter()
    overrides = demo.resolve(overrides, cache_dir())  # no model given: the demo model (trained once) and its settings
    overrides = {"imgsz": 640, "batch": 16, "seed": 0, **overrides}
    model_arg = str(overrides.pop("model"))
    model_path = check_model_file(model_arg, trust=plugin["trust"])
    overrides["data"] = resolve_data(overrides.get("data"), model_path, plugin["trust"])
    data = check_data(overrides["data"])
    yolo = load_model(model_path, data, trust=plugin["trust"])
    annotations = find_annotations(data, plugin["coco_json"])
    coco = {"data": data, "annotations": annotations} if annotations else None
    epochs, labels = overrides.get("epochs", 0), has_labels(data)
    check_recovery(plugin, epochs, labels)
    # Everything is checked: only now is anything written.
    save_dir = run_dir(overrides.pop("project", None), overrides.pop("name", None) or _default_name(model_arg, plugin))
    LOGGER.info(f"yolo-nexp: run folder {save_dir}")

    stages = {"dense": _validate(yolo, overrides, save_dir, "dense", coco)}
    source = overrides["data"] if plugin["source"] == "train" else plugin["source"]
    teacher = copy.deepcopy(detection_model(yolo)) if plugin["distill"] > 0 and epochs > 0 else None
    kw = first_step(prune_kwargs(plugin), plugin["steps"])
    bench, note = None, ""
    if kw.get("latency") is None:  # a latency target measures itself; any other job is timed here, before and after
        bench, note = open_bench(yolo, plugin["backend"], overrides["imgsz"], plugin["latency_batch"])
    report = prune(
        yolo, source=source, imgsz=overrides["imgsz"], batch=overrides["batch"], seed=overrides["seed"], **kw
    )
    if bench is not None:
        bench.fill(report, detection_model(yolo))
    report.latency_note = report.latency_note or note
    atomic_write(save_dir / "weights" / "pruned.pt", yolo.save)
    stages["pruned"] = _validate(yolo, overrides, save_dir, "pruned", coco)

    t_train, recovery = time.perf_counter(), None
    if epochs > 0:
        gradual = schedule(plugin, epochs) if plugin["steps"] > 1 else None
        floor = stages["pruned"]["fitness"]
        metrics, kept = finetune(yolo, overrides, save_dir, plugin, data, teacher, labels, gradual, floor=floor)
        # yolo now holds best.pt, validated by the trainer; or the pruned model, when no epoch beat it
        stages["finetuned"] = _stage(yolo, overrides, metrics, coco) if metrics is not None else dict(stages["pruned"])
        final = gradual.reports[-1].params_after if gradual and gradual.reports else stages["pruned"]["params"]
        if stages["finetuned"]["params"] != final:
            raise RuntimeError("fine-tuning changed the architecture: best.pt does not hold the pruned model.")
        features = bool(overrides.get("distill_model"))
        recovery = {**recovery_report(save_dir, plugin, labels, stages, gradual, features), "best": kept}
    seconds_train = time.perf_counter() - t_train

    result = {
        "command": command,
        "plugin": plugin,
        "ultralytics": {**overrides, "model": model_arg},
        "save_dir": str(save_dir),
        "stages": stages,
        "coco": str(annotations) if annotations else NOT_AVAILABLE,
        "macs_reduction": 1 - stages["pruned"]["macs"] / stages["dense"]["macs"],
        "params_reduction": 1 - stages["pruned"]["params"] / stages["dense"]["params"],
        "speedup": report.speedup,  # dense / pruned latency on the backend (None: not measured, see prune.latency_note)
        "prune": report.to_dict(),
        "recovery": recovery,
        "seconds": {
            "scoring": report.seconds_scoring,
            "sensitivity": report.seconds_sensitivity,
            "surgery": report.seconds_surgery,
            "finetuning": seconds_train,
            "total": time.perf_counter() - t_start,
        },
    }
    result["nms_cut"] = cuts.count
    if cuts.count:
        LOGGER.warning(f"yolo-nexp: NMS was cut short {cuts.count} times although its time limit was lifted")
    if plugin["export"]:
        final = save_dir / "weights" / ("best.pt" if "finetuned" in stages else "pruned.pt")
        images = image_files(data["val"])[:4]
        result["export"] = export(final, plugin["export"], overrides["imgsz"], images=images, trust=plugin["trust"])
    save_json(result, save_dir / "report.json")
    plot_channels(
        report.channels, save_dir / "channels.png", title=f"{Path(model_arg).stem}: {report.summary().split(':')[0]}"
    )
    curve = f"\n{curve_line(recovery)}" if recovery else ""
    speed = f"\n{report.latency_line()}" if report.latency_ms or report.latency_note else ""
    LOGGER.info(
        f"\n{stage_table(stages)}{speed}{curve}\n\nResults saved to {save_dir} (report.json, channels.png, weights/)"
    )
    return result


def run_export(plugin: dict, overrides: dict) -> dict:
    """``yolo-nexp export``: Ultralytics' exporter on a (pruned) checkpoint, then the ONNX parity check."""
    model = check_model_file(str(overrides.pop("model")), trust=plugin["trust"])
    if model.suffix != ".pt":
        raise ValueError(f"model: export needs a .pt checkpoint, got '{model}'.")
    detection_model(load(model, trust=plugin["trust"]))  # YOLOv8/YOLO11 detect, segment, pose or obb, or a clear error
    kwargs = {k: v for k, v in overrides.items() if k not in ("data", "epochs", "plots")}  # prune-mode defaults
    return export(model, trust=plugin["trust"], **{"format": "onnx", "imgsz": 640, **kwargs})
