"""Latency on a real (tiny) model: the latency table is cached and reused, a latency target is reached (or the
report says it was not) with a model that still runs, and any other target's report gives the speed-up."""

import pytest
import torch
from ultralytics import YOLO

import yolo_nexp
from yolo_nexp.latency import table as table_mod
from yolo_nexp.latency.target import open_bench

onnxruntime = pytest.importorskip("onnxruntime")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty plugin cache, and at most 2 widths per set in the table (the test's time, not its logic)."""
    monkeypatch.setenv("YOLO_NEXP_CACHE", str(tmp_path))
    monkeypatch.setattr(table_mod, "MAX_WIDTHS", 2)
    return tmp_path


def test_table_is_measured_once_and_reused(cache, monkeypatch):
    measured = []

    def counting(file, backend, inputs):
        measured.append(file.name)
        return lambda: None

    monkeypatch.setattr(table_mod, "runner", counting)
    det = YOLO("yolov8n.yaml").model
    first = table_mod.latency_table(det, "onnxruntime", 64, verbose=False)
    n = len(measured)
    assert n == sum(len(t) for t in first.ms.values()) > 0 and not first.cached
    assert all(len(t) == 2 for t in first.ms.values() if len(t) > 1)  # MAX_WIDTHS: dense and floor
    again = table_mod.latency_table(det, "onnxruntime", 64, verbose=False)
    assert len(measured) == n and again.cached and again.ms == first.ms and again.key == first.key
    assert (cache / "latency" / f"{first.key}.json").is_file()
    other = table_mod.latency_table(det, "onnxruntime", 96, verbose=False)  # another input size: another table
    assert len(measured) == 2 * n and other.key != first.key


def test_prune_to_a_latency_target(cache):
    model = YOLO("yolov8n.yaml")
    report = yolo_nexp.prune(
        model, latency=0.7, source="noise", imgsz=96, batch=2, batches=1, passes=1, verbose=False
    )  # fmt: skip
    ms = report.latency_ms
    ratio = ms["pruned"]["median"] / ms["dense"]["median"]
    assert report.latency_target == 0.7 and report.backend == "onnxruntime" and report.latency_batch == 1
    assert report.latency_met == (ratio <= 0.7)
    assert report.latency_met or "latency target 0.7 not met" in report.latency_note
    assert report.macs_after < report.macs_before and report.passes >= 1
    assert report.speedup == pytest.approx(1 / ratio)
    assert ms["dense"]["p25"] <= ms["dense"]["median"] <= ms["dense"]["p75"]
    assert "latency on onnxruntime (batch 1)" in report.summary() and "fewer MACs" in report.summary()
    assert report.to_dict()["speedup"] == report.speedup
    with torch.no_grad():
        out = model.model.eval()(torch.rand(1, 3, 96, 96))
    assert out[0].shape[:2] == (1, 4 + 80)


def test_a_macs_target_reports_the_speedup(cache, monkeypatch):
    model = YOLO("yolov8n.yaml")
    bench, note = open_bench(model, "onnxruntime", 64, 2)
    assert bench is not None and note == ""
    report = yolo_nexp.prune(model, macs=0.5, source="noise", imgsz=64, batch=2, batches=1, passes=1, verbose=False)
    assert report.latency_ms is None and report.latency_line() == ""  # prune() alone does not time a macs target
    bench.fill(report, model.model)  # what the job does for every target but latency
    assert report.latency_batch == 2 and report.latency_target is None and report.latency_met is None
    assert report.speedup > 0 and "x fewer MACs" in report.summary()
    monkeypatch.setattr(
        "yolo_nexp.latency.target.check_backend",
        lambda name: (_ for _ in ()).throw(yolo_nexp.latency.backends.BackendMissing("no onnxruntime")),
    )
    bench, note = open_bench(model, "onnxruntime", 64, 1)
    assert bench is None and note == "latency not measured: no onnxruntime"
