"""Multi-GPU (DDP) recovery: a trainer built the way Ultralytics' DDP workers build it distils from the right teacher.

Ultralytics launches multi-GPU training from ``BaseTrainer.train``: ``generate_ddp_command`` deletes the run folder
unless resuming and calls ``generate_ddp_file``, which pickles the trainer class, ``vars(trainer.args)``, the model
and the callbacks and writes a script that rebuilds the trainer from them (``cls(cfg, overrides=args,
_callbacks=callbacks)``, ``trainer.model = model``) and trains; then it starts one process per GPU on that script.
The test goes through that code itself, called on a CPU trainer: ``YOLO.train`` builds the trainer, a callback marks
it ``ddp`` as ``device=0,1`` would, Ultralytics' own ``generate_ddp_command`` and ``generate_ddp_file`` write the
worker's files. The one stand-in is the launcher: the generated script runs as one plain process (world size 1, CPU)
instead of under ``torch.distributed.run``. Ultralytics installs cloudpickle on the first multi-GPU launch; where it
is not installed, the standard pickle stands in for it (everything pickled here is importable by name).
"""

import copy
import json
import pickle
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import checks
from ultralytics.utils.loss import v8DetectionLoss

import yolo_nexp
from yolo_nexp.job import check_data, load_model
from yolo_nexp.training.callback import NexpPruneCallback
from yolo_nexp.training.distill import DistillationLoss, save_teacher

from .conftest import IMGSZ, TINY_TRAIN

REPORT = "worker.json"  # what the worker process saw, written into its run folder


def widths(model: nn.Module) -> list[int]:
    """Output channels of every convolution, in order: the architecture, pruned or not."""
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def checksum(model: nn.Module) -> float:
    """Sum of squares of all parameters in float64: tells two models' weights apart."""
    return sum(float(p.detach().double().square().sum()) for p in model.parameters())


def _as_ddp_parent(trainer) -> None:
    """Make the trainer what ``device=0,1`` makes it: ``ddp``, without the integration callbacks, without this one.

    A DDP parent neither adds the integration callbacks nor runs this event (``BaseTrainer.__init__``); the worker
    adds its own. Removing this callback keeps the worker from marking itself.
    """
    trainer.ddp = True
    for event, callbacks in trainer.callbacks.items():
        trainer.callbacks[event] = [c for c in callbacks if c is not _as_ddp_parent and not _integration(c)]


def _integration(callback) -> bool:
    module = getattr(callback, "__module__", "") or ""
    return module.startswith("ultralytics.utils.callbacks.") and module != "ultralytics.utils.callbacks.base"


def _report_worker(trainer) -> None:
    """In the worker, after its first batch: what it trains, with which loss, from which teacher (once)."""
    path = Path(trainer.save_dir) / REPORT
    if path.exists():
        return
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    loss = getattr(model, "criterion", None)
    teacher = getattr(loss, "teacher", None)
    facts = {
        "trainer": f"{type(trainer).__module__}.{type(trainer).__qualname__}",
        "widths": widths(model),
        "loss": type(loss).__name__,
        "criterion": type(getattr(loss, "criterion", None)).__name__,
        "loss_names": list(trainer.loss_names),
        "weight": getattr(loss, "weight", None),
        "teacher_widths": widths(teacher) if teacher is not None else None,
        "teacher_checksum": checksum(teacher) if teacher is not None else None,
        "devices": [str(next(m.parameters()).device) for m in (model, teacher) if m is not None],
    }
    path.write_text(json.dumps(facts))


def _one_process_launch(monkeypatch) -> None:
    """Ultralytics' DDP launch with its own files, its script run as one plain process instead of one per GPU."""
    import ultralytics.engine.trainer as engine

    real = engine.generate_ddp_command
    try:
        import cloudpickle  # noqa: F401
    except ImportError:  # Ultralytics would pip-install it here; its files are what is under test, not the pickler
        monkeypatch.setattr(checks, "check_requirements", lambda *args, **kwargs: True)
        monkeypatch.setitem(sys.modules, "cloudpickle", pickle)

    def launch(trainer):
        cmd, file = real(trainer)
        assert cmd[1:3] == ["-m", "torch.distributed.run"] and cmd[-1] == file  # what one process stands in for
        return [sys.executable, file], file

    monkeypatch.setattr(engine, "generate_ddp_command", launch)


@pytest.fixture(scope="module")
def pruned(tiny_data):
    """The job's yolov8n for the tiny data (3 classes), a dense copy of it, and it pruned by half.

    Pruned the cheapest way (magnitudes, one pass, no repair): what is under test is the path to the worker.
    """
    yolo = load_model(Path("yolov8n.yaml"), check_data(str(tiny_data)))
    dense = copy.deepcopy(yolo.model)
    kw = dict(criterion="l1", allocation="uniform", repair="none", passes=1)
    yolo_nexp.prune(yolo, ratio=0.5, imgsz=IMGSZ, batch=4, verbose=False, **kw)
    return yolo, dense


def _train_as_ddp(yolo, data, run: Path, monkeypatch) -> dict:
    """``yolo.train(trainer=NexpTrainer)`` in ``run`` through Ultralytics' DDP launch; the worker's report."""
    _one_process_launch(monkeypatch)
    yolo.add_callback("on_pretrain_routine_start", _as_ddp_parent)
    yolo.add_callback("on_train_batch_end", _report_worker)
    yolo.train(
        trainer=yolo_nexp.NexpTrainer, data=str(data), epochs=1, device="cpu", project=str(run.parent),
        name=run.name, exist_ok=True, val=False, **TINY_TRAIN,
    )  # fmt: skip
    parent = yolo.trainer
    assert type(parent).__name__ == "NexpTrainer" and parent.ddp and not hasattr(parent, "train_loader")  # launched
    return json.loads((run / REPORT).read_text())


def test_a_ddp_worker_trains_the_pruned_model_with_the_run_folders_teacher(pruned, tiny_data, tmp_path, monkeypatch):
    yolo, dense = pruned
    yolo = copy.deepcopy(yolo)
    run = tmp_path / "ddp"
    save_teacher(dense, run / "weights", weight=0.5)  # as the job does before training
    (run / "weights" / "pruned.pt").write_bytes(b"the job's")  # must survive the launch
    pruned_widths = widths(yolo.model)
    assert pruned_widths != widths(dense)

    seen = _train_as_ddp(yolo, tiny_data, run, monkeypatch)

    assert seen["trainer"] == "yolo_nexp.training.trainers.NexpTrainer"  # the generated file found our class
    assert seen["widths"] == pruned_widths  # trained the pruned model, not one rebuilt from the yaml
    assert (seen["loss"], seen["criterion"]) == (DistillationLoss.__name__, v8DetectionLoss.__name__)
    assert "kd" in seen["loss_names"] and seen["weight"] == 0.5  # the term trained, with the file's weight
    assert seen["teacher_widths"] == widths(dense)
    assert seen["teacher_checksum"] == pytest.approx(checksum(dense.half().float()), rel=1e-9)  # saved in half
    assert len(set(seen["devices"])) == 1  # the teacher sits on the worker's device
    assert (run / "weights" / "pruned.pt").read_bytes() == b"the job's"  # the launch kept the run folder
    best = torch.load(run / "weights" / "best.pt", map_location="cpu", weights_only=False)["model"]
    assert isinstance(best, DetectionModel) and widths(best) == pruned_widths  # the worker saved the pruned model


def test_a_ddp_worker_with_another_teacher_in_its_run_folder_reports_that_one(pruned, tiny_data, tmp_path, monkeypatch):
    """The check above can fail: a different teacher file is the one the worker loads, and it is told apart."""
    yolo, dense = pruned
    other = copy.deepcopy(dense)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    run = tmp_path / "other"
    save_teacher(other, run / "weights", weight=2.0)
    seen = _train_as_ddp(copy.deepcopy(yolo), tiny_data, run, monkeypatch)
    assert seen["teacher_checksum"] == pytest.approx(checksum(other.half().float()), rel=1e-9) and seen["weight"] == 2.0
    assert seen["teacher_checksum"] != pytest.approx(checksum(dense.half().float()), rel=1e-3)


def test_pruning_during_training_is_refused_under_ddp():
    cb = NexpPruneCallback(ratio=0.5, epoch=1, steps=2)
    events = {}
    cb.register(SimpleNamespace(add_callback=lambda event, f: events.setdefault(event, []).append(f)))
    assert cb.check_single_process in events["on_train_start"]  # an event every DDP worker runs, on every rank
    with pytest.raises(RuntimeError, match="single process"):
        cb.check_single_process(SimpleNamespace(world_size=2, start_epoch=0, epochs=3))
    cb.check_single_process(SimpleNamespace(world_size=0, start_epoch=0, epochs=3))  # CPU: one process
    cb.check_single_process(SimpleNamespace(world_size=1, start_epoch=0, epochs=3))  # one GPU
    cb.check_single_process(SimpleNamespace(world_size=2, start_epoch=3, epochs=5))  # resumed after the last step
