"""Small helpers every stage shares: the cache folder, an all-or-nothing file write, a temporary train/eval mode, an error's first line, batches cut into chunks."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
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


CHUNK_PIXELS = 4 * 640 * 640  # the most pixels run through a model at once by chunks(): 4 images at 640 px


def chunks(batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A batch of images split into chunks of at most :data:`CHUNK_PIXELS` pixels (at least one image each).

    On a 2-core CPU a backward pass through 16 images at 640 px took 4x as long as the same images in chunks of 4,
    and a forward pass 1.4x (fresh memory for every large activation): passes whose results are sums over images
    run chunk by chunk.
    """
    return batch.split(max(1, CHUNK_PIXELS // (batch.shape[-2] * batch.shape[-1])))
