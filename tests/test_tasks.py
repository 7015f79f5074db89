"""Segmentation, pose and OBB end to end: exact synthetic labels, prune, fine-tune with the task's trainer, export."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from ultralytics import YOLO
from ultralytics.models.yolo.obb import OBBTrainer
from ultralytics.models.yolo.pose import PoseTrainer
from ultralytics.models.yolo.segment import SegmentationTrainer
from ultralytics.nn.tasks import PoseModel

import yolo_nexp
from yolo_nexp.cli import entrypoint
from yolo_nexp.export import export, onnx_parity
from yolo_nexp.job import resolve_data
from yolo_nexp.testing import informative
from yolo_nexp.training.trainers import KeepPruned, trainer_for

from .conftest import IMGSZ, TINY_TRAIN, n_params, prune_report

RUNS = {"segment": "yolov8n-seg.yaml", "pose": "yolo11n-pose.yaml", "obb": "yolov8n-obb.yaml"}
TASK_DIFFS = {"segment": ("mask_coefficients", "prototypes"), "pose": ("keypoints_rel",), "obb": ("angles",)}


def _labelled(data: Path):
    """(image, label rows) of every training image of a synthetic dataset."""
    for image in sorted((data.parent / "images" / "train").glob("*.png")):
        rows = (data.parent / "labels" / "train" / f"{image.stem}.txt").read_text().split("\n")
        yield cv2.imread(str(image)), [np.array(r.split(), float) for r in rows if r]


def _fill(polygon: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(polygon * size).astype(np.int32)], 1)
    return mask.astype(bool)


def _ring(mask: np.ndarray) -> np.ndarray:
    """The pixels just outside a mask."""
    return cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~mask


def test_segment_labels_are_the_drawn_masks(task_data):
    """Inside each labelled polygon every pixel has the object's colour, and no pixel just outside has it."""
    count = 0
    for img, rows in _labelled(task_data("segment")):
        for row in rows:
            mask = _fill(row[1:].reshape(-1, 2), img.shape[0])
            colours = np.unique(img[mask], axis=0)
            assert len(colours) == 1  # the label covers drawn pixels only
            assert not (img[_ring(mask)] == colours[0]).all(1).any()  # and all of them
            count += 1
    assert count >= 8


def test_pose_keypoints_are_the_box_corners(task_data):
    data = yaml.safe_load(task_data("pose").read_text())
    assert data["kpt_shape"] == [4, 3] and data["flip_idx"] == [1, 0, 3, 2]
    for _, rows in _labelled(task_data("pose")):
        for row in rows:
            cx, cy, w, h = row[1:5]
            corners = [
                (cx - w / 2, cy - h / 2),
                (cx + w / 2, cy - h / 2),
                (cx + w / 2, cy + h / 2),
                (cx - w / 2, cy + h / 2),
            ]
            np.testing.assert_allclose(row[5:].reshape(4, 3), [(x, y, 2) for x, y in corners], atol=2e-6)
            assert (row[1:] >= 0).all() and (row[5:].reshape(4, 3)[:, :2] <= 1).all()


def test_rotated_boxes_hold_their_shape(task_data):
    """Each rotated box is a rectangle, and every pixel of its object's colour lies within a pixel of it."""
    angles = []
    for img, rows in _labelled(task_data("obb")):
        size = img.shape[0]
        for row in rows:
            corners = row[1:].reshape(4, 2) * size
            sides = np.roll(corners, -1, 0) - corners
            assert np.allclose((sides * np.roll(sides, -1, 0)).sum(1), 0, atol=1e-2 * size)  # right angles
            angles.append(np.degrees(np.arctan2(sides[0, 1], sides[0, 0])) % 90)
            box = _fill(corners / size, size)
            colours, counts = np.unique(img[box], axis=0, return_counts=True)
            colour = colours[counts.argmax()]  # the object: noisy background pixels rarely repeat
            assert counts.max() >= 4
            drawn = (img == colour).all(2)
            assert not (drawn & ~cv2.dilate(box.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)).any()
    assert np.ptp(angles) > 20  # drawn at many angles, not all axis-aligned


def test_default_data_follows_the_models_task(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_NEXP_CACHE", str(tmp_path))
    assert Path(resolve_data(None)).parent.name == "synthetic-v1"  # detection data, as before
    pose = yaml.safe_load(Path(resolve_data(None, "yolov8n-pose.yaml")).read_text())
    assert pose["kpt_shape"] == [4, 3]
    checkpoint = tmp_path / "best.pt"  # the task comes from the checkpoint, not from its name
    YOLO("yolov8n-obb.yaml").save(checkpoint)
    obb = Path(resolve_data("synthetic", checkpoint))
    label = next((obb.parent / "labels" / "train").glob("*.txt")).read_text().split("\n")[0]
    assert obb.parent.name == "synthetic-obb-v1" and len(label.split()) == 9


@pytest.fixture(scope="module")
def runs(task_data, tmp_path_factory):
    """``runs(task)``: the report of ``yolo-nexp prune`` with one epoch of fine-tuning and ONNX export, made once."""
    done = {}

    def run(task: str) -> dict:
        if task not in done:
            project = tmp_path_factory.mktemp(f"runs-{task}")
            done[task] = prune_report(task_data(task), project, task, f"model={RUNS[task]}", "epochs=1", "export=onnx")
        return done[task]

    return run


@pytest.mark.parametrize("task", RUNS)
def test_prune_finetune_and_export_each_task(task, runs):
    report = runs(task)
    stages = report["stages"]
    assert stages["finetuned"]["params"] == stages["pruned"]["params"] < stages["dense"]["params"]
    assert stages["pruned"]["macs"] < stages["dense"]["macs"]
    if task in ("segment", "pose"):
        kind = {"segment": "seg", "pose": "pose"}[task]
        assert {f"{kind}_map50", f"{kind}_map"} <= set(stages["finetuned"])
    best = Path(report["save_dir"]) / "weights" / "best.pt"
    assert n_params(best) == stages["pruned"]["params"] and YOLO(best).task == task  # stock Ultralytics reads it
    parity = report["export"]["parity"]  # detections of a one-epoch model may all tie; compared below instead
    assert parity["raw_ok"] and set(TASK_DIFFS[task]) <= set(parity["raw_max_abs_diff"])


@pytest.fixture(scope="module")
def pruned_pt(tmp_path_factory):
    """``pruned_pt(task)``: a pruned model with input-dependent outputs (no ties for NMS to break), saved once."""
    done = {}

    def make(task: str) -> Path:
        if task not in done:
            torch.manual_seed(0)
            model = informative(YOLO(RUNS[task]))
            yolo_nexp.prune(model, ratio=0.5, imgsz=IMGSZ, batches=1, batch=2, passes=1, verbose=False)
            done[task] = tmp_path_factory.mktemp(f"pt-{task}") / "pruned.pt"
            model.save(done[task])
        return done[task]

    return make


@pytest.mark.parametrize("task", RUNS)
def test_onnx_parity_for_each_task(task, pruned_pt, task_data):
    images = sorted((task_data(task).parent / "images" / "val").glob("*.png"))
    parity = export(pruned_pt(task), format="onnx", imgsz=IMGSZ, images=images)["parity"]
    assert parity["raw_ok"] and parity["detections_match"] and parity["detections"] >= len(images)
    assert max(parity["raw_max_abs_diff"][k] for k in TASK_DIFFS[task]) <= 1e-4


@pytest.mark.parametrize("task", RUNS)
def test_onnx_parity_sees_a_wrong_task_output(task, pruned_pt, tmp_path):
    """An ONNX file whose only difference is in the task's own output (mask prototypes, keypoints, angles) fails."""
    onnx_file = YOLO(pruned_pt(task)).export(format="onnx", imgsz=IMGSZ)
    other = YOLO(pruned_pt(task))
    head = other.model.model[-1]
    with torch.no_grad():
        (head.proto.cv3.conv if task == "segment" else head.cv4[0][-1]).weight.mul_(1.5)
    other.save(tmp_path / "other.pt")
    raw = onnx_parity(tmp_path / "other.pt", onnx_file, imgsz=IMGSZ)["raw_max_abs_diff"]
    assert raw[TASK_DIFFS[task][-1]] > 1e-3 and raw["scores"] <= 1e-4
    assert (raw["boxes_rel"] <= 1e-4) == (task != "obb")  # an OBB box's corners are decoded with its angle


def test_stock_yolo_cli_validates_and_predicts_a_pruned_task_model(runs, task_data, tmp_path):
    best = Path(runs("segment")["save_dir"]) / "weights" / "best.pt"
    yolo = str(Path(sys.executable).with_name("yolo"))
    images = task_data("segment").parent / "images" / "val"
    for args in (
        ["val", f"model={best}", f"data={task_data('segment')}", f"imgsz={IMGSZ}", "batch=4", "plots=False"],
        ["predict", f"model={best}", f"source={images}", f"imgsz={IMGSZ}", f"project={tmp_path}", "save=False"],
    ):
        out = subprocess.run([yolo, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
        assert "yolo_nexp" not in out.stdout + out.stderr


def test_callback_prunes_inside_a_task_training(task_data, tmp_path):
    model = YOLO("yolov8n-pose.yaml")
    callback = yolo_nexp.attach(model, ratio=0.5, epoch=0, batches=1, verbose=False)
    model.train(data=str(task_data("pose")), epochs=1, project=str(tmp_path), name="cb", **TINY_TRAIN)
    (report,) = callback.reports
    assert n_params(tmp_path / "cb" / "weights" / "last.pt") == report.params_after < report.params_before


def test_pose_checkpoint_with_other_keypoints_is_refused(task_data, tmp_path, caplog):
    model = YOLO("yolov8n-pose.yaml")
    model.model = PoseModel(model.model.yaml, nc=3, verbose=False)  # the data's classes, but 17 keypoints
    model.save(tmp_path / "pose17.pt")
    argv = ["prune", f"model={tmp_path / 'pose17.pt'}", f"data={task_data('pose')}", f"imgsz={IMGSZ}"]
    assert entrypoint([*argv, f"project={tmp_path / 'runs'}"]) == 2
    assert "keypoints of shape [17, 3]" in caplog.text and not (tmp_path / "runs").exists()


def test_each_task_has_its_keep_pruned_trainer():
    for task, stock in (("segment", SegmentationTrainer), ("pose", PoseTrainer), ("obb", OBBTrainer)):
        assert issubclass(trainer_for(task), stock) and issubclass(trainer_for(task), KeepPruned)
    assert trainer_for("detect") is yolo_nexp.NexpTrainer
    with pytest.raises(ValueError, match="classify"):
        trainer_for("classify")
