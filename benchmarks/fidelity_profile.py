"""What the real-model fidelity set asks of a model: the labels' confidence and size, and which head level finds them.

The fidelity labels are the dense model's own detections at conf 0.25 on COCO128 (``benchmarks/real_model.py``).
This script prints, for the dense model and the default prune at each ``--macs`` cut:

- the dense model's confidence on the detections that became labels (percentiles), and the labels' sizes;
- mAP50-95 with the classes, and class-agnostic (``single_cls=True``: a Normal/Fall swap is no longer a miss);
- mAP50-95 with each Detect level switched off (its class logits pushed down by 30), to show where the
  detections come from.

The pruned models are the default prune (``yolo_nexp.prune`` with its defaults, ``macs=`` each of ``--macs``,
``round_to=1``, calibration 4 batches of 8 training images at 640 px, seed 0), as in the real-model criteria tables.

Usage:
    python benchmarks/fidelity_profile.py --macs 0.25 0.46 --out benchmarks/results/fidelity_profile-real.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import command_line, publish  # noqa: E402
from benchmarks.real_model import RealModel, validate  # noqa: E402


def label_profile(real: RealModel) -> tuple[np.ndarray, np.ndarray]:
    """The dense model's confidence on each val detection at the labels' threshold, and each val label's size (px)."""
    from ultralytics import YOLO

    root = Path(real.data()).parent
    model = YOLO(str(real.weights()))
    conf = []
    for f in sorted((root / "images" / "val").glob("*.jpg")):
        conf += model.predict(str(f), imgsz=real.imgsz, conf=real.label_conf, verbose=False)[0].boxes.conf.tolist()
    sizes = []
    for f in (root / "labels" / "val").glob("*.txt"):
        for line in f.read_text().splitlines():
            _, _, _, w, h = map(float, line.split())
            sizes.append((w * h) ** 0.5 * real.imgsz)
    return np.array(conf), np.array(sizes)


def level_off(model, level: int):
    """``model`` with Detect level ``level``'s class logits pushed down by 30 (that level detects nothing)."""
    with torch.no_grad():
        model.model.model[-1].cv3[level][-1].bias -= 30.0
    return model


def pruned_copy(real: RealModel, data: str, macs: float, folder: Path) -> str:
    """The default prune of the real model to ``macs``, saved in ``folder``; its path."""
    from ultralytics import YOLO

    import yolo_nexp

    model = YOLO(str(real.weights()))
    yolo_nexp.prune(
        model, macs=macs, source=data, imgsz=real.imgsz, round_to=1, seed=0, verbose=False, batches=4, batch=8
    )
    path = folder / f"pruned-{macs:g}.pt"
    model.save(str(path))
    return str(path)


def profile(path: str, data: str, real: RealModel) -> list[str]:
    """mAP50-95, class-agnostic mAP50-95, and mAP50-95 with each level off, formatted."""
    from ultralytics import YOLO

    cells = [validate(YOLO(path), data, real.imgsz)["map"]]
    cells.append(validate_agnostic(YOLO(path), data, real.imgsz))
    cells += [validate(level_off(YOLO(path), lvl), data, real.imgsz)["map"] for lvl in range(3)]
    return [f"{c:.3f}" for c in cells]


def validate_agnostic(model, data: str, imgsz: int) -> float:
    """Class-agnostic mAP50-95, NMS never cut (as :func:`real_model.validate`, with ``single_cls=True``)."""
    from yolo_nexp.validation import uncut_nms

    with uncut_nms() as cuts:
        m = model.val(
            data=data, imgsz=imgsz, batch=16, rect=False, plots=False, verbose=False, workers=0, single_cls=True
        )
    if cuts.count:
        raise RuntimeError("NMS time limit fired although lifted")
    return float(m.box.map)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--macs", type=float, nargs="*", default=[0.25, 0.46], help="MACs cuts to prune and profile")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    real = RealModel()
    data = real.data()
    conf, sizes = label_profile(real)
    q = (10, 25, 50, 75, 90)
    lines = [
        "# The real-model fidelity set: what its labels are, and where a model finds them",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Baseline: {real.describe()}.",
        "",
        f"- Dense confidence on the {len(conf)} val detections at conf >= {real.label_conf} (the labels), percentiles "
        f"{'/'.join(map(str, q))}: {' / '.join(f'{v:.2f}' for v in np.percentile(conf, q))}; above 0.5: "
        f"{(conf > 0.5).sum()}, above 0.7: {(conf > 0.7).sum()} (``predict`` letterboxes to a rectangle, the labels "
        "were made on squares: the counts differ slightly).",
        f"- Label sizes (sqrt of box area, px at {real.imgsz}), same percentiles: "
        f"{' / '.join(f'{v:.0f}' for v in np.percentile(sizes, q))}; under 64 px: {(sizes < 64).sum()} of {len(sizes)}.",
        "",
        "mAP50-95 on the fidelity set (square inputs, NMS never cut). 'agnostic': `single_cls=True`; 'P3/P4/P5 off': that "
        "Detect level's class logits pushed down by 30, so it detects nothing.",
        "",
        "| model | mAP50-95 | agnostic | P3 off | P4 off | P5 off |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        models = [("dense", str(real.weights()))]
        models += [(f"default prune, -{m:.0%} MACs", pruned_copy(real, data, m, Path(tmp))) for m in args.macs]
        for name, path in models:
            lines.append(f"| {name} | " + " | ".join(profile(path, data, real)) + " |")
            print(lines[-1], flush=True)
    publish("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
