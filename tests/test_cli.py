"""The yolo-nexp command: argument handling, and the whole prune job end to end on tiny synthetic data."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ultralytics import YOLO

from yolo_nexp import NexpTrainer
from yolo_nexp.cli import UsageError, entrypoint, load_defaults, parse_args
from yolo_nexp.pruning.pruner import DEFAULT_CRITERION

from .conftest import IMGSZ, TINY_PRUNE, TINY_TRAIN, n_params

TINY = TINY_PRUNE


def test_plugin_arguments_are_parsed_off():
    plugin, ultra = parse_args(["ratio=0.3", "criterion=l1", "source=noise", "epochs=2", "lr0=0.001", "imgsz=320"])
    assert plugin["ratio"] == 0.3 and plugin["criterion"] == "l1" and plugin["source"] == "noise"
    assert ultra["epochs"] == 2 and ultra["lr0"] == 0.001 and ultra["imgsz"] == 320
    assert "ratio" not in ultra and "source" not in ultra  # Ultralytics never sees the plugin's keys
    assert plugin["batches"] == 4 and ultra["data"] == "synthetic"  # defaults from configs/default.yaml


def test_unknown_argument_is_named():
    with pytest.raises(UsageError, match="'rato'"):
        parse_args(["rato=0.5"])


def test_recipe_is_overridden_by_command_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("ratio: 0.2\nepochs: 7\ncriterion: hybrid\n")
    plugin, ultra = parse_args([f"cfg={recipe}", "epochs=3"])
    assert plugin["ratio"] == 0.2 and plugin["criterion"] == "hybrid" and ultra["epochs"] == 3


def test_shipped_recipe_parses():
    plugin, ultra = parse_args(["cfg=recipe-yolov8m-coco.yaml"])
    assert ultra["model"] == "yolov8m.pt" and plugin["macs"] == 0.46 and plugin["ratio"] is None


@pytest.mark.parametrize("argv", [["help"], ["--help"], []])
def test_help(argv, capsys):
    assert entrypoint(argv) == 0
    out = capsys.readouterr().out
    plugin_part, _, rest = out.partition("Plugin arguments")[2].partition("Ultralytics arguments")
    assert rest, "no separate section for the job's Ultralytics defaults"
    ultralytics_part = rest.partition("Examples:")[0]
    plugin, ultralytics = load_defaults()

    def listed(key: str, text: str) -> bool:  # a row of the listing, not a mention in the examples
        return re.search(rf"^    {re.escape(key)}: ", text, re.MULTILINE) is not None

    for key, value in plugin.items():
        assert listed(key, plugin_part) and not listed(key, ultralytics_part), key
        assert re.search(
            rf"^    {re.escape(key)}: {re.escape(str(value) if value is not None else 'null')}\b",
            plugin_part,
            re.M | re.I,
        ), key
    for key in ultralytics:
        assert listed(key, ultralytics_part) and not listed(key, plugin_part), key


def test_console_script_help():
    exe = Path(sys.executable).with_name("yolo-nexp")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Usage" in out.stdout


def test_bad_argument_exits_2(tmp_path):
    assert entrypoint(["prune", "rato=0.5", f"project={tmp_path}"]) == 2
    assert entrypoint(["frobnicate"]) == 2
    assert not any(tmp_path.iterdir())  # nothing written


def test_prune_end_to_end(tiny_data, tmp_path):
    rc = entrypoint(
        [
            "prune",
            "model=yolov8n.yaml",
            f"data={tiny_data}",
            "macs=0.5",
            "epochs=1",
            f"project={tmp_path}",
            "name=e2e",
            *TINY,
        ]
    )
    assert rc == 0
    run = tmp_path / "e2e"
    report = json.loads((run / "report.json").read_text())
    dense, pruned, tuned = (report["stages"][k] for k in ("dense", "pruned", "finetuned"))
    assert abs(pruned["macs"] / dense["macs"] - 0.5) < 0.01 and pruned["params"] < dense["params"]
    assert tuned["params"] == pruned["params"] and tuned["macs"] == pruned["macs"]
    for stage in (dense, pruned, tuned):
        assert 0.0 <= stage["map50"] <= 1.0 and 0.0 <= stage["map"] <= stage["map50"] + 1e-9
    assert report["macs_reduction"] == pytest.approx(1 - pruned["macs"] / dense["macs"])
    assert report["plugin"]["macs"] == 0.5 and report["prune"]["criterion"] == DEFAULT_CRITERION
    assert report["prune"]["repair"] == "lsq" and report["prune"]["allocation"] == "sensitivity"
    # Ultralytics' trainer silently rebuilding the dense model from its yaml would leave the dense count here.
    for ckpt in ("pruned.pt", "best.pt", "last.pt"):
        assert n_params(run / "weights" / ckpt) == pruned["params"], ckpt
    assert (run / "channels.png").stat().st_size > 1000
    # The run folder is never reused: a second run with the same name is incremented.
    assert (
        entrypoint(
            ["prune", "model=yolov8n.yaml", f"data={tiny_data}", "epochs=0", f"project={tmp_path}", "name=e2e", *TINY]
        )
        == 0
    )
    (second,) = (p for p in tmp_path.iterdir() if p.name.startswith("e2e") and p.name != "e2e")
    assert "finetuned" not in json.loads((second / "report.json").read_text())["stages"]  # epochs=0: no fine-tuning


@pytest.fixture(scope="module")
def trained_pt(tiny_data, tmp_path_factory):
    """A checkpoint trained by Ultralytics' stock trainer for one epoch."""
    project = tmp_path_factory.mktemp("trained")
    model = YOLO("yolov8n.yaml")
    model.train(data=str(tiny_data), epochs=1, project=str(project), name="t", val=False, **TINY_TRAIN)
    return project / "t" / "weights" / "last.pt"


def test_prune_a_trained_checkpoint(trained_pt, tiny_data, tmp_path):
    src = trained_pt.read_bytes()
    rc = entrypoint(
        [
            "prune",
            f"model={trained_pt}",
            f"data={tiny_data}",
            "ratio=0.25",
            "criterion=hybrid",
            "epochs=1",
            f"project={tmp_path}",
            "name=pt",
            *TINY,
        ]
    )
    assert rc == 0
    report = json.loads((tmp_path / "pt" / "report.json").read_text())
    assert report["stages"]["pruned"]["params"] < report["stages"]["dense"]["params"]
    assert n_params(tmp_path / "pt" / "weights" / "best.pt") == report["stages"]["pruned"]["params"]
    assert trained_pt.read_bytes() == src  # the input checkpoint is never modified


def test_trainer_keeps_pruned_architecture_where_stock_trainer_loses_it(tiny_data, tmp_path):
    assert entrypoint(["prune", f"data={tiny_data}", "epochs=0", f"project={tmp_path}", "name=p", *TINY]) == 0
    pruned = tmp_path / "p" / "weights" / "pruned.pt"
    kw = dict(data=str(tiny_data), epochs=1, imgsz=IMGSZ, batch=4, workers=0, plots=False, val=False)
    YOLO(pruned).train(trainer=NexpTrainer, project=str(tmp_path), name="nexp", **kw)
    YOLO(pruned).train(project=str(tmp_path), name="stock", **kw)
    assert n_params(tmp_path / "nexp" / "weights" / "last.pt") == n_params(pruned)
    assert n_params(tmp_path / "stock" / "weights" / "last.pt") > 2 * n_params(pruned)  # the known trap


def test_global_allocation_and_macs_target_from_the_command_line():
    plugin, _ = parse_args(["global=True", "macs=0.46"])
    assert plugin["global"] is True and plugin["macs"] == 0.46
    assert plugin["ratio"] is None  # the MACs target replaces the default ratio; giving both is an error
