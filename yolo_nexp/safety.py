"""Safe loading: inspect what a checkpoint's pickle would import before anything is unpickled.

Unpickling imports every class a file names, and Ultralytics goes further: for a module it cannot
import it tries to pip-install a package of that name. A checkpoint naming anything outside
ultralytics, torch, numpy, the standard library and yolo_nexp is refused unless the user trusts it.
"""

from __future__ import annotations

import pickletools
import sys
import zipfile
from pathlib import Path

# "__builtin__" and "copy_reg" are the names protocol-2 pickles give to builtins and copyreg.
ALLOWED_ROOTS = frozenset({"ultralytics", "torch", "numpy", "yolo_nexp", "__builtin__", "copy_reg"}) | frozenset(
    sys.stdlib_module_names
)
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def checkpoint_globals(path: str | Path) -> set[str]:
    """Every ``module.qualname`` the checkpoint's pickle references, read with pickletools (nothing is imported).

    Raises:
        ValueError: If the file is not a torch zip checkpoint or its pickle is unreadable.
    """
    try:
        with zipfile.ZipFile(path) as z:
            pickles = [n for n in z.namelist() if n.endswith(".pkl")]
            if not pickles:
                raise ValueError("it holds no pickle")
            data = [z.read(n) for n in pickles]
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ValueError(
            f"model: '{path}' is not a readable PyTorch checkpoint (corrupt, truncated or another format: {e}); "
            f"give a .pt saved by Ultralytics."
        ) from None
    found = set()
    for blob in data:
        strings = []
        try:
            for op, arg, _ in pickletools.genops(blob):
                if op.name in _STRING_OPS:
                    strings.append(arg)
                elif op.name == "GLOBAL":
                    found.add(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.add(f"{strings[-2]}.{strings[-1]}")
        except Exception as e:  # truncated or corrupt pickle stream
            raise ValueError(
                f"model: '{path}' is corrupt ({type(e).__name__}: {e}); re-save or re-download it."
            ) from None
    return found


def untrusted_globals(path: str | Path) -> list[str]:
    """The references of :func:`checkpoint_globals` outside the allowed modules, sorted."""
    return sorted(g for g in checkpoint_globals(path) if g.split(".")[0] not in ALLOWED_ROOTS)


def check_checkpoint(path: str | Path, trust: bool = False) -> None:
    """Refuse a checkpoint that would import code from outside the allowed modules, unless ``trust``.

    Raises:
        FileNotFoundError: If there is no such file.
        ValueError: If it is not a readable checkpoint, or names untrusted modules and ``trust`` is False.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model: '{path}' not found; give the path of a .pt checkpoint or a model yaml.")
    outside = untrusted_globals(path)
    if outside and not trust:
        names = ", ".join(outside[:5]) + (" ..." if len(outside) > 5 else "")
        raise ValueError(
            f"model: '{path}' refers to code outside ultralytics/torch/numpy/the standard library ({names}); "
            f"loading it would import (or pip-install) that code. Pass trust=True only if you trust the file."
        )
