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
from ultralytics.nn.modules import OBB, Pose, Segment
from ultralytics.utils import LOGGER
from ultralytics.utils.metrics import box_iou

from yolo_nexp.checkpoints.loader import load

RAW_ATOL = 1e-4  # fp32: max abs difference allowed between PyTorch and onnxruntime raw outputs
TASKLESS = ("boxes_px", "boxes_rel", "scores")  # raw differences every task has
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
            f"({raw['boxes_px']:.1e} px){_task_summary(raw)} (limit {RAW_ATOL:g}); detections after NMS identical on "
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


def _task_summary(raw: dict) -> str:
    """The task outputs' differences, for the log line."""
    return "".join(f", {k.replace('_', ' ')} {v:.1e}" for k, v in raw.items() if k not in TASKLESS)


def _exported_outputs(out) -> list[torch.Tensor]:
    """What the exported graph returns, from the PyTorch eval output: the decoded predictions (and Segment's
    prototypes), without the raw per-level dict that only PyTorch returns."""
    first = out[0] if isinstance(out, (list, tuple)) else out
    return list(first) if isinstance(first, (list, tuple)) else [first]


def _task_rows_diff(diff: np.ndarray, head, imgsz: int) -> dict:
    """Largest difference in output 0's rows after the class scores: mask coefficients (Segment), keypoints
    (Pose: x and y in pixels, compared relative to imgsz like boxes; visibility as a probability) or angles (OBB)."""
    rows = diff[:, 4 + head.nc :]
    if not rows.size:
        return {}
    if isinstance(head, Pose):
        ndim = head.kpt_shape[1]
        pixels = np.arange(rows.shape[1]) % ndim < 2
        return {"keypoints_rel": float(max(rows[:, pixels].max() / imgsz, rows[:, ~pixels].max(initial=0.0)))}
    return {"angles" if isinstance(head, OBB) else "mask_coefficients": float(rows.max())}


def _raw_diffs(
    model: str | Path, onnx_file: str | Path, inputs: list[np.ndarray], imgsz: int, trust: bool = False
) -> dict:
    """Largest |PyTorch - onnxruntime| on every output, PyTorch fused as the exporter fuses.

    Output 0 holds decoded boxes in pixels (rows 0-3), class scores, then the task's rows (see
    :func:`_task_rows_diff`); a segmentation model's output 1 holds the mask prototypes. A box coordinate
    near 640 is only representable to ~6e-5 in fp32, so boxes (and keypoints) are also compared in units of
    the input size: that is where a 1e-4 absolute limit is meaningful.
    """
    import onnxruntime as ort

    torch_model = load(model, trust=trust).model.float().fuse().eval()
    head = torch_model.model[-1]
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    result: dict = {}
    for x in inputs:
        with torch.inference_mode():
            ref = [t.numpy() for t in _exported_outputs(torch_model(torch.from_numpy(x)))]
        got = session.run(None, {name: x})
        diff = np.abs(ref[0] - got[0])
        found = {"boxes_px": float(diff[:, :4].max()), "scores": float(diff[:, 4 : 4 + head.nc].max())}
        found.update(_task_rows_diff(diff, head, imgsz))
        if isinstance(head, Segment):
            found["prototypes"] = float(np.abs(ref[1] - got[1]).max())
        result = {k: max(v, result.get(k, 0.0)) for k, v in found.items()}
    return {**result, "boxes_rel": result["boxes_px"] / imgsz}


def _detections(result):
    """The detections of one Ultralytics result: rotated boxes for OBB, boxes otherwise."""
    return result.obb if result.obb is not None else result.boxes


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
    conf = np.sort(_detections(pt.predict(image, imgsz=imgsz, conf=1e-9, max_det=k, verbose=False)[0]).conf.numpy())
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
        (dict): raw max |diff| (boxes in pixels and relative to imgsz, scores, and the task's outputs: mask
            coefficients and prototypes, keypoints relative to imgsz, or angles), raw_ok, images, images_matched
            (identical detections), detections (compared), detections_match (on every image).
    """
    rng = np.random.default_rng(seed)
    inputs = [rng.random((1, 3, imgsz, imgsz), dtype=np.float32) for _ in range(n)]
    raw = _raw_diffs(model, onnx_file, inputs, imgsz, trust=trust)
    if images is None:
        images = [(rng.random((imgsz, imgsz, 3)) * 255).astype(np.uint8) for _ in range(n)]
    pt = load(model, trust=trust)
    ox = YOLO(str(onnx_file), task=pt.task)  # an .onnx file is not unpickled
    matched, count = 0, 0
    for im in images:
        # Square letterbox first: Ultralytics feeds a .pt the smallest stride-multiple rectangle but a static ONNX
        # the full square, and the comparison must be of the same input.
        im = LetterBox((imgsz, imgsz), auto=False)(image=cv2.imread(str(im)) if isinstance(im, (str, Path)) else im)
        floor = _threshold_for(pt, im, imgsz, top_k) if conf is None else conf
        kw = dict(imgsz=imgsz, conf=floor * (1 - MARGIN), verbose=False)  # a little below, so NMS sees the same boxes
        a, b = _detections(pt.predict(im, **kw)[0]).cpu(), _detections(ox.predict(im, **kw)[0]).cpu()
        ok, compared = _match_detections(a, b, floor=floor * (1 + MARGIN))
        matched, count = matched + ok, count + compared
    return {
        "raw_max_abs_diff": raw,
        "raw_ok": all(v <= RAW_ATOL for k, v in raw.items() if k != "boxes_px"),
        "images": len(images),
        "detections": count,
        "images_matched": matched,
        "detections_match": matched == len(images),
    }
