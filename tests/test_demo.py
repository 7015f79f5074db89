"""The demo model, the job's default: trained once (here at a tiny size), cached, reused; never a partial file."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from ultralytics import YOLO

from yolo_nexp.cli import entrypoint
from yolo_nexp.synthetic import demo

from .conftest import IMGSZ, TINY_PRUNE

TINY = demo.DemoSettings(n_train=8, n_val=4, imgsz=IMGSZ, nc=3, epochs=1, batch=4, workers=0)


@pytest.fixture
def trainings(monkeypatch):
    """Every demo training in the test, counted (they still run)."""
    calls = []
    original = demo._train

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(demo, "_train", counted)
    return calls


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A cache folder holding the tiny demo model, trained once for the module."""
    cache = tmp_path_factory.mktemp("cache")
    demo.checkpoint(cache, TINY)
    return cache


@pytest.fixture
def cache(trained, tmp_path, monkeypatch) -> Path:
    """A copy of the trained cache as the plugin's cache folder, with the tiny demo as the job's demo."""
    copy = tmp_path / "cache"
    shutil.copytree(trained, copy)
    monkeypatch.setenv("YOLO_NEXP_CACHE", str(copy))
    monkeypatch.setattr(demo, "SETTINGS", TINY)
    return copy


def folder(cache: Path) -> Path:
    return cache / "demo" / TINY.key()


def test_trained_once_then_reused(tmp_path, trainings):
    first = demo.checkpoint(tmp_path, TINY)
    manifest = json.loads((first.parent / "demo.json").read_text())
    assert len(trainings) == 1 and manifest["key"] == TINY.key() and manifest["settings"]["nc"] == 3
    assert YOLO(first).model.nc == 3  # an ordinary checkpoint of the demo data's classes
    assert sorted(p.name for p in first.parent.iterdir()) == ["demo.json", "demo.pt"]  # the run folder is gone
    assert demo.checkpoint(tmp_path, TINY) == first and len(trainings) == 1  # the second time: from the cache


def test_no_model_prunes_the_cached_demo(cache, tmp_path, trainings):
    runs = tmp_path / "runs"
    assert entrypoint(["prune", "epochs=0", "batches=1", "workers=0", f"project={runs}"]) == 0
    assert not trainings  # cached: nothing trained
    (run,) = runs.iterdir()
    report = json.loads((run / "report.json").read_text())
    assert run.name == "demo-nexp_lsq50"
    assert report["ultralytics"]["model"] == str(folder(cache) / "demo.pt")
    assert Path(report["ultralytics"]["data"]).parent.name == TINY.data_key()  # the data it was trained on
    assert report["ultralytics"]["imgsz"] == TINY.imgsz and report["ultralytics"]["nbs"] == TINY.batch
    assert report["stages"]["pruned"]["params"] < report["stages"]["dense"]["params"]


@pytest.mark.parametrize("damage", ["truncated", "no manifest", "other hash", "other key"])
def test_a_partial_cache_is_not_used(damage, cache):
    checkpoint, manifest = folder(cache) / "demo.pt", folder(cache) / "demo.json"
    assert demo.cached(folder(cache), TINY) == checkpoint  # intact, it is used
    if damage == "truncated":  # e.g. a copy cut short by a full disk
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    elif damage == "no manifest":  # interrupted after the checkpoint, before its manifest
        manifest.unlink()
    else:
        info = json.loads(manifest.read_text())
        info["sha256" if damage == "other hash" else "key"] = "0" * 12
        manifest.write_text(json.dumps(info))
    assert demo.cached(folder(cache), TINY) is None


def test_a_partial_cache_is_trained_again(cache, trainings):
    checkpoint = folder(cache) / "demo.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    assert demo.checkpoint(cache, TINY) == checkpoint and len(trainings) == 1
    assert demo.cached(folder(cache), TINY) == checkpoint and YOLO(checkpoint).model.nc == 3


def test_interrupted_training_leaves_nothing_to_use(tmp_path, monkeypatch):
    def interrupted(self, **kwargs):
        best = Path(kwargs["project"]) / kwargs["name"] / "weights" / "best.pt"
        best.parent.mkdir(parents=True)
        best.write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(YOLO, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo.checkpoint(tmp_path, TINY)
    assert list((tmp_path / "demo" / TINY.key()).iterdir()) == []  # no checkpoint, no manifest, no run folder
    assert demo.cached(tmp_path / "demo" / TINY.key(), TINY) is None


def test_an_explicit_model_wins(cache, tiny_data, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the demo model was trained")

    monkeypatch.setattr(demo, "_train", refuse)
    given = {"model": "yolov8n.yaml", "data": "synthetic", "epochs": 10}
    assert demo.resolve(given, cache) == given
    assert demo.resolve({"model": "demo", "data": str(tiny_data)}, cache)["model"] == demo.FALLBACK  # other data
    runs = tmp_path / "runs"
    argv = ["prune", "model=yolov8n.yaml", f"data={tiny_data}", "epochs=0", *TINY_PRUNE, f"project={runs}", "name=p"]
    assert entrypoint(argv) == 0
    assert json.loads((runs / "p" / "report.json").read_text())["ultralytics"]["model"] == "yolov8n.yaml"


def test_the_key_holds_every_setting_and_version(monkeypatch):
    def changed(v):
        return v + 1 if isinstance(v, (int, float)) else (v[0], v[1] / 2) if isinstance(v, tuple) else f"x{v}"

    fields = dataclasses.fields(TINY)
    keys = {dataclasses.replace(TINY, **{f.name: changed(getattr(TINY, f.name))}).key() for f in fields}
    keys.add(TINY.key())
    assert len(keys) == len(fields) + 1  # any field changed: another model
    seen = {TINY.key()}
    for module, name in ((demo, "DEMO_VERSION"), (demo.ultralytics, "__version__"), (demo.torch, "__version__")):
        monkeypatch.setattr(module, name, "0.0")
        assert TINY.key() not in seen, name
        seen.add(TINY.key())
    monkeypatch.setattr(demo, "SYNTHETIC_VERSION", 2)
    assert TINY.key() not in seen and TINY.data_key().startswith("demo-data-v2")
