"""Shared fixtures: tiny synthetic data and small models, so the suite stays within minutes on 2 CPU cores."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from ultralytics import YOLO

from yolo_nexp.synthetic.dataset import make_dataset

IMGSZ = 64  # small input size for the tests (a multiple of the largest stride, 32)
TINY_TRAIN = dict(imgsz=IMGSZ, batch=4, workers=0, plots=False)  # Ultralytics training arguments for tiny runs


TINY_PRUNE = [f"imgsz={IMGSZ}", "batch=4", "batches=2", "workers=0"]  # yolo-nexp arguments for tiny runs


def prune_report(data, project: Path, name: str, *args: str) -> dict:
    """Run ``yolo-nexp prune`` on tiny data (no fine-tuning unless ``args`` say so) and return its report.json."""
    from yolo_nexp.cli import entrypoint

    argv = ["prune", f"data={data}", "epochs=0", *TINY_PRUNE, *args, f"project={project}", f"name={name}"]
    assert entrypoint(argv) == 0
    return json.loads((project / name / "report.json").read_text())


def n_params(model) -> int:
    """Parameter count of a module, a YOLO object, or a checkpoint file (loaded with plain Ultralytics)."""
    if isinstance(model, (str, Path)):
        model = YOLO(model)
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A seeded synthetic dataset: 8 train and 4 val images of 64 px, 3 classes."""
    return make_dataset(tmp_path_factory.mktemp("data") / "tiny", n_train=8, n_val=4, imgsz=IMGSZ, nc=3, seed=0)


@pytest.fixture
def pruned_pt(tmp_path, tiny_data):
    """A pruned checkpoint written by ``yolo-nexp prune`` (no fine-tuning)."""
    from yolo_nexp.cli import entrypoint

    assert entrypoint(["prune", f"data={tiny_data}", f"project={tmp_path}", "name=p", *TINY_PRUNE, "epochs=0"]) == 0
    return tmp_path / "p" / "weights" / "pruned.pt"


@pytest.fixture
def yolov8n():
    """A fresh randomly initialised yolov8n (80 classes)."""
    return YOLO("yolov8n.yaml")


@pytest.fixture(scope="session")
def task_data(tmp_path_factory):
    """``task_data(task)``: a seeded synthetic dataset for ``segment``, ``pose``, ``obb`` (or ``detect``): 8 train and
    4 val images of 64 px, 3 classes, made once per session."""
    made = {}

    def make(task: str):
        if task not in made:
            root = tmp_path_factory.mktemp(f"data-{task}") / "tiny"
            made[task] = make_dataset(root, n_train=8, n_val=4, imgsz=IMGSZ, nc=3, seed=0, task=task)
        return made[task]

    return make


def every_fourth_channel(det, constant: bool, seed: int = 0) -> None:
    """Channels 1, 5, 9, ... of every prunable Conv block output exactly zero, or a random non-zero constant.

    BN scale 0 and shift 0 (SiLU(0) = 0) or 0.5-1.5: removing the zero ones must change nothing, removing the
    constant ones must change nothing once their means are folded into the consumers (the repair).
    """
    from yolo_nexp.arch.family import conv_blocks, never_pruned

    gen = torch.Generator().manual_seed(seed)
    fixed = {id(m) for m in never_pruned(det)}
    with torch.no_grad():
        for block in conv_blocks(det).values():
            if id(block.conv) not in fixed:
                chosen = torch.arange(block.conv.out_channels) % 4 == 1
                block.bn.weight[chosen] = 0.0
                block.bn.bias[chosen] = 0.5 + torch.rand(int(chosen.sum()), generator=gen) if constant else 0.0


def replicate_padding(det) -> None:
    """Pad by repeating the border: a constant channel then reaches every position alike, borders included, so
    folding its mean is exact and any difference in the output is a repair error, not a border effect."""
    for m in det.modules():
        if isinstance(m, nn.Conv2d) and max(m.padding) > 0:
            m.padding_mode = "replicate"
