"""Open a checkpoint so that nothing in it can run: ``yolo_nexp.load(path)`` instead of ``YOLO(path)``.

Unpickling a checkpoint may call any function it names (``os.system``, ``builtins.exec``...), and stock
``YOLO(path)`` unpickles without restriction. Here the file is first scanned (:mod:`yolo_nexp.checkpoints.safety`,
which names what it refuses), then read by torch's restricted unpickler (``weights_only=True``) given
only the allowed globals the file uses (:mod:`yolo_nexp.checkpoints.allowlist`), and the ``YOLO`` is built from that
dict: the file is never unpickled without restriction. What Ultralytics later rebuilds from the model's
yaml is checked too (its ``activation`` is ``eval``-ed and its layer names looked up in a module).
"""

from __future__ import annotations

import ast
import pickle
import threading
import warnings
from pathlib import Path

import torch
import ultralytics.nn.tasks as tasks
from ultralytics import YOLO
from ultralytics.cfg import DEFAULT_CFG_DICT
from ultralytics.utils.files import get_latest_run

from yolo_nexp.checkpoints.allowlist import module_classes, safe_globals_for
from yolo_nexp.checkpoints.safety import check_checkpoint, refusal
from yolo_nexp.utils import first_line

_LOCK = threading.Lock()  # torch's safe globals are process-wide: one restricted load at a time
_TRUSTED: set[Path] = set()  # files the user vouched for with load(path, trust=True), e.g. to resume them


def read_checkpoint(path: str | Path, arg: str = "model") -> dict:
    """The checkpoint dict, unpickled by torch's restricted unpickler after the file passed the scan.

    Raises:
        FileNotFoundError: If there is no such file.
        ValueError: If it is not a readable Ultralytics checkpoint.
        UnsafeCheckpointError: If it refers to anything outside the allowlist (nothing was unpickled then).
    """
    refs = check_checkpoint(path, arg=arg)
    with _LOCK:
        registered = set(torch.serialization.get_safe_globals())
        needed = [g for g in safe_globals_for(refs.names) if g not in registered]
        try:
            with torch.serialization.safe_globals(needed), warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Detected pickle protocol")  # refused below if it matters
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # the guard refused what the scan let through: still a refusal
            raise refusal(path, [f"torch's restricted unpickler: {first_line(e)}"], arg) from None
        except Exception as e:  # a damaged storage (RuntimeError), or state an allowed class cannot take
            why = first_line(e)
            raise ValueError(f"{arg}: '{path}' is corrupt ({why}); re-save or re-download it.") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("ema") or ckpt.get("model"), torch.nn.Module):
        raise ValueError(f"{arg}: '{path}' holds no Ultralytics model (a dict with 'model' or 'ema'); give a .pt.")
    found = unsafe_contents(ckpt)
    if found:
        raise refusal(path, found, arg)
    return ckpt


def unsafe_contents(ckpt: dict) -> list[str]:
    """What Ultralytics would later run from a loaded checkpoint's data: QAT restore, or its model yaml."""
    found = []
    if ckpt.get("modelopt"):  # restore_qat pip-installs and runs nvidia-modelopt on the file's state
        found.append("modelopt (QAT state, restored by installing nvidia-modelopt)")
    for key in ("model", "ema"):
        if isinstance(ckpt.get(key), torch.nn.Module):
            found += [f"{key}.yaml {x}" for x in unsafe_yaml(getattr(ckpt[key], "yaml", None))]
    return found


def unsafe_yaml(cfg) -> list[str]:
    """What in a model yaml dict ``parse_model`` would run beyond building allowed layers from literals.

    ``parse_model`` ``eval``-s ``activation``, resolves a layer name in ``ultralytics.nn.tasks``' globals and calls
    it with the layer's arguments, and a yaml given as a path (or URL) is fetched and parsed the same way.
    """
    if cfg is None:
        return []
    if not isinstance(cfg, dict):
        return [f"is a {type(cfg).__name__}, not a dict"]
    found = [] if _is_literal_nn_call(cfg.get("activation")) else [f"activation {cfg['activation']!r}"]
    layers = [layer for part in ("backbone", "head") for layer in cfg.get(part) or []]
    classes = set(module_classes().values())
    for layer in layers:
        name = layer[2] if isinstance(layer, (list, tuple)) and len(layer) == 4 else None
        if not isinstance(name, str):
            found.append(f"layer {layer!r}")
        elif name.startswith("nn.") and getattr(torch.nn, name[3:], None) in classes:
            continue
        elif name.startswith("nn.") or getattr(tasks, name, None) not in classes:
            found.append(f"layer {name!r}")
    return found


def _is_literal_nn_call(act) -> bool:
    """Whether ``act`` is absent or ``[torch.]nn.<Module>(<literals>)``, what ``parse_model``'s ``eval`` may see."""
    if act is None:
        return True
    try:
        call = ast.parse(str(act).strip(), mode="eval").body
        func = ast.unparse(call.func)
        layer = getattr(torch.nn, func.rpartition(".")[2], None)
        for a in [*call.args, *(k.value for k in call.keywords)]:
            ast.literal_eval(a)
    except (SyntaxError, ValueError, AttributeError, TypeError):
        return False
    return func.rpartition(".")[0] in ("nn", "torch.nn") and layer in set(module_classes().values())


def model_from_checkpoint(ckpt: dict, path: str | Path) -> torch.nn.Module:
    """The float32 eval-mode model of a checkpoint dict, prepared as ``ultralytics.nn.tasks.load_checkpoint`` does."""
    model = (ckpt.get("ema") or ckpt.get("model")).float()
    model.args = {**DEFAULT_CFG_DICT, **(ckpt.get("train_args") or {})}  # the model's args win over defaults
    model.pt_path = str(path)
    model.task = getattr(model, "task", None) or tasks.guess_model_task(model)
    if not hasattr(model, "stride"):
        model.stride = torch.tensor([32.0])
    model.eval()
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = True
        elif isinstance(m, torch.nn.Upsample) and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None  # torch 1.11 compatibility, as Ultralytics does
    return model


class _CheckedYOLO(YOLO):
    """``YOLO`` whose ``_load`` takes a checkpoint dict already read by :func:`read_checkpoint`, not the file."""

    def __init__(self, path: str, ckpt: dict):
        object.__setattr__(self, "_checked_ckpt", ckpt)  # before nn.Module.__init__, so not through its __setattr__
        super().__init__(path)

    def _load(self, weights: str, task: str | None = None) -> None:
        """``Model._load`` for a ``.pt``, with the checked dict in place of ``load_checkpoint(weights)``."""
        self.ckpt = self.__dict__.pop("_checked_ckpt")
        self.model = model_from_checkpoint(self.ckpt, weights)
        self.task = self.model.task
        self.overrides = self.model.args = self._reset_ckpt_args(self.model.args)
        if "://" in str(self.overrides.get("data", "")):  # a remote data yaml's `download:` script would be run
            del self.overrides["data"]
        self.ckpt_path = self.model.pt_path
        self.overrides.update(model=weights, task=self.task)
        self.model_name = weights


def load(path: str | Path, trust: bool = False) -> YOLO:
    """An Ultralytics ``YOLO`` from a ``.pt`` checkpoint, loaded so that nothing in the file can run.

    Use it instead of ``YOLO(path)`` for a file from elsewhere: stock ``YOLO(path)`` unpickles without restriction.

    Args:
        path (str | Path): A ``.pt`` checkpoint saved by Ultralytics (dense, pruned, trained, with EMA/optimizer).
        trust (bool): Load with stock ``YOLO(path)``, whatever the file refers to: only for a file you trust. It
            is also remembered for this process, so that ``NexpTrainer`` may resume from it.

    Returns:
        (YOLO): The model, ready for ``predict``, ``val``, ``train(trainer=yolo_nexp.NexpTrainer)``, ``export``, ``save``.

    Raises:
        FileNotFoundError: If there is no such file.
        ValueError: If it is not a readable Ultralytics checkpoint.
        UnsafeCheckpointError: If it refers to code a stock checkpoint does not; nothing in it ran.

    Examples:
        >>> model = yolo_nexp.load("downloaded.pt")
        >>> model.val(data="coco128.yaml")
    """
    path = Path(path)
    if trust:
        _TRUSTED.add(path.resolve())
        return YOLO(str(path))
    yolo = _CheckedYOLO(str(path), read_checkpoint(path))
    if type(yolo) is _CheckedYOLO:  # YOLO.__init__ re-classes RT-DETR/World/YOLOE models itself
        yolo.__class__ = YOLO
    return yolo


def check_resume(resume) -> None:
    """Refuse the checkpoint a trainer's ``resume`` argument names, before Ultralytics' trainer unpickles it.

    The file is resolved as ``BaseTrainer.check_resume`` does (the path, or the latest run's last.pt) and read
    with :func:`read_checkpoint`; files passed to ``load(path, trust=True)`` in this process are not checked.

    Raises:
        ValueError: If it is not a readable Ultralytics checkpoint.
        UnsafeCheckpointError: If it refers to code a stock checkpoint does not.
    """
    if not resume:
        return
    exists = isinstance(resume, (str, Path)) and Path(resume).exists()
    path = Path(resume if exists else get_latest_run() or "")
    if path.is_file() and path.resolve() not in _TRUSTED:  # a missing one is Ultralytics' error to report
        read_checkpoint(path, arg="resume")
