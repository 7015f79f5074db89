"""Pruning inside an Ultralytics training run: mid-training, at initialisation, gradual, and across resume."""

import math

import pytest
from ultralytics import YOLO

import yolo_nexp
from yolo_nexp.training.callback import NexpPruneCallback

from .conftest import TINY_TRAIN, n_params


def _train(model, data, project, name, epochs, **kw):
    model.train(data=str(data), epochs=epochs, project=str(project), name=name, exist_ok=True, **TINY_TRAIN, **kw)
    return project / name / "weights"


def _record_losses(model) -> list[dict]:
    losses = []
    model.add_callback("on_train_epoch_end", lambda t: losses.append({k: float(v) for k, v in t.tloss.items()}))
    return losses


def test_prune_at_epoch_1_of_3(tiny_data, tmp_path):
    model = YOLO("yolov8n.yaml")
    cb = yolo_nexp.attach(model, ratio=0.5, epoch=1, batches=2, verbose=False)
    epochs_seen = []
    model.add_callback("on_train_epoch_end", lambda t: epochs_seen.append(n_params(t.model)))
    losses = _record_losses(model)
    weights = _train(model, tiny_data, tmp_path, "mid", epochs=3)

    (report,) = cb.reports
    assert report.params_after < 0.5 * report.params_before
    assert epochs_seen[0] == report.params_before  # epoch 0 trained the dense model
    assert epochs_seen[1:] == [report.params_after] * 2
    trainer = model.trainer
    assert n_params(trainer.model) == report.params_after
    assert n_params(trainer.ema.ema) == report.params_after
    for ckpt in ("best.pt", "last.pt"):
        assert n_params(weights / ckpt) == report.params_after, ckpt
    assert len(losses) == 3 and all(math.isfinite(v) for epoch in losses for v in epoch.values())


def test_pruning_at_initialisation(tiny_data, tmp_path):
    model = YOLO("yolov8n.yaml")
    cb = yolo_nexp.attach(model, ratio=0.5, epoch=0, batches=2, verbose=False)
    losses = _record_losses(model)
    weights = _train(model, tiny_data, tmp_path, "pai", epochs=2)
    (report,) = cb.reports
    assert n_params(weights / "last.pt") == report.params_after < report.params_before
    assert all(math.isfinite(v) for epoch in losses for v in epoch.values())


def test_gradual_pruning_reaches_ratio(tiny_data, tmp_path):
    model = YOLO("yolov8n.yaml")
    cb = yolo_nexp.attach(
        model, ratio=0.5, epoch=0, steps=2, batches=1, round_to=1, allocation="uniform", verbose=False
    )  # uniform: every layer's width shows the schedule
    _train(model, tiny_data, tmp_path, "steps", epochs=3)
    assert len(cb.reports) == 2
    first, second = cb.reports
    assert first.params_before > first.params_after > second.params_after
    widths = {name: (first.channels[name][0], after) for name, (_, after) in second.channels.items()}
    assert widths["model.7"] == (256, 128)  # half of the original channels after both steps


def test_attach_with_a_macs_target(tiny_data, tmp_path):
    model = YOLO("yolov8n.yaml")
    cb = yolo_nexp.attach(model, macs=0.3, epoch=0, batches=1, verbose=False)  # no ratio: the MACs target alone
    assert cb.target == {"macs": 0.3}
    _train(model, tiny_data, tmp_path, "macs", epochs=1)
    (report,) = cb.reports
    assert report.macs_target == pytest.approx(0.3)
    assert report.macs_reduction == pytest.approx(0.3, abs=0.02)  # within a step of the target


@pytest.mark.parametrize("ratio,steps", [(0.5, 1), (0.5, 2), (0.75, 3), (0.3, 4)])
def test_step_ratios_compound_to_ratio(ratio, steps):
    cb = NexpPruneCallback(ratio=ratio, steps=steps)
    kept = math.prod(1 - cb.step_ratio(s) for s in range(1, steps + 1))
    assert kept == pytest.approx(1 - ratio)


class Interrupted(Exception):
    """Stands in for a crash or Ctrl-C after the epoch-1 checkpoint was written."""


def test_resume_keeps_pruned_model_and_does_not_prune_again(tiny_data, tmp_path):
    model = YOLO("yolov8n.yaml")
    cb = yolo_nexp.attach(model, ratio=0.5, epoch=1, batches=2, verbose=False)

    def interrupt(trainer):
        if trainer.epoch == 1:
            raise Interrupted

    model.add_callback("on_fit_epoch_end", interrupt)
    with pytest.raises(Interrupted):
        _train(model, tiny_data, tmp_path, "resume", epochs=3)
    pruned = cb.reports[0].params_after
    last = tmp_path / "resume" / "weights" / "last.pt"
    assert n_params(last) == pruned

    resumed = YOLO(last)
    cb2 = yolo_nexp.attach(resumed, ratio=0.5, epoch=1, batches=2, verbose=False)
    epochs_run = []
    resumed.add_callback("on_train_epoch_start", lambda t: epochs_run.append(t.epoch))
    resumed.train(resume=True)
    assert epochs_run == [2]  # went on after the interrupted epoch
    assert cb2.reports == []  # the pruning of epoch 1 is in the checkpoint, not done twice
    assert n_params(resumed.trainer.model) == pruned
    assert n_params(last) == pruned
