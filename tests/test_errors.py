"""Bad input and faults: one clear line and exit code 2, nothing written, nothing lost, nothing unsafe loaded."""

import logging
import pickle
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch
from ultralytics import YOLO

import yolo_nexp
from yolo_nexp.checkpoints.safety import check_checkpoint, untrusted_globals
from yolo_nexp.cli import entrypoint
from yolo_nexp.pruning.allocation import allowed_widths

from .conftest import IMGSZ, TINY_PRUNE

TINY = [*TINY_PRUNE, "epochs=0"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_data):
    """Inputs for the error cases: broken checkpoints and data yamls."""
    tmp_path = tmp_path_factory.mktemp("inputs")
    f = {"data": str(tiny_data)}
    (tmp_path / "text.pt").write_text("not a checkpoint")
    f["text"] = tmp_path / "text.pt"
    good = tmp_path / "good.pt"
    YOLO("yolov8n.yaml").save(good)
    f["coco_classes"] = good  # 80 classes, against the tiny data's
    f["truncated"] = tmp_path / "truncated.pt"
    f["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    from ultralytics import RTDETR

    f["rtdetr"] = tmp_path / "rtdetr-l.pt"
    RTDETR("rtdetr-l.yaml").save(f["rtdetr"])
    (tmp_path / "empty.yaml").write_text("")
    f["empty_yaml"] = tmp_path / "empty.yaml"
    (tmp_path / "noimg.yaml").write_text(f"path: {tmp_path}\ntrain: nowhere\nval: nowhere\nnames: {{0: a}}\n")
    f["noimg_yaml"] = tmp_path / "noimg.yaml"
    (tmp_path / "noimgs").mkdir()
    (tmp_path / "emptydir.yaml").write_text(f"path: {tmp_path}\ntrain: noimgs\nval: noimgs\nnames: {{0: a}}\n")
    f["emptydir_yaml"] = tmp_path / "emptydir.yaml"
    return f


CASES = {  # name: (arguments, words the one-line message must contain)
    "ratio above 1": (["ratio=1.5"], ["ratio", "[0, 1)"]),
    "ratio negative": (["ratio=-0.1"], ["ratio"]),
    "ratio not a number": (["ratio=half"], ["ratio", "number"]),
    "unknown criterion": (["criterion=magic"], ["criterion", "magic", "nexp"]),
    "unknown argument": (["ratoi=0.5"], ["unknown argument", "ratoi"]),
    "ratio and macs": (["ratio=0.5", "macs=0.4"], ["ratio and macs"]),
    "batches below 1": (["batches=0"], ["batches", ">= 1"]),
    "missing model": (["model={tmp}/missing.pt"], ["model", "not found"]),
    "not a checkpoint": (["model={text}"], ["model", "not a readable PyTorch checkpoint"]),
    "corrupt checkpoint": (["model={truncated}"], ["model", "corrupt"]),
    "checkpoint of other classes": (["model={coco_classes}"], ["data", "80 classes", "Train it on this data first"]),
    "classification model": (["model=yolov8n-cls.yaml"], ["model", "detection", "Classify"]),
    "unsupported block": (["model=yolo12n.yaml"], ["model", "A2C2f", "cannot prune"]),
    "RT-DETR": (["model={rtdetr}"], ["model", "detection", "RTDETRDecoder"]),
    "missing data": (["data={tmp}/nowhere.yaml"], ["data", "does not exist"]),
    "empty data yaml": (["data={empty_yaml}"], ["data", "train"]),
    "data without images": (["data={noimg_yaml}"], ["data", "not found"]),
    "data with empty folders": (["data={emptydir_yaml}"], ["data", "no images"]),
}


@pytest.mark.parametrize("case", CASES)
def test_error_case(case, files, tmp_path, caplog):
    args, words = CASES[case]
    args = [a.format(tmp=tmp_path, **files) for a in args]
    if not any(a.startswith("data=") for a in args):
        args.append(f"data={files['data']}")
    project = tmp_path / "runs"
    inputs = [Path(v) for v in files.values()]
    before = {p: p.stat().st_mtime_ns for p in inputs}
    with caplog.at_level(logging.ERROR):
        rc = entrypoint(["prune", *TINY, *args, f"project={project}"])
    assert rc == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None  # one line, no traceback
    message = errors[0].getMessage()
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)
    assert not project.exists()  # nothing written
    assert {p: p.stat().st_mtime_ns for p in inputs} == before  # inputs untouched


def test_cli_process_exit_code_and_no_traceback(tmp_path):
    exe = Path(sys.executable).with_name("yolo-nexp")
    out = subprocess.run(
        [str(exe), "prune", "ratio=2", f"project={tmp_path}/runs"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2
    assert "ratio" in out.stderr + out.stdout and "Traceback" not in out.stderr + out.stdout
    verbose = subprocess.run(
        [str(exe), "prune", "ratio=2", "verbose=True"], capture_output=True, text=True, timeout=120
    )
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr + verbose.stdout  # asked for


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"ratio": 1.0}, "ratio"),
        ({"ratio": "x"}, "ratio"),
        ({"criterion": "foo"}, "criterion"),
        ({"ratio": 0.5, "macs": 0.4}, "ratio and macs"),
        ({"batches": 0}, "batches"),
        ({"round_to": 0}, "round_to"),
        ({"alpha": 2}, "alpha"),
        ({"macs": 1.2}, "macs"),
    ],
)
def test_api_errors(yolov8n, kwargs, words):
    with pytest.raises(ValueError, match=words):
        yolo_nexp.prune(yolov8n, imgsz=IMGSZ, verbose=False, **kwargs)


@pytest.mark.parametrize("cfg", ["yolov8n-cls.yaml", "yolo12n.yaml", "yolo26n.yaml", "yolov10n.yaml"])
def test_api_rejects_models_outside_the_family(cfg):
    with pytest.raises(TypeError, match="YOLOv8"):
        yolo_nexp.prune(YOLO(cfg), imgsz=IMGSZ, verbose=False)


# --- Extreme ratios ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("round_to", [1, 8, 16])
def test_no_layer_pruned_to_zero_and_floor_reported(yolov8n, round_to):
    report = yolo_nexp.prune(yolov8n, ratio=0.95, round_to=round_to, imgsz=IMGSZ, batches=1, batch=2, verbose=False)
    floor = {name: allowed_widths(before, round_to)[-1] for name, (before, _) in report.channels.items()}
    for name, (before, after) in report.channels.items():  # at least round_to channels and 10% of the layer
        assert after >= floor[name] >= max(min(round_to, before), 0.1 * before), name
    assert report.floored and all(report.channels[n][1] == floor[n] for n in report.floored)
    assert yolov8n.model.eval()(torch.rand(1, 3, IMGSZ, IMGSZ))[0].shape[1] == 84


# --- Safe loading -----------------------------------------------------------------------------------------------


def _checkpoint_naming(tmp_path, module_name: str) -> Path:
    """A checkpoint whose pickle references a class of a module named ``module_name`` (then gone from the process)."""
    mod = types.ModuleType(module_name)

    class Payload:
        pass

    Payload.__module__, Payload.__qualname__ = module_name, "Payload"
    mod.Payload = Payload
    sys.modules[module_name] = mod
    try:
        path = tmp_path / f"{module_name}.pt"
        YOLO("yolov8n.yaml").save(path)
        ckpt = torch.load(path, weights_only=False)
        ckpt["extra"] = Payload()
        torch.save(ckpt, path)
    finally:
        del sys.modules[module_name]
    return path


def test_untrusted_checkpoint_is_refused_before_unpickling(tmp_path, tiny_data, monkeypatch, caplog):
    path = _checkpoint_naming(tmp_path, "evil_pkg_nexp")
    assert untrusted_globals(path) == ["evil_pkg_nexp.Payload"]
    unpickled = []
    monkeypatch.setattr(pickle, "Unpickler", lambda *a, **k: unpickled.append(1))  # any unpickling would show here
    with pytest.raises(ValueError, match="evil_pkg_nexp.Payload"):
        check_checkpoint(path)
    assert not unpickled
    monkeypatch.undo()
    with caplog.at_level(logging.ERROR):
        assert entrypoint(["prune", f"model={path}", f"data={tiny_data}", f"project={tmp_path}/runs", *TINY]) == 2
    assert "trust=True" in caplog.text and not (tmp_path / "runs").exists()


def test_trust_prunes_a_checkpoint_that_is_refused_without_it(tmp_path, tiny_data):
    from ultralytics.nn.tasks import DetectionModel

    path = tmp_path / "foreign.pt"  # a 3-class model plus an importable class a stock checkpoint never holds
    torch.save({"model": DetectionModel("yolov8n.yaml", nc=3, verbose=False), "extra": zipfile.ZipInfo("x")}, path)
    argv = ["prune", f"model={path}", f"data={tiny_data}", f"project={tmp_path}/runs", *TINY]
    assert entrypoint(argv) == 2 and not (tmp_path / "runs").exists()
    assert entrypoint([*argv, "trust=True", "name=trusted"]) == 0
    assert (tmp_path / "runs" / "trusted" / "weights" / "pruned.pt").exists()


def test_pruned_checkpoint_passes_the_check(pruned_pt):
    assert untrusted_globals(pruned_pt) == []


# --- Determinism ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["noise", "images"])
def test_same_seed_same_scores(yolov8n, tiny_data, source):
    src = tiny_data.parent / "images" / "train" if source == "images" else "noise"
    a = yolo_nexp.score(yolov8n, src, batches=2, imgsz=IMGSZ, batch=2, seed=5, verbose=False)
    b = yolo_nexp.score(yolov8n, src, batches=2, imgsz=IMGSZ, batch=2, seed=5, verbose=False)
    c = yolo_nexp.score(yolov8n, src, batches=2, imgsz=IMGSZ, batch=2, seed=6, verbose=False)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the seed does choose the calibration inputs
