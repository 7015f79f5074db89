"""Safe loading: no checkpoint runs code when yolo-nexp opens it, and stock checkpoints of every kind still load."""

import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from ultralytics import YOLO

import yolo_nexp
from yolo_nexp.checkpoints import loader as loading
from yolo_nexp.checkpoints.allowlist import CALLABLE, allowed_names, module_classes
from yolo_nexp.checkpoints.safety import UnsafeCheckpointError, checkpoint_references, untrusted_globals
from yolo_nexp.cli import entrypoint
from yolo_nexp.training.trainers import NexpTrainer

from .conftest import IMGSZ, TINY_PRUNE, TINY_TRAIN
from .malicious import CANNOT_RUN_HERE, NAMES, NO_PAYLOAD, RUN_ON_REBUILD, corpus

YOLO_CLI = str(Path(sys.executable).with_name("yolo"))


@pytest.fixture(scope="module")
def stock_template(tmp_path_factory):
    path = tmp_path_factory.mktemp("template") / "stock.pt"
    YOLO("yolov8n.yaml").save(path)
    return path


@pytest.fixture(scope="module")
def evil(tmp_path_factory, stock_template):
    """The malicious corpus (name -> checkpoint, marker, names a refusal must give); no marker may ever appear."""
    return corpus(tmp_path_factory.mktemp("evil"), stock_template)


# --- The corpus is real: every payload runs under stock loading ------------------------------------------------

CONTROL = """
import copy, json, sys, torch
from ultralytics.nn.modules import Conv
from ultralytics.nn.tasks import DetectionModel
for path, rebuild in json.loads(sys.argv[1]):
    try:
        ckpt = torch.load(path, weights_only=False)  # what stock YOLO(path) does
        if rebuild:  # what stock training does with the checkpoint's yaml
            DetectionModel(copy.deepcopy(ckpt["model"].yaml), verbose=False)
    except Exception:
        pass
    Conv.default_act = torch.nn.SiLU()  # a payload may leave it broken for the next one
"""


def test_every_payload_runs_under_stock_loading(tmp_path, stock_template):
    """The positive control, on a separate copy of the corpus and in a fresh process."""
    files = corpus(tmp_path, stock_template)
    runnable = {n: f for n, f in files.items() if n not in CANNOT_RUN_HERE | NO_PAYLOAD}
    jobs = [(str(path), name in RUN_ON_REBUILD) for name, (path, _, _) in runnable.items()]
    subprocess.run([sys.executable, "-c", CONTROL, json.dumps(jobs)], check=True, timeout=300, capture_output=True)
    time.sleep(0.5)  # subprocess.Popen's payload runs asynchronously
    assert len(runnable) >= 20
    assert not [n for n, (_, marker, _) in runnable.items() if not marker.exists()]


# --- Every entry point refuses every payload, by name, and nothing runs or is written -------------------------


def _assert_refused(call, names: list[str]) -> None:
    with pytest.raises(UnsafeCheckpointError) as e:
        call()
    message = str(e.value)
    for name in names:
        assert name in message and any(o.startswith(name) for o in e.value.offending), (name, e.value.offending)
    assert "trust=True" in message and "\n" not in message


@pytest.mark.parametrize("name", NAMES)
def test_malicious_checkpoint_is_refused_and_never_runs(evil, name, tiny_data, tmp_path, monkeypatch):
    path, marker, names = evil[name]
    unpickled = []  # a refusal of the pickle comes before torch.load starts building anything
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(a) or real_load(*a, **k))
    _assert_refused(lambda: yolo_nexp.load(path), names)
    assert bool(unpickled) == (name in RUN_ON_REBUILD)  # a clean pickle with a bad yaml is read restricted first
    monkeypatch.undo()

    _assert_refused(lambda: NexpTrainer(overrides={"model": str(path), "resume": str(path), **TINY_TRAIN}), names)
    runs = tmp_path / "runs"
    assert entrypoint(["prune", f"model={path}", f"data={tiny_data}", f"project={runs}", *TINY_PRUNE]) == 2
    assert entrypoint(["export", f"model={path}", f"imgsz={IMGSZ}"]) == 2
    time.sleep(0.2)  # give an asynchronous payload (subprocess.Popen) the time to show, had it run
    assert not marker.exists() and not runs.exists()
    assert not list(path.parent.glob(f"{path.stem}*.onnx"))


@pytest.mark.parametrize("name", sorted(set(NAMES) - RUN_ON_REBUILD - NO_PAYLOAD))
def test_restricted_unpickler_refuses_even_if_the_scan_let_it_through(evil, name, monkeypatch):
    """The scan names offenders; torch's weights_only unpickler is the guard that holds without it."""
    path, marker, _ = evil[name]
    monkeypatch.setattr(loading, "check_checkpoint", lambda p, arg="model": checkpoint_references(p, arg))
    with pytest.raises(UnsafeCheckpointError):
        loading.read_checkpoint(path)
    time.sleep(0.1)
    assert not marker.exists()


def test_refusal_names_at_most_eight_globals_and_counts_the_rest(tmp_path):
    evil = tmp_path / "many.pt"
    torch.save(
        {f"k{i}": getattr(__import__("operator"), f) for i, f in enumerate(dir(__import__("operator"))[-12:])}, evil
    )
    with pytest.raises(UnsafeCheckpointError, match=r"and \d+ more"):
        yolo_nexp.load(evil)


# --- Unreadable files keep their clear errors ----------------------------------------------------------------


def _duplicate_data_pkl(stock):
    """A zip holding data.pkl twice: the scan and torch's reader could each pick a different one."""

    def write(path):
        shutil.copy(stock, path)
        with zipfile.ZipFile(path, "a") as z, pytest.warns(UserWarning, match="Duplicate name"):
            z.writestr(next(n for n in z.namelist() if n.endswith("/data.pkl")), b"\x80\x02}.")

    return write


def test_unreadable_files_have_one_line_errors(tmp_path, stock_template):
    cases = {
        "text.pt": (lambda p: p.write_text("not a checkpoint"), "not a readable PyTorch checkpoint"),
        "truncated.pt": (lambda p: p.write_bytes(stock_template.read_bytes()[:5000]), "not a readable"),
        "legacy.pt": (lambda p: torch.save({"a": 1}, p, _use_new_zipfile_serialization=False), r"legacy \(non-zip\)"),
        "nopickle.pt": (lambda p: zipfile.ZipFile(p, "w").close(), "holds no pickle"),
        "tensor.pt": (lambda p: torch.save(torch.zeros(2), p), "holds no Ultralytics model"),
        "duplicate.pt": (_duplicate_data_pkl(stock_template), "duplicate member names"),
    }
    for name, (write, words) in cases.items():
        write(tmp_path / name)
        with pytest.raises(ValueError, match=words) as e:
            yolo_nexp.load(tmp_path / name)
        assert "\n" not in str(e.value) and not isinstance(e.value, UnsafeCheckpointError)
    with pytest.raises(FileNotFoundError, match="not found"):
        yolo_nexp.load(tmp_path / "missing.pt")


def test_trust_loads_a_checkpoint_with_foreign_classes_the_stock_way(tmp_path, stock_template):
    ckpt = torch.load(stock_template, weights_only=False)
    ckpt["extra"] = zipfile.ZipInfo("x")  # an ordinary but foreign class: refused by default
    torch.save(ckpt, tmp_path / "foreign.pt")
    _assert_refused(lambda: yolo_nexp.load(tmp_path / "foreign.pt"), ["zipfile.ZipInfo"])
    assert isinstance(yolo_nexp.load(tmp_path / "foreign.pt", trust=True).ckpt["extra"], zipfile.ZipInfo)


def test_trusting_a_file_lets_nexp_trainer_resume_it(tmp_path, stock_template):
    ckpt = torch.load(stock_template, weights_only=False)
    ckpt["extra"] = zipfile.ZipInfo("y")
    torch.save(ckpt, tmp_path / "mine.pt")
    _assert_refused(lambda: loading.check_resume(str(tmp_path / "mine.pt")), ["zipfile.ZipInfo"])
    yolo_nexp.load(tmp_path / "mine.pt", trust=True)
    loading.check_resume(str(tmp_path / "mine.pt"))  # vouched for in this process: no error


def test_every_stock_model_yaml_may_be_rebuilt():
    """No false refusals: the layers and activations of every model yaml Ultralytics ships pass the yaml check."""
    import ultralytics
    from ultralytics.nn.tasks import yaml_model_load

    files = sorted((Path(ultralytics.__file__).parent / "cfg" / "models").rglob("*.yaml"))
    refused = {f.name: found for f in files if (found := loading.unsafe_yaml(yaml_model_load(f)))}
    assert len(files) > 20 and not refused, refused
    assert loading.unsafe_yaml({"activation": "nn.LeakyReLU(0.1)", "backbone": [[-1, 1, "nn.Upsample", []]]}) == []
    assert loading.unsafe_yaml({"activation": "nn.SiLU(x)"}) and loading.unsafe_yaml("https://example.com/m.yaml")


# --- Stock checkpoints of every kind load, exactly as YOLO(path) loads them -----------------------------------


@pytest.fixture(scope="module")
def stock(tmp_path_factory, tiny_data):
    """Checkpoints saved by current Ultralytics: dense, float32, trained (mid-training EMA + optimizer, last, best),
    pruned, pruned and fine-tuned, YOLO11, and trained with the `yolo train` CLI."""
    d = tmp_path_factory.mktemp("stock")
    YOLO("yolov8n.yaml").save(d / "dense.pt")
    YOLO("yolo11n.yaml").save(d / "yolo11.pt")
    torch.save({"model": YOLO("yolov8n.yaml").model.float()}, d / "float32.pt")
    train = dict(data=str(tiny_data), epochs=2, save_period=1, project=str(d), exist_ok=True, **TINY_TRAIN)
    YOLO("yolov8n.yaml").train(name="dense", **train)  # epoch0.pt: half EMA + AdamW state; last/best stripped
    pruned = yolo_nexp.load(d / "dense" / "weights" / "best.pt")
    yolo_nexp.prune(pruned, ratio=0.5, source="noise", imgsz=IMGSZ, batches=1, batch=2, verbose=False)
    pruned.save(d / "pruned.pt")
    yolo_nexp.load(d / "pruned.pt").train(trainer=NexpTrainer, name="pruned", optimizer="SGD", **train)
    cli = [YOLO_CLI, "train", "model=yolov8n.yaml", f"data={tiny_data}", "epochs=1", f"imgsz={IMGSZ}", "batch=4"]
    cli += ["workers=0", "plots=False", f"project={d}", "name=cli"]
    subprocess.run(cli, check=True, capture_output=True, timeout=300, cwd=d)
    files = {p.stem: p for p in d.glob("*.pt")}
    for run in ("dense", "pruned", "cli"):
        files.update({f"{run}_{p.stem}": p for p in (d / run / "weights").glob("*.pt")})
    return files


def test_stock_checkpoints_load_exactly_as_yolo_does(stock):
    assert {"dense_epoch0", "dense_last", "dense_best", "pruned", "pruned_epoch0", "pruned_best", "cli_last"} <= set(
        stock
    )
    for name, path in stock.items():
        assert untrusted_globals(path) == [], name
        ours, theirs = yolo_nexp.load(path), YOLO(path)
        assert type(ours) is YOLO and ours.overrides == theirs.overrides and ours.ckpt.keys() == theirs.ckpt.keys()
        a, b = ours.model.state_dict(), theirs.model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert ours.model.args == theirs.model.args and ours.task == theirs.task == "detect"


def test_allowlist_is_exactly_what_stock_checkpoints_use(stock):
    used = [checkpoint_references(p) for p in stock.values()]
    assert set().union(*(r.called for r in used)) == set(CALLABLE)  # each callable entry is needed, none missing
    assert set().union(*(r.created for r in used)) <= set(module_classes())
    assert set().union(*(r.names for r in used)) <= allowed_names()
    assert torch.load(stock["dense_epoch0"], weights_only=False)["optimizer"] is not None  # the kinds claimed


def test_loaded_pruned_checkpoint_validates_trains_resumes_saves_and_exports(stock, tiny_data, tmp_path):
    model = yolo_nexp.load(stock["pruned"])
    params = sum(p.numel() for p in model.model.parameters())
    metrics = model.val(data=str(tiny_data), **TINY_TRAIN, project=str(tmp_path), name="val")
    labelled = sum(len(f.read_text().split()) // 5 for f in (tiny_data.parent / "labels" / "val").glob("*.txt"))
    assert labelled > 0 and int(metrics.nt_per_class.sum()) == labelled  # it validated on every val label
    assert all(0.0 <= v <= 1.0 for v in metrics.results_dict.values()) and metrics.speed["inference"] > 0
    resumed = yolo_nexp.load(stock["pruned_epoch0"])
    resumed.train(resume=True, trainer=NexpTrainer)  # NexpTrainer checks the resume file, then continues it
    assert sum(p.numel() for p in resumed.model.parameters()) == params
    model.save(tmp_path / "again.pt")
    assert sum(p.numel() for p in yolo_nexp.load(tmp_path / "again.pt").model.parameters()) == params
    assert Path(model.export(format="onnx", imgsz=IMGSZ)).exists()
