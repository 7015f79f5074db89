"""Official COCO metrics: the class-id and image-id mappings are proven by ground-truth round trips."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from yolo_nexp.coco import NOT_AVAILABLE, category_ids, evaluate, find_annotations, image_ids, to_coco_results

from .conftest import IMGSZ, prune_report

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco128"


def load_coco(path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def ground_truth_as_yolo_predictions(coco: COCO, names: dict[int, str]):
    """The json's own boxes, expressed as the plugin's predictions: (file name, YOLO class, xyxy pixels, score).

    Written independently of the code under test: YOLO ids come from the data's names, files from the json.
    """
    yolo_id = {c["id"]: next(i for i, n in names.items() if n == c["name"]) for c in coco.dataset["categories"]}
    out = []
    for img in coco.dataset["images"]:
        anns = [a for a in coco.imgToAnns[img["id"]] if not a.get("iscrowd")]
        boxes = np.array(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        ).reshape(-1, 4)
        out.append((img["file_name"], np.array([yolo_id[a["category_id"]] for a in anns]), boxes, np.ones(len(anns))))
    return out


def ap(coco, predictions, names, files, shift_class=0, shift_image=0):
    """AP@[.5:.95] of ``predictions`` through the plugin's mappings, optionally with ids deliberately shifted."""
    cats = category_ids(names, coco)
    ids = image_ids(files, coco)
    if shift_class:
        cats = {i: cats[(i + shift_class) % len(cats)] for i in cats}
    if shift_image:
        order = sorted(ids)
        ids = {name: ids[order[(k + shift_image) % len(order)]] for k, name in enumerate(order)}
    return evaluate(coco, to_coco_results(predictions, ids, cats), list(ids.values()))["map"]


@pytest.fixture
def gapped_coco(tmp_path):
    """A json with gapped category ids (1, 5, 90) and image ids unrelated to file names or order."""
    rng = np.random.default_rng(0)
    images = [
        {"id": i, "file_name": f"img{k}.jpg", "width": 200, "height": 100} for k, i in enumerate([1001, 7, 42, 9])
    ]
    cats = [{"id": 5, "name": "b"}, {"id": 1, "name": "a"}, {"id": 90, "name": "c"}]
    anns = []
    for img in images:
        for _ in range(4):
            x, y = rng.uniform(0, 120), rng.uniform(0, 50)
            w, h = rng.uniform(10, 70), rng.uniform(10, 45)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img["id"],
                    "category_id": int(rng.choice([1, 5, 90])),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return load_coco(path), {0: "a", 1: "b", 2: "c"}, [Path(i["file_name"]) for i in images]


def test_gapped_ids_ground_truth_round_trip(gapped_coco):
    coco, names, files = gapped_coco
    assert category_ids(names, coco) == {0: 1, 1: 5, 2: 90}
    preds = ground_truth_as_yolo_predictions(coco, names)
    assert ap(coco, preds, names, files) == pytest.approx(1.0)
    assert ap(coco, preds, names, files, shift_class=1) < 0.5
    assert ap(coco, preds, names, files, shift_image=1) < 0.5


def test_category_ids_fall_back_to_sorted_order(gapped_coco):
    coco, _, _ = gapped_coco
    assert category_ids({0: "x", 1: "y", 2: "z"}, coco) == {0: 1, 1: 5, 2: 90}  # COCO's 0-79 -> 1-90 convention
    with pytest.raises(ValueError, match="categories"):
        category_ids({0: "x", 1: "y"}, coco)


@pytest.mark.skipif(not COCO128.is_dir(), reason="needs ../shared/datasets/coco128")
def test_coco128_ground_truth_round_trip():
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(COCO128 / "coco128.yaml"), autodownload=False)
    annotations = find_annotations(data)
    assert annotations == COCO128 / "annotations" / "instances_train2017.json"  # found by Ultralytics' layout
    coco = load_coco(annotations)
    files = sorted((COCO128 / "images" / "train2017").glob("*.jpg"))
    cats = category_ids(data["names"], coco)
    assert (cats[0], cats[11], cats[79]) == (1, 13, 90)  # person, stop sign (COCO skips 12), toothbrush
    preds = ground_truth_as_yolo_predictions(coco, data["names"])
    assert ap(coco, preds, data["names"], files) == pytest.approx(1.0)
    assert ap(coco, preds, data["names"], files, shift_class=1) < 0.2
    assert ap(coco, preds, data["names"], files, shift_image=1) < 0.1


def _json_from_yolo_labels(data_yaml: Path, split: str, out: Path, names: dict) -> Path:
    """A COCO json for a YOLO-format split (gapped category ids 10, 20, ...; image ids 100, 101, ...)."""
    root = data_yaml.parent
    images, anns = [], []
    for k, f in enumerate(sorted((root / "images" / split).glob("*.jpg"))):
        images.append({"id": 100 + k, "file_name": f.name, "width": IMGSZ, "height": IMGSZ})
        for c, x, y, w, h in np.loadtxt(root / "labels" / split / f"{f.stem}.txt", ndmin=2):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": 100 + k,
                    "category_id": 10 * (int(c) + 1),
                    "iscrowd": 0,
                    "bbox": [(x - w / 2) * IMGSZ, (y - h / 2) * IMGSZ, w * IMGSZ, h * IMGSZ],
                    "area": w * h * IMGSZ**2,
                }
            )
    cats = [{"id": 10 * (i + 1), "name": n} for i, n in names.items()]
    out.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return out


def test_report_has_both_figures_with_a_json(tiny_data, tmp_path):
    import yaml

    names = yaml.safe_load(tiny_data.read_text())["names"]
    coco_json = _json_from_yolo_labels(tiny_data, "val", tmp_path / "instances.json", names)
    report = prune_report(tiny_data, tmp_path, "c", f"coco_json={coco_json}")
    for stage in ("dense", "pruned"):
        coco = report["stages"][stage]["coco"]
        assert coco["split"] == "val" and coco["images"] == 4 and 0.0 <= coco["map"] <= coco["map50"] <= 1.0
        assert "map" in report["stages"][stage]  # Ultralytics' own figure stays, next to it


def test_report_says_not_available_without_json(tiny_data, tmp_path):
    report = prune_report(tiny_data, tmp_path, "n")
    assert report["coco"] == NOT_AVAILABLE
    assert "coco" not in report["stages"]["dense"]  # no silent zero
