"""The synthetic dataset's shapes as polygons, so that what is drawn and what is labelled are the same geometry.

Each shape fills a box of half-size ``(a, b)`` centred on the origin, optionally rotated. Hollow shapes (ring,
bar) are single "keyhole" polygons: the outer outline, a zero-width bridge, the inner outline backwards;
``cv2.fillPoly`` draws them with their hole, and Ultralytics rasterises a segmentation label the same way.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("rectangle", "ellipse", "triangle", "cross", "ring", "diamond", "star", "bar")


def _ellipse(a: float, b: float, n: int = 32, reverse: bool = False) -> np.ndarray:
    """``n + 1`` points around an ellipse from angle 0 back to angle 0 (closed, so a keyhole bridge is straight)."""
    t = np.linspace(0, 2 * np.pi, n + 1)
    t = t[::-1] if reverse else t
    return np.stack([a * np.cos(t), b * np.sin(t)], 1)


def _rect(a: float, b: float, reverse: bool = False) -> np.ndarray:
    """A closed rectangle outline starting and ending at ``(a, 0)``."""
    pts = np.array([(a, 0), (a, b), (-a, b), (-a, -b), (a, -b), (a, 0)], float)
    return pts[::-1] if reverse else pts


def outline(shape: str, a: float, b: float) -> np.ndarray:
    """The shape's polygon (N, 2) in box coordinates (x right, y down), filling the box ``[-a, a] x [-b, b]``."""
    t = 0.3 * min(a, b)  # stroke half-width of crosses, rings and bars
    if shape == "rectangle":
        return np.array([(-a, -b), (a, -b), (a, b), (-a, b)], float)
    if shape == "ellipse":
        return _ellipse(a, b)[:-1]
    if shape == "triangle":
        return np.array([(0, -b), (a, b), (-a, b)], float)
    if shape == "cross":
        return np.array(
            [(-t, -b), (t, -b), (t, -t), (a, -t), (a, t), (t, t), (t, b), (-t, b), (-t, t), (-a, t), (-a, -t), (-t, -t)]
        )
    if shape == "ring":
        return np.concatenate([_ellipse(a, b), _ellipse(a - t, b - t, reverse=True)])
    if shape == "diamond":
        return np.array([(0, -b), (a, 0), (0, b), (-a, 0)], float)
    if shape == "star":
        ang = np.linspace(0, 2 * np.pi, 11)[:-1] - np.pi / 2
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([rad * np.cos(ang) * a, rad * np.sin(ang) * b], 1)
    if shape == "bar":  # a hollow rectangle
        return np.concatenate([_rect(a, b), _rect(a - t, b - t, reverse=True)])
    raise ValueError(f"unknown shape '{shape}', choose one of {', '.join(SHAPES)}.")


def corners(a: float, b: float) -> np.ndarray:
    """The box's corners, clockwise from top-left (top-left, top-right, bottom-right, bottom-left)."""
    return np.array([(-a, -b), (a, -b), (a, b), (-a, b)], float)


def place(points: np.ndarray, centre: tuple[float, float], angle: float = 0.0) -> np.ndarray:
    """Rotate box coordinates by ``angle`` (radians, clockwise on screen) and move them to ``centre``."""
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]]) + np.asarray(centre, float)


def extent(a: float, b: float, angle: float) -> tuple[float, float]:
    """Half-width and half-height of the axis-aligned box around a box of half-size ``(a, b)`` rotated by ``angle``."""
    c, s = abs(np.cos(angle)), abs(np.sin(angle))
    return a * c + b * s, a * s + b * c
