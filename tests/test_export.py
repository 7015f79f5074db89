"""Export of pruned checkpoints to ONNX through Ultralytics, and the ONNX-vs-PyTorch parity check."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from ultralytics import YOLO

import yolo_nexp
from yolo_nexp.cli import entrypoint
from yolo_nexp.export import export, onnx_parity
from yolo_nexp.testing import informative

from .conftest import IMGSZ, prune_report


@pytest.fixture(scope="module")
def pruned_pt(tmp_path_factory):
    torch.manual_seed(0)  # a fixed model: the detection comparison must not depend on the draw
    model = informative(YOLO("yolov8n.yaml"))
    yolo_nexp.prune(model, ratio=0.5, imgsz=IMGSZ, batches=1, batch=2, verbose=False)
    path = tmp_path_factory.mktemp("export") / "pruned.pt"
    model.save(path)
    return path


def test_ultralytics_cli_exports_pruned_checkpoint(pruned_pt):
    yolo = Path(sys.executable).with_name("yolo")
    out = subprocess.run(
        [str(yolo), "export", f"model={pruned_pt}", "format=onnx", f"imgsz={IMGSZ}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=pruned_pt.parent,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    graph = onnx.load(str(pruned_pt.with_suffix(".onnx"))).graph
    weights = {i.name: i for i in graph.initializer}
    assert sum(int(np.prod(w.dims)) for w in weights.values()) < 0.5 * 3.1e6  # the pruned size, not the dense one
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 3, IMGSZ, IMGSZ]


def test_parity_raw_outputs_and_detections(pruned_pt, tiny_data):
    images = sorted((tiny_data.parent / "images" / "val").glob("*.jpg"))
    result = export(pruned_pt, format="onnx", imgsz=IMGSZ, images=images)
    parity = result["parity"]
    assert parity["raw_max_abs_diff"]["scores"] <= 1e-4 and parity["raw_max_abs_diff"]["boxes_rel"] <= 1e-4
    assert parity["raw_ok"] and parity["detections_match"]
    assert parity["detections"] >= 2 * len(images)  # real detections were compared, not empty lists


def test_parity_detects_a_wrong_export(pruned_pt, tmp_path):
    """The check can fail: an ONNX file of a differently pruned model does not pass against this checkpoint."""
    torch.manual_seed(1)
    other = informative(YOLO("yolov8n.yaml"), seed=1)
    yolo_nexp.prune(other, ratio=0.5, imgsz=IMGSZ, batches=1, batch=2, seed=1, verbose=False)
    other_pt = tmp_path / "other.pt"
    other.save(other_pt)
    onnx_file = YOLO(other_pt).export(format="onnx", imgsz=IMGSZ)
    parity = onnx_parity(pruned_pt, onnx_file, imgsz=IMGSZ)
    assert not parity["raw_ok"] and not parity["detections_match"]


def test_yolo_nexp_export_command(pruned_pt, caplog):
    assert entrypoint(["export", f"model={pruned_pt}", "format=onnx", f"imgsz={IMGSZ}"]) == 0
    assert "ONNX parity" in caplog.text and pruned_pt.with_suffix(".onnx").is_file()


def test_prune_with_export_option(tiny_data, tmp_path):
    report = prune_report(tiny_data, tmp_path, "x", "export=onnx")
    assert Path(report["export"]["file"]).is_file() and report["export"]["parity"]["raw_ok"]
