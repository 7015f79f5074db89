"""Latency pieces without a model: argument checks, interleaved timing on a fake clock, the latency table's
interpolation, ordering by distortion per millisecond, and the step count of a latency goal."""

import importlib
from types import SimpleNamespace

import pytest

import yolo_nexp
from yolo_nexp.cli import UsageError, parse_args
from yolo_nexp.latency import backends
from yolo_nexp.latency.backends import BackendMissing, check_backend
from yolo_nexp.latency.table import LatencyTable, measured_widths
from yolo_nexp.latency.target import LatencyGoal
from yolo_nexp.latency.timing import Timing, interleaved_ms
from yolo_nexp.pruning import allocation as alloc
from yolo_nexp.pruning.pruner import check_prune_args
from yolo_nexp.training.callback import NexpPruneCallback


@pytest.mark.parametrize("other", [{"ratio": 0.5}, {"macs": 0.4}])
def test_latency_with_ratio_or_macs_is_refused(other):
    with pytest.raises(ValueError, match=f"latency and {next(iter(other))}: give one of ratio, macs and latency"):
        check_prune_args(latency=0.5, **other)
    with pytest.raises(ValueError, match="give one of ratio, macs and latency"):
        yolo_nexp.prune(None, latency=0.5, **other)  # refused before the model is looked at
    with pytest.raises(ValueError, match="give one of ratio, macs and latency"):
        NexpPruneCallback(latency=0.5, **other)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.2, "fast", True])
def test_latency_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="latency must be"):
        check_prune_args(latency=bad)


def test_unknown_backend_and_bad_batch_are_refused():
    with pytest.raises(ValueError, match="backend: unknown 'tflite', choose one of onnxruntime, openvino, tensorrt"):
        check_prune_args(backend="tflite")
    with pytest.raises(ValueError, match="latency_batch must be a whole number >= 1"):
        check_prune_args(latency_batch=0)


def _without(package, monkeypatch):
    """Make ``package`` look uninstalled to the backend check."""
    real = importlib.import_module

    def fake(name, *args):
        if name == package:
            raise ImportError(f"No module named '{name}'")
        return real(name, *args)

    monkeypatch.setattr(backends.importlib, "import_module", fake)


@pytest.mark.parametrize("backend,extra", [("onnxruntime", "export"), ("openvino", "openvino")])
def test_missing_package_is_named_with_its_extra(backend, extra, monkeypatch):
    _without(backend, monkeypatch)
    with pytest.raises(BackendMissing, match=f"'{backend}' package, which is not installed.*yolo-nexp\\[{extra}\\]"):
        check_backend(backend)
    with pytest.raises(BackendMissing, match=f"needs the '{backend}' package"):
        check_prune_args(latency=0.5, backend=backend)  # a target needs the backend...
    check_prune_args(ratio=0.5, backend=backend)  # ...another target does not: its report says latency was skipped


def test_tensorrt_is_refused_clearly(monkeypatch):
    monkeypatch.setattr(backends.importlib, "import_module", lambda name, *a: None)  # as if installed
    with pytest.raises(BackendMissing, match="backend=tensorrt: not supported yet"):
        check_backend("tensorrt")


def test_cli_and_callback_take_a_latency_target():
    plugin, _ = parse_args(["latency=0.5", "backend=onnxruntime", "latency_batch=2"])
    assert plugin["ratio"] is None and plugin["latency"] == 0.5 and plugin["latency_batch"] == 2
    with pytest.raises(UsageError, match="give one of ratio, macs and latency"):
        parse_args(["latency=0.5", "ratio=0.3"])
    with pytest.raises(UsageError, match="backend: unknown"):
        parse_args(["backend=coreml"])
    cb = NexpPruneCallback(latency=0.36, steps=2)
    assert cb.ratio is None
    kept = cb.step_ratio(1) * cb.step_ratio(2)  # each step keeps a share of the latency it finds
    assert kept == pytest.approx(0.36) and cb.step_ratio(1) == pytest.approx(0.68)


def test_interleaved_timing_on_a_fake_clock():
    now, calls = [0.0], []

    def fake(key, ms):
        def run():
            calls.append(key)
            n = calls.count(key)
            now[0] += (ms * 5 if n % 4 == 0 else ms) / 1e3  # every 4th run of each is five times slower

        return run

    timed = interleaved_ms({"a": fake("a", 2.0), "b": fake("b", 3.0)}, runs=8, warmup=1, rounds=2, clock=lambda: now[0])
    assert calls[:2] == ["a", "b"]  # warm-up, one each
    assert calls[2:] == ["a"] * 4 + ["b"] * 4 + ["a"] * 4 + ["b"] * 4  # interleaved rounds
    a, b = timed["a"], timed["b"]
    assert a.runs == b.runs == 8
    assert a.median == pytest.approx(2.0) and a.min == pytest.approx(2.0) and a.max == pytest.approx(10.0)
    assert b.median == pytest.approx(3.0) and b.max == pytest.approx(15.0)
    assert a.p25 == pytest.approx(2.0) and a.p75 > 2.0  # two slow runs of eight lift the upper quartile
    assert Timing.of([5.0]).to_dict() == {"median": 5.0, "p25": 5.0, "p75": 5.0, "min": 5.0, "max": 5.0, "runs": 1}


def test_table_interpolates_and_never_predicts_a_slowdown():
    table = LatencyTable({"s": {64: 10.0, 48: 11.0, 32: 6.0, 16: 4.0}})
    assert table.at("s", 64) == 10.0
    assert table.at("s", 48) == 10.0  # measured slower than the dense width: held at the dense time
    assert table.at("s", 40) == pytest.approx(8.0)  # halfway between 48 (10) and 32 (6)
    assert table.saved("s", 64, 48) == 0.0 and table.saved("s", 48, 16) == pytest.approx(6.0)
    assert table.dense_ms() == 5.0  # halved: each conv is counted by two sets
    assert measured_widths(list(range(100, 0, -1)), most=5) == [100, 75, 50, 26, 1]
    assert measured_widths([16, 8], most=5) == [16, 8]


def test_sensitivity_order_by_distortion_per_millisecond():
    sets = [[SimpleNamespace(size=4)], [SimpleNamespace(size=4)]]
    widths = [[4, 3, 2], [4, 3, 2]]
    distortion = [{3: 1.0, 2: 2.0}, {3: 1.0, 2: 2.0}]  # the same distortion per step in both sets
    ms = {0: 10.0, 1: 1.0}  # set 0's steps save ten times the milliseconds of set 1's

    def saved(i, before, after):
        return ms[i] * (before - after)

    order = alloc.sensitivity_order(sets, widths, distortion, saved=saved)
    assert order == [(0, 3), (0, 2), (1, 3), (1, 2)]
    ms.update({0: 1.0, 1: 10.0})
    assert alloc.sensitivity_order(sets, widths, distortion, saved=saved) == [(1, 3), (1, 2), (0, 3), (0, 2)]


def test_latency_goal_takes_the_fewest_steps_that_reach_it():
    table = LatencyTable({"a": {8: 4.0, 4: 1.0}, "b": {8: 2.0, 4: 1.5}})
    widths, order = [[8, 4], [8, 4]], [(0, 4), (1, 4)]  # step 1 saves 3 ms, step 2 0.5 ms
    for need, steps, predicted in [(0.0, 0, 0.0), (2.0, 1, 3.0), (3.0, 1, 3.0), (3.2, 2, 3.5), (9.0, 2, 3.5)]:
        goal = LatencyGoal(table, need)
        assert goal.steps(["a", "b"], widths, order) == steps
        assert goal.predicted_ms == pytest.approx(predicted)
    assert LatencyGoal(table, 1.0).saved(["a", "b"])(1, 8, 4) == pytest.approx(0.5)


def test_defaults_agree_with_configs_default_yaml():
    import inspect

    from yolo_nexp.cli import load_defaults

    plugin, _ = load_defaults()
    params = inspect.signature(yolo_nexp.prune).parameters
    for key in ("latency", "backend", "latency_batch"):
        assert plugin[key] == params[key].default, key


def test_the_latency_scale_only_grows_and_ignores_passes_that_saved_nothing():
    from yolo_nexp.latency.target import next_scale

    assert next_scale(0.4, 0.10, 10.0, 100.0) == 1.0  # 10 ms measured for 10 predicted: 1.0
    assert next_scale(1.0, 0.05, 10.0, 100.0) == 1.0  # a lower estimate never lowers it (no overshoot from it)
    assert next_scale(0.4, -0.13, 10.0, 100.0) == 0.4  # measured slower: no information
    assert next_scale(0.4, 0.10, 0.0, 100.0) == 0.4
    assert next_scale(0.4, 9.0, 1.0, 100.0) == 50.0  # clamped
