"""Nothing lost: atomic writes, a crash while a checkpoint is written, Ctrl-C during fine-tuning."""

from pathlib import Path

import pytest
import torch
from ultralytics import YOLO

from yolo_nexp.cli import entrypoint
from yolo_nexp.training.trainers import NexpTrainer
from yolo_nexp.utils import atomic_write

from .conftest import TINY_PRUNE, TINY_TRAIN, n_params

TINY = [*TINY_PRUNE, "epochs=0"]


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    def crash(tmp):
        tmp.write_text("half of the new")
        raise OSError("No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, crash)
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]  # no temporary left behind


def test_checkpoint_write_crash_leaves_previous_checkpoint(pruned_pt, tiny_data, tmp_path, monkeypatch):
    """A crash while Ultralytics writes last.pt (epoch 1) leaves epoch 0's last.pt whole."""
    real_write = Path.write_bytes
    writes = {"n": 0}

    def flaky_write(self, data):
        if "last" in self.name:
            writes["n"] += 1
            if writes["n"] == 2:
                real_write(self, data[: len(data) // 2])
                raise OSError("No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", flaky_write)
    with pytest.raises(OSError, match="No space"):
        YOLO(pruned_pt).train(
            trainer=NexpTrainer,
            data=str(tiny_data),
            epochs=2,
            project=str(tmp_path),
            name="crash",
            val=False,
            **TINY_TRAIN,
        )
    monkeypatch.undo()
    last = tmp_path / "crash" / "weights" / "last.pt"
    assert torch.load(last, weights_only=False)["epoch"] == 0
    assert n_params(last) == n_params(pruned_pt)
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.pt", "last.pt"]  # no partial file left


@pytest.mark.parametrize("interrupt_epoch", [0, 1])
def test_ctrl_c_during_finetuning_leaves_loadable_last_pt(tiny_data, tmp_path, monkeypatch, interrupt_epoch):
    real = NexpTrainer.preprocess_batch

    def interrupted(self, batch):
        if self.epoch == interrupt_epoch:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(NexpTrainer, "preprocess_batch", interrupted)
    argv = ["prune", f"data={tiny_data}", f"project={tmp_path}", "name=int", *TINY[:-1], "epochs=3"]
    assert entrypoint(argv) == 130
    weights = tmp_path / "int" / "weights"
    assert n_params(weights / "last.pt") == n_params(weights / "pruned.pt")
