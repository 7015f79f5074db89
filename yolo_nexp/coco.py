"""Official COCO metrics (pycocotools' COCOeval) next to Ultralytics' own mAP.

Two mappings must be right for the numbers to mean anything: YOLO's contiguous class ids (0-79)
to COCO's category ids (1-90 with gaps), and image files to COCO image ids. Both are read from the
annotation json itself (category names, ``file_name``), never assumed from file stems.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from ultralytics.utils import LOGGER

from yolo_nexp.scoring.sources import image_files

NOT_AVAILABLE = "not available: the data has no COCO-format annotation json (give coco_json=path/to/instances.json)"


def find_annotations(data: dict, coco_json=None) -> Path | None:
    """The annotation json: ``coco_json`` if given, else Ultralytics' coco.yaml layout
    (``<path>/annotations/instances_<split>.json``, val split first), else None.

    Raises:
        FileNotFoundError: If an explicit ``coco_json`` does not exist.
    """
    if coco_json:
        if not Path(coco_json).is_file():
            raise FileNotFoundError(f"coco_json: '{coco_json}' not found.")
        return Path(coco_json)
    root = Path(data.get("path", "."))
    for split in ("val", "train"):
        if isinstance(data.get(split), (str, Path)):
            candidate = root / "annotations" / f"instances_{Path(data[split]).stem}.json"
            if candidate.is_file():
                return candidate
    return None


def category_ids(names: dict[int, str], coco) -> dict[int, int]:
    """YOLO class id -> COCO category id, by category name; by sorted id when the names differ but counts agree.

    The sorted-id rule is how COCO is converted to YOLO's contiguous ids (0-79 -> 1-90 with gaps).

    Raises:
        ValueError: If neither names nor counts match.
    """
    cats = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
    by_name = {c["name"]: c["id"] for c in cats}
    if all(n in by_name for n in names.values()):
        return {i: by_name[n] for i, n in names.items()}
    if len(cats) == len(names):
        return {i: cats[k]["id"] for k, i in enumerate(sorted(names))}
    raise ValueError(
        f"coco_json: its {len(cats)} categories match neither the names nor the count of the data's classes."
    )


def image_ids(files: list[Path], coco) -> dict[str, int]:
    """Image file name -> COCO image id, from the json's ``file_name`` entries, for the files the json covers."""
    by_name = {Path(img["file_name"]).name: img["id"] for img in coco.dataset["images"]}
    return {f.name: by_name[f.name] for f in files if f.name in by_name}


def to_coco_results(predictions, image_id: dict[str, int], category_id: dict[int, int]) -> list[dict]:
    """COCO result dicts from predictions ``(file name, classes[N], boxes xyxy pixels [N, 4], scores[N])``."""
    results = []
    for name, classes, boxes, scores in predictions:
        for c, (x1, y1, x2, y2), s in zip(classes, boxes, scores):
            results.append(
                {
                    "image_id": image_id[name],
                    "category_id": category_id[int(c)],
                    "bbox": [
                        round(float(x1), 3),
                        round(float(y1), 3),
                        round(float(x2 - x1), 3),
                        round(float(y2 - y1), 3),
                    ],
                    "score": round(float(s), 5),
                }
            )
    return results


def evaluate(coco, results: list[dict], img_ids: list[int]) -> dict:
    """COCOeval bbox on ``img_ids``: {"map": AP@[.5:.95], "map50": AP@.5} (0 when there are no detections)."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {"map": 0.0, "map50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and table
        cocoeval = COCOeval(coco, coco.loadRes(results), "bbox")
        cocoeval.params.imgIds = sorted(img_ids)
        cocoeval.evaluate()
        cocoeval.accumulate()
        cocoeval.summarize()
    return {"map": float(cocoeval.stats[0]), "map50": float(cocoeval.stats[1])}


def coco_split(data: dict, coco) -> tuple[str, list[Path]]:
    """The data split whose images the json covers best (val preferred on a tie), and those images."""
    annotated = {Path(img["file_name"]).name for img in coco.dataset["images"]}
    best = ("val", [])
    for split in ("val", "train"):
        try:
            files = image_files(data[split])
        except (FileNotFoundError, KeyError, TypeError):
            continue
        covered = [f for f in files if f.name in annotated]
        if len(covered) > len(best[1]):
            best = (split, covered)
    if not best[1]:
        raise ValueError("coco_json: none of the data's images appear in the annotation json.")
    return best


def coco_metrics(
    yolo,
    data: dict,
    annotations: Path,
    imgsz: int,
    batch: int = 16,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
) -> dict:
    """Predict on the images the json covers and score with pycocotools.

    Predictions use Ultralytics' predict (letterbox, NMS at ``conf``/``iou`` as its validator does),
    boxes in original image pixels.

    Returns:
        (dict): map, map50, split, images, annotations (json path).
    """
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(annotations))
    split, files = coco_split(data, coco)
    predictions = []
    for i in range(0, len(files), batch):
        chunk = [str(f) for f in files[i : i + batch]]
        for f, r in zip(chunk, yolo.predict(chunk, imgsz=imgsz, conf=conf, iou=iou, max_det=max_det, verbose=False)):
            b = r.boxes.cpu()
            predictions.append((Path(f).name, b.cls.numpy(), b.xyxy.numpy(), b.conf.numpy()))
    ids = image_ids(files, coco)
    metrics = evaluate(coco, to_coco_results(predictions, ids, category_ids(data["names"], coco)), list(ids.values()))
    LOGGER.info(
        f"yolo-nexp: pycocotools on {len(files)} {split} images: mAP50-95 {metrics['map']:.4f}, mAP50 {metrics['map50']:.4f}"
    )
    return {**metrics, "split": split, "images": len(files), "annotations": str(annotations)}
