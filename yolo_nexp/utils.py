"""Small helpers every stage shares: the cache folder, an all-or-nothing file write, a temporary train/eval mode, an error's first line."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from torch import nn


def cache_dir() -> Path:
    """Where generated data is cached: ``$YOLO_NEXP_CACHE`` or ``~/.cache/yolo-nexp``."""
    return Path(os.environ.get("YOLO_NEXP_CACHE", Path.home() / ".cache" / "yolo-nexp"))


def atomic_write(path: str | Path, write) -> Path:
    """Write a file through ``write(tmp_path)`` to a temporary file beside it, then rename: all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def mode(model: nn.Module, training: bool = False) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (or train mode with ``training=True``) for the block, then restore its mode."""
    was_training = model.training
    model.train(training)
    try:
        yield model
    finally:
        model.train(was_training)


def first_line(e: BaseException) -> str:
    """The first line of an exception's text (its type's name if it has none), without Ultralytics' emoji prefix."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0].replace("ERROR ❌️ ", "").replace("ERROR ❌ ", "")
