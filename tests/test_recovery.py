"""Recovery: distillation from the dense model, gradual pruning in the CLI, data-free recovery, the recovery report."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from ultralytics import YOLO
from ultralytics.utils import DEFAULT_CFG

import yolo_nexp
from yolo_nexp.cli import entrypoint
from yolo_nexp.pruning.allocation import step_fraction
from yolo_nexp.training.callback import NexpPruneCallback
from yolo_nexp.training.distill import TEACHER_FILE, DistillationLoss, kd_loss

from .conftest import IMGSZ, TINY_PRUNE, n_params


def _preds(seed: int, nc: int = 3, anchors: int = 20, reg_max: int = 16) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "scores": torch.randn(2, nc, anchors, generator=gen),
        "boxes": torch.randn(2, 4 * reg_max, anchors, generator=gen),
    }


def test_kd_loss_is_zero_for_the_teacher_itself_and_positive_otherwise():
    teacher = _preds(0)
    assert kd_loss(teacher, teacher, 16).abs() < 1e-5
    assert kd_loss(_preds(1), teacher, 16) > 0.1


def test_step_fraction_compounds_to_the_target():
    for total, steps in [(0.5, 2), (0.46, 3), (0.7, 4)]:
        left = 1.0
        for step in range(1, steps + 1):
            left *= 1 - step_fraction(total, step, steps)
        assert left == pytest.approx(1 - total)


def test_gradual_schedule_steps_every_k_epochs():
    cb = NexpPruneCallback(macs=0.46, steps=3, every=2, first_step=2)
    assert [cb.step_at(e) for e in range(7)] == [None, None, 2, None, 3, None, None]  # step 1 is the job's


def _prune(data, project, name, *args):
    argv = ["prune", "model=yolov8n.yaml", f"data={data}", *TINY_PRUNE, *args, f"project={project}", f"name={name}"]
    assert entrypoint(argv) == 0
    return project / name, json.loads((project / name / "report.json").read_text())


def test_distillation_with_gradual_pruning_end_to_end(tiny_data, tmp_path):
    args = ("macs=0.4", "epochs=2", "steps=2", "distill=1.0", "criterion=l2", "allocation=global")
    run, report = _prune(tiny_data, tmp_path, "kd", *args)
    rec = report["recovery"]
    assert rec["method"] == "distillation, pruned gradually in 2 steps" and rec["labels"] is True
    assert [c["epoch"] for c in rec["curve"]] == [1, 2] and (run / "recovery.png").stat().st_size > 1000
    (second,) = rec["later_steps"]  # the callback's step 2, at epoch 1
    assert (second["criterion"], second["allocation"]) == ("l2", "global")  # pruned as the job's first step was
    assert second["params_after"] < report["stages"]["pruned"]["params"]  # pruned further during recovery
    assert report["stages"]["finetuned"]["params"] == second["params_after"]
    assert report["stages"]["finetuned"]["macs"] / report["stages"]["dense"]["macs"] == pytest.approx(0.6, abs=0.02)
    teacher = YOLO(run / "weights" / TEACHER_FILE)  # the dense model, an ordinary checkpoint
    assert n_params(teacher) == report["stages"]["dense"]["params"]
    results = (run / "results.csv").read_text().splitlines()[0]
    assert "train/kd" in results  # the distillation term was trained on
    for ckpt in ("best.pt", "last.pt"):  # no teacher inside, and stock Ultralytics loads them in a fresh process
        code = f"from ultralytics import YOLO; m = YOLO(r'{run / 'weights' / ckpt}'); print(sum(p.numel() for p in m.parameters()))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert int(out.split()[-1]) == second["params_after"], ckpt


def test_a_trainer_in_the_run_folder_finds_the_teacher(tiny_data, tmp_path):
    """Resume and DDP workers build a trainer on the same run folder: the teacher must come from there."""
    run, _ = _prune(tiny_data, tmp_path, "res", "ratio=0.3", "epochs=1", "distill=0.5")
    model = YOLO(run / "weights" / "pruned.pt")
    criteria = []
    model.add_callback("on_train_epoch_end", lambda t: criteria.append(t.model.criterion))
    model.train(
        trainer=yolo_nexp.NexpTrainer, data=str(tiny_data), epochs=1, project=str(tmp_path), name="res",
        exist_ok=True, imgsz=IMGSZ, batch=4, workers=0, plots=False,
    )  # fmt: skip
    (criterion,) = criteria
    assert isinstance(criterion, DistillationLoss) and criterion.weight == 0.5  # the teacher file's weight


def test_data_without_labels_recovers_from_the_teacher_alone(tiny_data, tmp_path):
    data = tmp_path / "unlabelled"
    shutil.copytree(tiny_data.parent, data)
    shutil.rmtree(data / "labels" / "train")
    (data / "labels" / "train").mkdir()
    yaml = data / tiny_data.name
    yaml.write_text(tiny_data.read_text().replace(str(tiny_data.parent.resolve()), str(data)))
    _, report = _prune(yaml, tmp_path, "free", "ratio=0.3", "epochs=1")
    assert report["recovery"]["labels"] is False and "teacher alone" in report["recovery"]["method"]
    assert entrypoint(["prune", f"data={yaml}", *TINY_PRUNE, "epochs=1", "distill=0", f"project={tmp_path}"]) == 2


def test_distillation_loss_adds_kd_to_the_task_loss():
    model = YOLO("yolov8n.yaml").model
    model.args = DEFAULT_CFG  # the loss gains, as the trainer sets them
    teacher = YOLO("yolov8n.yaml").model.eval()
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    batch = {
        "img": x,
        "batch_idx": torch.zeros(1),
        "cls": torch.zeros(1, 1),
        "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]),
    }
    model.train()
    preds = model(x)
    plain, _ = model.init_criterion()(preds, batch)
    loss, items = DistillationLoss(model.init_criterion(), teacher, 2.0, True, model.model[-1].reg_max)(preds, batch)
    assert "kd" in items and items["kd"] > 0
    assert loss.shape == (len(plain) + 1,)  # the task's terms, then the KD: Ultralytics' distillation appends to it
    assert float(loss.sum()) == pytest.approx(float(plain.sum() + 2.0 * items["kd"] * 2), rel=1e-4)  # kd per image


def test_both_distillations_train_together_and_the_report_names_them(tiny_data, tmp_path):
    """Ours (logits, distill=) on the student inside Ultralytics' feature distillation (distill_model=)."""
    teacher = tmp_path / "dense.pt"
    YOLO("yolov8n.yaml").save(teacher)
    run, report = _prune(tiny_data, tmp_path, "both", "ratio=0.3", "epochs=1", "distill=1", f"distill_model={teacher}")
    assert report["recovery"]["method"] == "distillation (logits) + Ultralytics' feature distillation (distill_model)"
    columns = (run / "results.csv").read_text().splitlines()[0]
    assert "train/kd" in columns and "train/dis_loss" in columns  # both terms were trained on
    assert n_params(YOLO(run / "weights" / "best.pt")) == report["stages"]["pruned"]["params"]  # the student only
