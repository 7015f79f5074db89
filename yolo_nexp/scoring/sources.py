"""Calibration sources for NEXP scoring: random noise, a folder of images, a data yaml, or a loader."""

from __future__ import annotations

import random
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np
import torch
from ultralytics.data.augment import LetterBox
from ultralytics.data.utils import IMG_FORMATS, check_det_dataset


def image_files(path: str | Path | list) -> list[Path]:
    """Image files of a folder (recursive), a ``.txt`` list of images, a single image, or a list of these."""
    if isinstance(path, (list, tuple)):
        return [f for p in path for f in image_files(p)]
    path = Path(path)
    if path.is_dir():
        return sorted(f for f in path.rglob("*") if f.suffix[1:].lower() in IMG_FORMATS)
    if path.suffix == ".txt" and path.is_file():
        lines = (ln.strip() for ln in path.read_text().splitlines())
        return [(path.parent / ln).resolve() if ln.startswith("./") else Path(ln) for ln in lines if ln]
    if path.suffix[1:].lower() in IMG_FORMATS and path.is_file():
        return [path]
    raise FileNotFoundError(f"no images at '{path}': give a folder of images, a .txt list, or an image file.")


def train_images(data_yaml: str | Path) -> list[Path]:
    """Images of the train split of an Ultralytics data yaml (never downloads)."""
    data = check_det_dataset(str(data_yaml), autodownload=False)
    return image_files(data["train"])


def load_letterboxed(file: Path, imgsz: int) -> torch.Tensor:
    """Read one image as an RGB float tensor (3, imgsz, imgsz) in [0, 1], letterboxed like Ultralytics does."""
    im = cv2.imread(str(file))
    if im is None:
        raise ValueError(f"cannot read image '{file}'")
    im = LetterBox((imgsz, imgsz), auto=False)(image=im)
    return torch.from_numpy(np.ascontiguousarray(im[..., ::-1].transpose(2, 0, 1))).float() / 255.0


def _image_batches(files: list[Path], batches: int, imgsz: int, batch: int, seed: int, part) -> Iterator[torch.Tensor]:
    """Batches of a seeded sample of ``files``; the last batch may be smaller if there are too few images."""
    if not files:
        raise FileNotFoundError("the calibration source contains no images.")
    files = random.Random(seed).sample(files, min(len(files), batches * batch))
    for i in range(0, len(files), batch)[part[0] :: part[1]]:  # only the part's batches are read
        yield torch.stack([load_letterboxed(f, imgsz) for f in files[i : i + batch]])


def _noise_batches(batches: int, imgsz: int, batch: int, seed: int, part) -> Iterator[torch.Tensor]:
    """Uniform noise images, reproducible from ``seed`` (a part draws the whole stream and keeps its batches)."""
    gen = torch.Generator().manual_seed(seed)
    for i in range(batches):
        images = torch.rand(batch, 3, imgsz, imgsz, generator=gen)
        if i % part[1] == part[0]:
            yield images


def _loader_batches(loader: Iterable, batches: int, part) -> Iterator[torch.Tensor]:
    """Image tensors in [0, 1] from an iterable of tensors or Ultralytics batch dicts (uint8 ``"img"``)."""
    for item in islice(loader, part[0], batches, part[1]):
        images = item["img"] if isinstance(item, dict) else item
        yield images.float() / 255.0 if images.dtype == torch.uint8 else images


def calibration_batches(
    source, batches: int = 4, imgsz: int = 640, batch: int = 8, seed: int = 0, part: tuple[int, int] = (0, 1)
) -> Iterator[torch.Tensor]:
    """Yield up to ``batches`` float image batches (B, 3, H, W) in [0, 1] from a calibration source.

    Args:
        source (str | Path | Iterable): ``"noise"``, a data yaml (train split), a folder/list/.txt of images,
            or an iterable of batches (tensors or Ultralytics batch dicts).
        batches (int): Number of batches.
        imgsz (int): Square size images are letterboxed to (noise is drawn at this size).
        batch (int): Images per batch for noise and image files.
        seed (int): Seed for the noise and for which images are drawn.
        part (tuple[int, int]): ``(index, count)``: only the batches at positions ``index, index + count, ...``
            of the ``batches`` (how several pruning passes share one set of calibration images).
    """
    if batches < 1 or batch < 1:
        raise ValueError(f"'batches' and 'batch' must be at least 1, got batches={batches}, batch={batch}.")
    if isinstance(source, str) and source == "noise":
        return _noise_batches(batches, imgsz, batch, seed, part)
    if isinstance(source, (str, Path)):
        files = train_images(source) if str(source).endswith((".yaml", ".yml")) else image_files(source)
        return _image_batches(files, batches, imgsz, batch, seed, part)
    if isinstance(source, list):
        return _image_batches(image_files(source), batches, imgsz, batch, seed, part)
    return _loader_batches(source, batches, part)
