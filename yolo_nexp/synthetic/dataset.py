"""A seeded synthetic dataset: shapes of several classes on cluttered backgrounds, in YOLO format, for every task.

Used as the offline default data (no downloads are possible here) and by the tests. Each class is a
shape (filled or outlined) with its own hue range, drawn at many scales over a background of random
gradients, lines and blobs.

- ``detect``: boxes; later objects may partly occlude earlier ones.
- ``segment``, ``pose``, ``obb``: objects do not overlap, and each is drawn from the polygon its label gives
  (:mod:`yolo_nexp.synthetic.shapes`), so labels are exact: ``segment`` labels the shape's polygon (its mask), ``pose``
  the box and four keypoints (the corners of the shape's box, clockwise from top-left, all visible), ``obb``
  the four corners of the shape's box, drawn rotated by a random angle.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import yaml

from yolo_nexp.synthetic.shapes import SHAPES, corners, extent, outline, place

TASKS = ("detect", "segment", "pose", "obb")
KPT_SHAPE = [4, 3]  # pose: four keypoints (x, y, visibility)
FLIP_IDX = [1, 0, 3, 2]  # a left-right flip swaps top-left/top-right and bottom-right/bottom-left
SYNTHETIC_VERSION = 1  # bump when the generator changes, so cached datasets (and models trained on them) are rebuilt


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A gradient with random lines and blobs: clutter that is not an object."""
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, size)[:, None, None]
    img = (c0 * (1 - t) + c1 * t).repeat(size, 1).astype(np.uint8)
    for _ in range(rng.integers(5, 15)):
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(img, tuple(map(int, p1)), tuple(map(int, p2)), tuple(map(int, rng.integers(0, 256, 3))), 1)
    for _ in range(rng.integers(3, 10)):
        centre, r = rng.integers(0, size, 2), int(rng.integers(2, max(3, size // 12)))
        cv2.circle(img, tuple(map(int, centre)), r, tuple(map(int, rng.integers(0, 256, 3))), -1)
    noise = rng.normal(0, 8, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _draw(img: np.ndarray, shape: str, box: tuple[int, int, int, int], colour: tuple[int, ...]) -> None:
    """Draw one object of ``shape`` filling the box (x1, y1, x2, y2)."""
    x1, y1, x2, y2 = box
    cx, cy, w, h = (x1 + x2) // 2, (y1 + y2) // 2, x2 - x1, y2 - y1
    t = max(1, min(w, h) // 5)
    if shape == "rectangle":
        cv2.rectangle(img, (x1, y1), (x2, y2), colour, -1)
    elif shape == "ellipse":
        cv2.ellipse(img, (cx, cy), (w // 2, h // 2), 0, 0, 360, colour, -1)
    elif shape == "triangle":
        cv2.fillPoly(img, [np.array([(cx, y1), (x1, y2), (x2, y2)], np.int32)], colour)
    elif shape == "cross":
        cv2.rectangle(img, (cx - t, y1), (cx + t, y2), colour, -1)
        cv2.rectangle(img, (x1, cy - t), (x2, cy + t), colour, -1)
    elif shape == "ring":
        cv2.ellipse(img, (cx, cy), (w // 2, h // 2), 0, 0, 360, colour, t)
    elif shape == "diamond":
        cv2.fillPoly(img, [np.array([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], np.int32)], colour)
    elif shape == "star":
        ang = np.linspace(0, 2 * np.pi, 11)[:-1] - np.pi / 2
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = np.stack([cx + rad * np.cos(ang) * w / 2, cy + rad * np.sin(ang) * h / 2], 1).astype(np.int32)
        cv2.fillPoly(img, [pts], colour)
    else:  # bar: a hollow rectangle
        cv2.rectangle(img, (x1, y1), (x2, y2), colour, t)


def _colour(rng: np.random.Generator, cls: int, nc: int) -> tuple[int, ...]:
    """A colour in the class's hue band, random saturation and value."""
    hue = int((cls * 180 / nc + rng.integers(0, max(1, 90 // nc))) % 180)
    hsv = np.uint8([[[hue, rng.integers(120, 256), rng.integers(120, 256)]]])
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _image(
    rng: np.random.Generator, size: int, nc: int, max_objects: int, sizes: tuple[float, float] = (0.05, 0.6)
) -> tuple[np.ndarray, list[str]]:
    """One image and its YOLO label lines; object sides are drawn in ``sizes`` (fractions of the image side)."""
    img = _background(rng, size)
    lines = []
    for _ in range(rng.integers(1, max_objects + 1)):
        cls = int(rng.integers(0, nc))
        w, h = (rng.uniform(*sizes, 2) * size).astype(int).clip(6, size - 2)
        x1, y1 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        _draw(img, SHAPES[cls % len(SHAPES)], (x1, y1, x1 + w, y1 + h), _colour(rng, cls, nc))
        lines.append(f"{cls} {(x1 + w / 2) / size:.6f} {(y1 + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}")
    return img, lines


def _free_box(rng: np.random.Generator, size: int, ex: float, ey: float, taken: list) -> tuple | None:
    """A box of half-extents ``(ex, ey)`` inside the image that keeps a pixel away from every ``taken`` box."""
    for _ in range(30):
        cx, cy = rng.uniform(ex, size - ex), rng.uniform(ey, size - ey)
        box = (cx - ex, cy - ey, cx + ex, cy + ey)
        if all(box[0] > t[2] + 1 or box[2] < t[0] - 1 or box[1] > t[3] + 1 or box[3] < t[1] - 1 for t in taken):
            return box
    return None


def _label(task: str, cls: int, polygon: np.ndarray, box: np.ndarray, size: int) -> str:
    """One label line: the polygon (segment), the rotated box's corners (obb), or box and corner keypoints (pose)."""

    def norm(points: np.ndarray) -> str:
        return " ".join(f"{v / size:.6f}" for v in points.reshape(-1))

    if task == "segment":
        return f"{cls} {norm(polygon)}"
    if task == "obb":
        return f"{cls} {norm(box)}"
    (x1, y1), (x2, y2) = box.min(0), box.max(0)
    keypoints = " ".join(f"{x / size:.6f} {y / size:.6f} 2" for x, y in box)
    return f"{cls} {norm(np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]))} {keypoints}"


def _task_image(rng: np.random.Generator, size: int, nc: int, max_objects: int, task: str) -> tuple[np.ndarray, list]:
    """One image of non-overlapping shapes, each drawn from exactly the polygon its label is made from."""
    img = _background(rng, size)
    lines, taken = [], []
    for _ in range(rng.integers(1, max_objects + 1)):
        cls = int(rng.integers(0, nc))
        a, b = (rng.uniform(0.05, 0.6, 2) * size).clip(6, size - 2) / 2
        angle = float(rng.uniform(0, np.pi / 2)) if task == "obb" else 0.0
        ex, ey = extent(a, b, angle)
        fit = min(1.0, (size / 2 - 1) / max(ex, ey))  # a rotated box must still fit in the image
        a, b, ex, ey = a * fit, b * fit, ex * fit, ey * fit
        box = _free_box(rng, size, ex, ey, taken)
        if box is None:
            continue
        taken.append(box)
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        polygon = np.round(place(outline(SHAPES[cls % len(SHAPES)], a, b), centre, angle))  # what is drawn
        cv2.fillPoly(img, [polygon.astype(np.int32)], _colour(rng, cls, nc))
        lines.append(_label(task, cls, polygon, place(corners(a, b), centre, angle), size))
    return img, lines


def make_dataset(
    root: str | Path,
    n_train: int = 64,
    n_val: int = 16,
    imgsz: int = 320,
    nc: int = 8,
    seed: int = 0,
    max_objects: int = 6,
    task: str = "detect",
    sizes: tuple[float, float] = (0.05, 0.6),
) -> Path:
    """Write the dataset under ``root`` (atomically: built in a temporary folder, then renamed) and return its yaml.

    An existing complete dataset at ``root`` is reused as it is.

    Args:
        root (str | Path): Dataset folder.
        n_train (int): Training images.
        n_val (int): Validation images.
        imgsz (int): Image side in pixels.
        nc (int): Number of classes (up to 8 distinct shapes; more classes reuse shapes with other hues).
        seed (int): Seed: the same arguments give the same files.
        max_objects (int): Most objects per image.
        task (str): Labels for ``detect`` (boxes), ``segment`` (polygons), ``pose`` (boxes and four keypoints) or
            ``obb`` (rotated boxes); see the module docstring.
        sizes (tuple[float, float]): Range of an object's width and height, as fractions of the image side
            (``detect`` only; the same seed draws the same images for any range, only their objects' sizes differ).

    Returns:
        (Path): The data yaml, usable as Ultralytics ``data=``.
    """
    if task not in TASKS:
        raise ValueError(f"task: unknown '{task}', choose one of {', '.join(TASKS)}.")
    root = Path(root)
    yaml_file = root / "data.yaml"
    if yaml_file.is_file():
        return yaml_file
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        rng = np.random.default_rng(seed)
        for split, n in (("train", n_train), ("val", n_val)):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            for i in range(n):
                if task == "detect":  # the original generator, draw for draw (cached datasets stay valid)
                    img, lines = _image(rng, imgsz, nc, max_objects, tuple(sizes))
                else:
                    img, lines = _task_image(rng, imgsz, nc, max_objects, task)
                suffix = ".jpg" if task == "detect" else ".png"  # lossless where labels are exact to the pixel
                cv2.imwrite(str(tmp / "images" / split / f"{i:05d}{suffix}"), img)
                (tmp / "labels" / split / f"{i:05d}.txt").write_text("\n".join(lines) + "\n")
        names = {i: f"{SHAPES[i % len(SHAPES)]}{i // len(SHAPES) or ''}" for i in range(nc)}
        data = {"path": str(root.resolve()), "train": "images/train", "val": "images/val", "names": names}
        if task == "pose":
            data.update(kpt_shape=KPT_SHAPE, flip_idx=FLIP_IDX)
        (tmp / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        os.replace(tmp, root)  # atomic: a crash leaves no half-written dataset at root
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return yaml_file
