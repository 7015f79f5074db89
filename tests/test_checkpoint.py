"""A pruned model saved with Ultralytics' own YOLO.save is an ordinary Ultralytics checkpoint."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ultralytics import YOLO

import yolo_nexp
from yolo_nexp.checkpoints.safety import checkpoint_references, offending

from .conftest import IMGSZ

YOLO_CLI = str(Path(sys.executable).with_name("yolo"))  # the venv's console script, even when not activated


def run_python(code: str, **env) -> str:
    """Run ``code`` in a fresh interpreter and return its stdout."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def pruned_file(tmp_path_factory):
    model = YOLO("yolov8n.yaml")
    yolo_nexp.prune(model, ratio=0.5, imgsz=IMGSZ, batches=1, batch=2, verbose=False)
    path = tmp_path_factory.mktemp("ckpt") / "pruned.pt"
    model.save(path)
    return path, sum(p.numel() for p in model.model.parameters())


@pytest.mark.parametrize("safe_load", ["0", "1"])
def test_loads_in_fresh_interpreter_without_yolo_nexp(pruned_file, safe_load):
    path, params = pruned_file
    code = (
        "import sys, torch\nfrom ultralytics import YOLO\n"
        f"m = YOLO(r'{path}')\n"
        f"y = m.model.eval()(torch.rand(1, 3, {IMGSZ}, {IMGSZ}))[0]\n"
        "print(sum(p.numel() for p in m.model.parameters()), tuple(y.shape), 'yolo_nexp' in sys.modules)"
    )
    out = run_python(code, ULTRALYTICS_SAFE_LOAD=safe_load).split()
    assert int(out[0]) == params
    assert out[-1] == "False"


def test_pickle_references_only_the_allowlist(pruned_file):
    """What a pruned checkpoint's pickle names and calls is all in yolo_nexp.checkpoints.allowlist: it loads restricted."""
    refs = checkpoint_references(pruned_file[0])
    assert "ultralytics.nn.modules.block.C2f" in refs.created  # the scan does see the classes
    assert offending(refs) == []
    assert sum(p.numel() for p in yolo_nexp.load(pruned_file[0]).model.parameters()) == pruned_file[1]


def test_yolo_val_cli_runs_on_pruned_checkpoint(pruned_file, tiny_data, tmp_path):
    out = subprocess.run(
        [
            YOLO_CLI,
            "val",
            f"model={pruned_file[0]}",
            f"data={tiny_data}",
            f"imgsz={IMGSZ}",
            "batch=4",
            "plots=False",
            f"project={tmp_path}",
            "name=val",
            "workers=0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "all" in out.stdout + out.stderr  # the metrics table was printed


def test_pruning_a_checkpoint_drops_its_dense_training_state(tmp_path):
    """A checkpoint carrying a (dense) EMA and optimizer state must not bring them back after pruning."""
    dense = YOLO("yolov8n.yaml")
    src = tmp_path / "dense.pt"
    dense.save(src)
    ckpt = torch.load(src, weights_only=False)
    ckpt.update(ema=ckpt["model"], optimizer={"state": {}, "param_groups": []})
    torch.save(ckpt, src)
    before = src.read_bytes()

    model = YOLO(src)
    yolo_nexp.prune(model, ratio=0.5, imgsz=IMGSZ, batches=1, batch=2, verbose=False)
    model.save(tmp_path / "pruned.pt")
    params = sum(p.numel() for p in model.model.parameters())
    reloaded = YOLO(tmp_path / "pruned.pt")
    assert sum(p.numel() for p in reloaded.model.parameters()) == params
    assert torch.load(tmp_path / "pruned.pt", weights_only=False)["optimizer"] is None
    assert src.read_bytes() == before  # the input checkpoint is untouched
