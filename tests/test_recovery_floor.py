"""Recovery never hands back a model worse than the pruned one it started from."""

from pathlib import Path

import yolo_nexp
from yolo_nexp.job import check_data, load_model
from yolo_nexp.training.recovery import finetune

from .conftest import IMGSZ, n_params


def _pruned(tiny_data, save_dir: Path):
    data = check_data(tiny_data)
    yolo = load_model(Path("yolov8n.yaml"), data)
    yolo_nexp.prune(yolo, ratio=0.3, source=tiny_data, imgsz=IMGSZ, batch=4, batches=1, verbose=False)
    (save_dir / "weights").mkdir(parents=True)
    yolo.save(save_dir / "weights" / "pruned.pt")
    return yolo, data


def _finetune(tiny_data, save_dir: Path, floor):
    yolo, data = _pruned(tiny_data, save_dir)
    args = dict(data=tiny_data, epochs=1, imgsz=IMGSZ, batch=4, workers=0, plots=False)
    return (yolo, *finetune(yolo, args, save_dir, {"distill": 0.0, "steps": 1}, data, floor=floor))


def test_best_pt_is_the_pruned_model_when_no_epoch_beats_it(tiny_data, tmp_path):
    yolo, metrics, kept = _finetune(tiny_data, tmp_path / "run", floor=2.0)  # fitness is at most 1: unbeatable
    weights = tmp_path / "run" / "weights"
    assert (metrics, kept) == (None, "pruned")
    assert (weights / "best.pt").read_bytes() == (weights / "pruned.pt").read_bytes()
    assert n_params(yolo.model) == n_params(weights / "pruned.pt")


def test_without_a_floor_the_epoch_becomes_best(tiny_data, tmp_path):
    _, metrics, kept = _finetune(tiny_data, tmp_path / "run", floor=None)
    weights = tmp_path / "run" / "weights"
    assert metrics is not None and kept == "epoch 1"
    assert (weights / "best.pt").read_bytes() != (weights / "pruned.pt").read_bytes()


def _rect_of_validation(tiny_data, save_dir: Path, **extra) -> bool:
    yolo, data = _pruned(tiny_data, save_dir)
    seen = {}
    yolo.add_callback("on_train_start", lambda trainer: seen.update(rect=trainer.test_loader.dataset.rect))
    args = dict(data=tiny_data, epochs=1, imgsz=IMGSZ, batch=4, workers=0, plots=False, **extra)
    finetune(yolo, args, save_dir, {"distill": 0.0, "steps": 1}, data, floor=None)
    return seen["rect"]


def test_epoch_validation_follows_rect(tiny_data, tmp_path):
    # The stock trainer validates on rectangular batches whatever rect says; the job's own validations of the
    # dense and pruned models use model.val(rect=...), so with rect=False the floor would compare two protocols.
    assert _rect_of_validation(tiny_data, tmp_path / "a") is True
    assert _rect_of_validation(tiny_data, tmp_path / "b", rect=False) is False
