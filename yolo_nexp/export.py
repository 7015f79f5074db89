"""Export a pruned checkpoint through Ultralytics' own exporter, and check ONNX against PyTorch.

Nothing here is pruning-specific on purpose: a pruned model is an ordinary Ultralytics model, so
``yolo export model=pruned.pt format=onnx`` works as well. This adds the parity check that proves
the exported file computes what the PyTorch model does.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from ultralytics import YOLO
from ultralytics.data.augment import LetterBox
from ultralytics.utils import LOGGER
from ultralytics.utils.metrics import box_iou

from .loading import load

RAW_ATOL = 1e-4  # fp32: max abs difference allowed between PyTorch and onnxruntime raw outputs
MARGIN = 1e-3  # detections within this relative distance above the threshold are not compared


class ParityError(RuntimeError):
    """The exported ONNX model does not compute what the PyTorch model does."""


def export(
    model: str | Path,
    format: str = "onnx",
    imgsz: int = 640,
    check: bool = True,
    images=None,
    trust: bool = False,
    **kwargs,
) -> dict:
    """Export ``model`` with Ultralytics; for ONNX, also run :func:`onnx_parity`.

    Args:
        model (str | Path): A ``.pt`` checkpoint (pruned or not).
        format (str): Any Ultralytics export format.
        imgsz (int): Export input size.
        check (bool): Run the ONNX parity check after exporting.
        images (list | None): Images for the detection comparison (default: random images).
        trust (bool): Open ``model`` with stock ``YOLO(path)`` instead of :func:`yolo_nexp.load` (restricted).
        **kwargs: Other Ultralytics export arguments (opset, simplify, dynamic, half, ...).

    Returns:
        (dict): ``{"file": exported path, "parity": parity results or None}``.

    Raises:
        ParityError: If raw outputs differ beyond ``RAW_ATOL`` (the file is kept, for inspection). Detections that
            differ although raw outputs agree are reported with a warning: NMS broke a near-tie another way.
    """
    file = load(model, trust=trust).export(format=format, imgsz=imgsz, **kwargs)
    parity = None
    if check and format == "onnx" and not kwargs.get("half") and not kwargs.get("int8"):
        parity = onnx_parity(model, file, imgsz=imgsz, images=images, trust=trust)
        raw = parity["raw_max_abs_diff"]
        LOGGER.info(
            f"yolo-nexp: ONNX parity: raw max |diff| scores {raw['scores']:.1e}, boxes {raw['boxes_rel']:.1e} of imgsz "
            f"({raw['boxes_px']:.1e} px) (limit {RAW_ATOL:g}); detections after NMS identical on "
            f"{parity['images_matched']}/{parity['images']} images ({parity['detections']} compared)"
        )
        if not parity["raw_ok"]:
            raise ParityError(f"export: ONNX output of '{file}' differs from PyTorch: {parity}")
        if not parity["detections_match"]:  # raw outputs agree, so NMS broke a near-tie differently
            LOGGER.warning(
                "yolo-nexp: some detections differ although raw outputs agree: NMS resolved boxes whose scores or "
                "overlaps tie to the 7th digit differently (common with untrained models, rare with trained ones)."
            )
    return {"file": str(file), "parity": parity}


def _raw_diffs(
    model: str | Path, onnx_file: str | Path, inputs: list[np.ndarray], imgsz: int, trust: bool = False
) -> dict:
    """Largest |PyTorch - onnxruntime| on output 0, PyTorch fused as the exporter fuses.

    Output 0 holds decoded boxes in pixels (rows 0-3) and class scores (rows 4+). A box coordinate
    near 640 is only representable to ~6e-5 in fp32, so boxes are also compared in units of the
    input size: that is where a 1e-4 absolute limit is meaningful.
    """
    import onnxruntime as ort

    torch_model = load(model, trust=trust).model.float().fuse().eval()
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    boxes = scores = 0.0
    for x in inputs:
        with torch.inference_mode():
            ref = torch_model(torch.from_numpy(x))
        diff = np.abs((ref[0] if isinstance(ref, (list, tuple)) else ref).numpy() - session.run(None, {name: x})[0])
        boxes, scores = max(boxes, float(diff[:, :4].max())), max(scores, float(diff[:, 4:].max()))
    return {"boxes_px": boxes, "boxes_rel": boxes / imgsz, "scores": scores}


def _match_detections(a, b, floor: float, atol: float = 1e-3, iou: float = 0.7) -> tuple[bool, int]:
    """Whether both backends' detections above ``floor`` pair up one to one (same class, confidence within
    ``atol``, IoU at least ``iou``, the NMS threshold). Returns (match, detections compared).

    Boxes within a hair of the threshold are left out: a difference in the 7th digit may legitimately
    move them across it. Pairing by IoU rather than by identity lets NMS break a tie between two
    overlapping boxes of equal score (to the 7th digit) either way.
    """
    a, b = a[a.conf > floor], b[b.conf > floor]
    if len(a) != len(b):
        return False, max(len(a), len(b))
    free = torch.ones(len(b), dtype=torch.bool)
    overlap = box_iou(a.xyxy, b.xyxy) if len(a) else None
    for i in torch.argsort(a.conf, descending=True).tolist():
        ok = free & (b.cls == a.cls[i]) & ((b.conf - a.conf[i]).abs() <= atol) & (overlap[i] >= iou)
        if not ok.any():
            return False, len(a)
        j = int(torch.where(ok, overlap[i], torch.tensor(-1.0)).argmax())
        free[j] = False
    return True, len(a)


def _threshold_for(pt: YOLO, image, imgsz: int, k: int) -> float:
    """PyTorch's k-th highest confidence after NMS on ``image``: untrained models score everything low,
    and a fixed threshold would compare empty lists."""
    conf = np.sort(pt.predict(image, imgsz=imgsz, conf=1e-9, max_det=k, verbose=False)[0].boxes.conf.numpy())
    return float(conf[0]) if len(conf) else 1e-9


def onnx_parity(
    model: str | Path,
    onnx_file: str | Path,
    imgsz: int = 640,
    images=None,
    n: int = 2,
    seed: int = 0,
    conf: float | None = None,
    top_k: int = 50,
    trust: bool = False,
) -> dict:
    """Compare onnxruntime with PyTorch: raw outputs on random inputs, and detections after NMS on images.

    Args:
        model (str | Path): The ``.pt`` checkpoint.
        onnx_file (str | Path): Its ONNX export (static shape ``imgsz``).
        imgsz (int): Input size of the export.
        images (list | None): Image paths or arrays for the detection comparison; default ``n`` random images.
        n (int): Random inputs for the raw comparison (and images, when none are given).
        seed (int): Seed of the random inputs.
        conf (float | None): Confidence threshold; None sets it per image at PyTorch's ``top_k``-th detection.
        top_k (int): About how many detections per image are compared when ``conf`` is None.
        trust (bool): Open ``model`` with stock ``YOLO(path)`` instead of :func:`yolo_nexp.load` (restricted).

    Returns:
        (dict): raw max |diff| (boxes in pixels and relative to imgsz, scores), raw_ok, images, images_matched
            (identical detections), detections (compared), detections_match (on every image).
    """
    rng = np.random.default_rng(seed)
    inputs = [rng.random((1, 3, imgsz, imgsz), dtype=np.float32) for _ in range(n)]
    raw = _raw_diffs(model, onnx_file, inputs, imgsz, trust=trust)
    if images is None:
        images = [(rng.random((imgsz, imgsz, 3)) * 255).astype(np.uint8) for _ in range(n)]
    pt, ox = load(model, trust=trust), YOLO(str(onnx_file), task="detect")  # an .onnx file is not unpickled
    matched, count = 0, 0
    for im in images:
        # Square letterbox first: Ultralytics feeds a .pt the smallest stride-multiple rectangle but a static ONNX
        # the full square, and the comparison must be of the same input.
        im = LetterBox((imgsz, imgsz), auto=False)(image=cv2.imread(str(im)) if isinstance(im, (str, Path)) else im)
        floor = _threshold_for(pt, im, imgsz, top_k) if conf is None else conf
        kw = dict(imgsz=imgsz, conf=floor * (1 - MARGIN), verbose=False)  # a little below, so NMS sees the same boxes
        a, b = pt.predict(im, **kw)[0].boxes.cpu(), ox.predict(im, **kw)[0].boxes.cpu()
        ok, compared = _match_detections(a, b, floor=floor * (1 + MARGIN))
        matched, count = matched + ok, count + compared
    return {
        "raw_max_abs_diff": raw,
        "raw_ok": raw["boxes_rel"] <= RAW_ATOL and raw["scores"] <= RAW_ATOL,
        "images": len(images),
        "detections": count,
        "images_matched": matched,
        "detections_match": matched == len(images),
    }
