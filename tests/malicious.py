"""A corpus of malicious checkpoints: each would create a marker file when unpickled without restriction.

Every entry is a real torch zip checkpoint whose ``data.pkl`` runs its payload under stock ``torch.load`` /
``YOLO(path)`` (``tests/test_loading.py`` checks that too, so that "the marker never appears" means something).
"""

from __future__ import annotations

import functools
import importlib
import operator
import os
import pydoc
import runpy
import subprocess
import zipfile
from pathlib import Path

import torch
from ultralytics.nn.modules.block import TorchVision


class Call:
    """Pickles as ``func(*args)``; ``func`` may itself be a :class:`Call` (a computed callable)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args

    def __call__(self, *args):  # pickle only accepts a callable as what __reduce__ calls
        raise RuntimeError("a payload stand-in is never called here")


def _touch(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _sh(marker: Path) -> str:
    return f"touch {marker}"


def _os_module() -> Call:
    return Call(importlib.import_module, "os")


def write_raw(path: Path, data: bytes) -> Path:
    """A torch zip checkpoint whose ``data.pkl`` is exactly ``data`` (for pickles the pickler would not write)."""
    torch.save({}, path)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(path, "w") as z:
        for name, blob in members.items():
            z.writestr(name, data if name.endswith("/data.pkl") else blob)
    return path


def _str(text: str) -> bytes:
    """The opcode pushing ``text`` (BINUNICODE: any protocol from 1 on)."""
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def _global_call(module: str, name: str, arg: str) -> bytes:
    """Protocol-2 ``module.name(arg)`` with a GLOBAL opcode naming ``module`` as given (e.g. ``os`` or ``nt``)."""
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + _str(arg) + b"\x85R."


def _shuffled_stack_global(cmd: str) -> bytes:
    """Protocol 4: pushes ``posix``, ``system``, then an allowed name that it POPs again, so only a replay of the
    stack sees that STACK_GLOBAL resolves ``posix.system`` (the last two strings in the file name torch's helper)."""
    names = b"".join(_str(x) for x in ("posix", "system", "torch._utils", "_rebuild_tensor_v2"))
    return b"\x80\x04" + names + b"00\x93" + _str(cmd) + b"\x85R."


def _dotted_stack_global(cmd: str) -> bytes:
    """Protocol 4 ``STACK_GLOBAL('torch.serialization', 'os.system')``: an allowed package, a dotted name."""
    return b"\x80\x04" + _str("torch.serialization") + _str("os.system") + b"\x93" + _str(cmd) + b"\x85R."


def corpus(tmp: Path, stock: Path) -> dict[str, tuple[Path, Path, list[str]]]:
    """Write every malicious checkpoint under ``tmp``; ``stock`` is a stock checkpoint to hide payloads in.

    Returns:
        (dict): name -> (checkpoint, marker file its payload would create, globals a refusal must name).
    """
    out = {}

    def add(name: str, payload, names: list[str], protocol: int = 2, raw: bool = False):
        path, marker = tmp / f"{name}.pt", tmp / f"pwned-{name}"
        body = payload(marker)
        if raw:
            write_raw(path, body)
        else:
            torch.save(body if isinstance(body, dict) else {"model": body}, path, pickle_protocol=protocol)
        out[name] = (path, marker, names)

    add("posix_system", lambda m: Call(os.system, _sh(m)), ["posix.system"])
    add("os_system", lambda m: _global_call("os", "system", _sh(m)), ["os.system"], raw=True)
    add("nt_system", lambda m: _global_call("nt", "system", _sh(m)), ["nt.system"], raw=True)
    add("subprocess_popen", lambda m: Call(subprocess.Popen, ["touch", str(m)]), ["subprocess.Popen"])
    add("builtins_exec", lambda m: Call(exec, _touch(m)), ["builtins.exec"])
    add("builtins_eval", lambda m: Call(eval, _touch(m)), ["builtins.eval"])
    add(
        "builtins_getattr_import",
        lambda m: Call(Call(getattr, Call(__import__, "os"), "system"), _sh(m)),
        ["builtins.getattr", "builtins.__import__"],
    )
    add(
        "operator_methodcaller",
        lambda m: Call(Call(operator.methodcaller, "system", _sh(m)), _os_module()),
        ["operator.methodcaller", "importlib.import_module"],
    )
    add(
        "operator_attrgetter",
        lambda m: Call(Call(Call(operator.attrgetter, "system"), _os_module()), _sh(m)),
        ["operator.attrgetter", "importlib.import_module"],
    )
    add("functools_partial", lambda m: Call(Call(functools.partial, os.system, _sh(m))), ["functools.partial"])
    add("pydoc_locate", lambda m: Call(Call(pydoc.locate, "os.system"), _sh(m)), ["pydoc.locate"])

    def run_path(m: Path):
        script = tmp / f"script-{m.name}.py"
        script.write_text(_touch(m))
        return Call(runpy.run_path, str(script))

    add("runpy_run_path", run_path, ["runpy.run_path"])

    def nested(key: str, attr: str | None):
        def build(m: Path):
            ckpt = torch.load(stock, weights_only=False)
            if attr:  # an attribute of the EMA model
                ckpt[key] = ckpt["model"]
                setattr(ckpt[key], attr, Call(exec, _touch(m)))
            else:
                ckpt[key] = {**(ckpt.get(key) or {}), "data": Call(os.system, _sh(m))}
            return ckpt

        return build

    def in_yaml(edit):
        def build(m: Path):
            ckpt = torch.load(stock, weights_only=False)
            edit(ckpt["model"].yaml, m)
            return ckpt

        return build

    add("in_train_args", nested("train_args", None), ["posix.system"])
    add("in_ema", nested("ema", "hook"), ["builtins.exec"])
    # Clean pickles whose model yaml runs code when Ultralytics rebuilds the model from it (e.g. stock training).
    add(
        "yaml_activation",
        in_yaml(lambda y, m: y.update(activation=f"__import__('os').system('touch {m}')")),
        ["model.yaml activation"],
    )
    inner = tmp / "inner.pt"  # the layer below calls torch_safe_load (unrestricted) on this file (a quoted literal)
    torch.save(Call(os.system, f"touch {tmp / 'pwned-yaml_layer'}"), inner)
    add(
        "yaml_layer",
        in_yaml(lambda y, m: y["head"].insert(0, [-1, 1, "torch_safe_load", [repr(str(inner))]])),
        ["model.yaml layer 'torch_safe_load'"],
    )
    # An allowed layer class called with arguments: its __init__ would run (this one fetches torchvision models).
    add(
        "layer_class_called",
        lambda m: Call(TorchVision, "no_such_model"),
        [f"{TorchVision.__module__}.TorchVision (called)"],
    )
    for protocol in range(6):
        add(f"protocol_{protocol}", lambda m: Call(os.system, _sh(m)), ["posix.system"], protocol=protocol)
    add("shuffled_stack_global", lambda m: _shuffled_stack_global(_sh(m)), ["posix.system"], raw=True)
    add(
        "dotted_name_in_torch",
        lambda m: _dotted_stack_global(_sh(m)),
        ["torch.serialization.os.system"],
        raw=True,
    )
    assert sorted(out) == sorted(NAMES)
    return out


NAMES = [
    *("posix_system", "os_system", "nt_system", "subprocess_popen", "builtins_exec", "builtins_eval"),
    *("builtins_getattr_import", "operator_methodcaller", "operator_attrgetter", "functools_partial"),
    *("pydoc_locate", "runpy_run_path", "in_train_args", "in_ema", "yaml_activation", "yaml_layer"),
    *("layer_class_called", "shuffled_stack_global", "dotted_name_in_torch"),
    *(f"protocol_{p}" for p in range(6)),
]
CANNOT_RUN_HERE = {"nt_system"} if os.name == "posix" else {"posix_system"}  # each OS has only one of the two
RUN_ON_REBUILD = {"yaml_activation", "yaml_layer"}  # run when the model is rebuilt from its yaml, not when unpickled
NO_PAYLOAD = {"layer_class_called"}  # refused for how it uses an allowed class; runs nothing of its own here
