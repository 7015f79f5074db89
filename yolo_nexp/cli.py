"""``yolo-nexp``: Ultralytics-style ``key=value`` command line.

yolo-nexp prune model=yolov8m.pt data=coco.yaml ratio=0.5 epochs=10
yolo-nexp prune cfg=configs/recipe-yolov8m-coco.yaml epochs=1
yolo-nexp help
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from ultralytics.cfg import DEFAULT_CFG_DICT, check_cfg, parse_key_value_pair
from ultralytics.utils import LOGGER

from yolo_nexp.export import ParityError
from yolo_nexp.pruning.pruner import check_prune_args, prune_kwargs

MODES = ("prune", "export")
USAGE = """yolo-nexp: prune Ultralytics YOLOv8 and YOLO11 models (detect, segment, pose, obb) by Neural Expressiveness (NEXP).

Usage:
    yolo-nexp prune [key=value ...]     calibrate, prune, validate, recover and report
    yolo-nexp export model=pruned.pt [format=onnx imgsz=640 ...]
                                        Ultralytics' export, then an ONNX-vs-PyTorch parity check
    yolo-nexp help                      this text

Plugin arguments (defaults in configs/default.yaml):
{plugin}

Ultralytics arguments whose default the job sets (the ultralytics: block of configs/default.yaml):
{ultralytics}

These and every other key=value go to Ultralytics unchanged (imgsz, batch, device, lr0, project, name, ...).
cfg=recipe.yaml loads a recipe; the command line overrides it.

Examples:
    yolo-nexp prune                                                # the demo: offline, a model trained once on synthetic data
    yolo-nexp prune model=yolov8m.pt data=coco.yaml ratio=0.5 epochs=10
"""


class UsageError(ValueError):
    """A wrong argument on the command line: reported in one line, exit code 2."""


def configs_dir() -> Path:
    """``configs/``: shipped inside the package by a wheel install, at the repository root in a source checkout."""
    packaged = Path(__file__).with_name("configs")
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "configs"


def load_defaults() -> tuple[dict, dict]:
    """``(plugin defaults, Ultralytics defaults of the plugin)`` from ``configs/default.yaml``."""
    defaults = yaml.safe_load((configs_dir() / "default.yaml").read_text())
    return defaults, defaults.pop("ultralytics")


def _load_recipe(path) -> dict:
    """Keys of a ``cfg=`` recipe yaml."""
    file = Path(str(path))
    if not file.is_file() and (configs_dir() / file.name).is_file():
        file = configs_dir() / file.name  # a recipe shipped in configs/, by name
    if not file.is_file():
        raise UsageError(f"cfg: recipe '{path}' not found.")
    recipe = yaml.safe_load(file.read_text()) or {}
    if not isinstance(recipe, dict):
        raise UsageError(f"cfg: recipe '{path}' is not a mapping of key: value.")
    return recipe


def parse_args(pairs: list[str]) -> tuple[dict, dict]:
    """Split ``key=value`` pairs into the plugin's arguments and Ultralytics' overrides.

    Precedence: command line > ``cfg=`` recipe > ``configs/default.yaml`` > Ultralytics' own defaults.

    Raises:
        UsageError: For a malformed pair, a missing recipe, or a key neither the plugin nor Ultralytics knows.
    """
    cli = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"'{pair}' is not key=value; see 'yolo-nexp help'.")
        try:
            key, value = parse_key_value_pair(pair)
        except AssertionError as e:
            raise UsageError(f"{e}; give it as key=value.") from None
        cli[key] = value
    recipe = _load_recipe(cli.pop("cfg")) if "cfg" in cli else {}
    plugin, ultralytics = load_defaults()
    given = {**recipe, **cli}
    if (given.get("macs") is not None or given.get("latency") is not None) and "ratio" not in given:
        plugin["ratio"] = None  # a MACs or latency target replaces the default ratio
    for key, value in given.items():
        if key in plugin:
            plugin[key] = value
        elif key in DEFAULT_CFG_DICT:
            ultralytics[key] = value
        else:
            raise UsageError(
                f"unknown argument '{key}': not a yolo-nexp or Ultralytics argument; see 'yolo-nexp help'."
            )
    if not isinstance(plugin["trust"], bool):
        raise UsageError(f"trust must be True or False; got {plugin['trust']!r}.")
    try:
        check_prune_args(**prune_kwargs(plugin))
    except ValueError as e:
        raise UsageError(str(e)) from None
    # Ultralytics' own type and range checks, up front so a bad value fails before anything is written.
    try:
        check_cfg({k: v for k, v in ultralytics.items() if not (k == "epochs" and v == 0)})  # epochs=0: prune only
    except (TypeError, ValueError) as e:
        raise UsageError(str(e).replace("ERROR ❌ ", "")) from None
    return plugin, ultralytics


def _rows(text: str) -> str:
    """One ``key: default   comment`` row per line of a ``default.yaml`` block (comment-only lines continue a row)."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return "\n".join(
        f"    {ln.split('#')[0].strip():<24}{ln.split('#', 1)[1].strip() if '#' in ln else ''}" for ln in lines
    )


def _usage() -> str:
    """Usage text: the plugin's arguments, then the job's Ultralytics defaults, with their defaults and comments."""
    plugin, found, ultralytics = (configs_dir() / "default.yaml").read_text().partition("\nultralytics:\n")
    if not found:
        raise RuntimeError("configs/default.yaml has no top-level 'ultralytics:' block.")
    return USAGE.format(plugin=_rows(plugin), ultralytics=_rows(ultralytics))


def entrypoint(argv: list[str] | None = None) -> int:
    """Run ``yolo-nexp``; returns the exit code (0 ok, 1 export parity failed, 2 bad arguments or inputs, 130 interrupted)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("help", "--help", "-h"):
        print(_usage())
        return 0
    mode, pairs = argv[0], argv[1:]
    if mode not in MODES:
        LOGGER.error(f"yolo-nexp: unknown mode '{mode}', expected one of {', '.join(MODES)}; see 'yolo-nexp help'.")
        return 2
    verbose = any(p.replace(" ", "").lower() == "verbose=true" for p in pairs)  # tracebacks only when asked
    try:
        plugin, overrides = parse_args(pairs)
        from yolo_nexp.job import run_export, run_prune

        if mode == "prune":
            run_prune(plugin, overrides, command=" ".join(["yolo-nexp", *argv]))
        else:
            run_export(plugin, overrides)
    except (ValueError, FileNotFoundError, TypeError) as e:  # UsageError is a ValueError
        if verbose:
            LOGGER.exception("yolo-nexp: traceback")
        LOGGER.error(f"yolo-nexp: {e}")
        return 2
    except ParityError as e:
        LOGGER.error(f"yolo-nexp: {e}")
        return 1
    except KeyboardInterrupt:
        LOGGER.error("yolo-nexp: interrupted.")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint())
