"""The demo model: what ``yolo-nexp prune`` prunes when no ``model=`` is given.

A yolov8n trained on a seeded synthetic dataset (:func:`yolo_nexp.synthetic.dataset.make_dataset`) once, on first
use, and cached beside the dataset, so that the job's first run prunes a model that detects and its table shows
what pruning costs and what recovery wins back. Nothing is downloaded and nothing is committed: the checkpoint lives
in the plugin's cache folder, under a key made of every setting that determines it (the fields of
:class:`DemoSettings`, the generator's ``SYNTHETIC_VERSION``, :data:`DEMO_VERSION`, and the Ultralytics and torch
versions), so any change trains a new one.

The checkpoint counts as cached only when its manifest (``demo.json``, written after it) exists, names the same
settings and holds the checkpoint's SHA-256: a run interrupted while training, or a truncated file, is never used.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import ultralytics
from ultralytics.utils import LOGGER

from yolo_nexp.synthetic.dataset import SYNTHETIC_VERSION, make_dataset
from yolo_nexp.utils import atomic_write

DEMO = "demo"  # the job's default model (configs/default.yaml): this module's model
DEMO_VERSION = 1  # bump when the training below changes, so cached demo models are retrained
FALLBACK = "yolov8n.yaml"  # no model given and data that is not the synthetic data: a random-init yolov8n, as before


@dataclass(frozen=True)
class DemoSettings:
    """How the demo model and its data are made, chosen by measurement on a busy 2-core CPU: these settings reach
    mAP50-95 0.38 in 20 epochs (about 2.5 minutes), 0.32 in 15; 8 classes reached 0.31 in 20 epochs, and 8 classes
    with objects down to 5% of the image at 128 px only 0.15 in 15 epochs at batch 16 (0.11 with the default ``nbs`` 64).

    Attributes:
        model (str): Model yaml trained from random init.
        n_train (int): Training images of the dataset.
        n_val (int): Validation images.
        imgsz (int): Image side, for the data, the training and the job.
        nc (int): Classes (shapes of distinct hues).
        max_objects (int): Most objects per image.
        sizes (tuple[float, float]): Range of an object's sides, as fractions of the image side.
        epochs (int): Training epochs.
        batch (int): Batch size; also Ultralytics' nominal batch ``nbs`` (one optimizer step per batch, not
            one per 64 images: 4-8 times the steps in the same time, which is what makes a short run converge).
        optimizer (str): Optimizer of the training.
        lr0 (float): Initial learning rate of the training.
        warmup_epochs (float): Warm-up epochs (Ultralytics' default would spend 3 of the 20).
        seed (int): Seed of the data and of the training.
        workers (int): Dataloader workers.
    """

    model: str = "yolov8n.yaml"
    n_train: int = 256
    n_val: int = 64
    imgsz: int = 96
    nc: int = 4
    max_objects: int = 4
    sizes: tuple[float, float] = (0.2, 0.6)
    epochs: int = 20
    batch: int = 8
    optimizer: str = "AdamW"
    lr0: float = 0.003
    warmup_epochs: float = 1.0
    seed: int = 0
    workers: int = 2

    def data_key(self) -> str:
        """The dataset's folder name: every argument of the generator, and its version."""
        lo, hi = self.sizes
        return (
            f"demo-data-v{SYNTHETIC_VERSION}-{self.n_train}-{self.n_val}-{self.imgsz}-c{self.nc}-o{self.max_objects}-"
            f"s{lo:g}-{hi:g}-seed{self.seed}"
        )

    def key(self) -> str:
        """The checkpoint's cache key: a hash of every setting and version that determines the trained model."""
        fields = asdict(self)
        versions = {"synthetic": SYNTHETIC_VERSION, "demo": DEMO_VERSION}
        versions.update(ultralytics=ultralytics.__version__, torch=torch.__version__)
        text = json.dumps({"settings": fields, "versions": versions}, sort_keys=True, default=list)
        return f"{Path(self.model).stem}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"

    def describe(self) -> str:
        """How the demo model is made, in words."""
        return (
            f"{Path(self.model).stem} from random init, {self.epochs} epochs ({self.optimizer} lr0 {self.lr0:g}, batch "
            f"{self.batch}) on {self.n_train} synthetic images of {self.imgsz} px, {self.nc} classes"
        )

    def job_defaults(self) -> dict:
        """The prune job's Ultralytics defaults with the demo model, where not given: its image size and batch, and
        one optimizer step per batch while recovering too (the job's other defaults apply as to any model)."""
        return {"imgsz": self.imgsz, "batch": self.batch, "nbs": self.batch}


SETTINGS = DemoSettings()  # the demo the job uses (tests replace it with a tiny one)


def make_data(cache: Path, settings: DemoSettings | None = None) -> Path:
    """The demo dataset's yaml, generated once under ``cache``."""
    s = settings or SETTINGS
    root = Path(cache) / s.data_key()
    return make_dataset(root, s.n_train, s.n_val, s.imgsz, s.nc, s.seed, s.max_objects, sizes=s.sizes)


def _sha256(path: Path) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached(folder: Path, settings: DemoSettings) -> Path | None:
    """The cached checkpoint in ``folder``, or None unless its manifest names these settings and its hash."""
    checkpoint, manifest = folder / "demo.pt", folder / "demo.json"
    try:
        info = json.loads(manifest.read_text())
        ok = info["key"] == settings.key() and checkpoint.is_file() and info["sha256"] == _sha256(checkpoint)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return checkpoint if ok else None


def _train(settings: DemoSettings, data: Path, folder: Path) -> Path:
    """Train the demo model in a temporary run folder, then write ``demo.pt`` and its manifest atomically."""
    from ultralytics import YOLO

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "demo.json").unlink(missing_ok=True)  # a checkpoint without its manifest is never used
    runs = Path(tempfile.mkdtemp(prefix=".train-", dir=folder))
    s = settings
    try:
        metrics = YOLO(s.model).train(
            data=str(data),
            epochs=s.epochs,
            imgsz=s.imgsz,
            batch=s.batch,
            nbs=s.batch,
            optimizer=s.optimizer,
            lr0=s.lr0,
            warmup_epochs=s.warmup_epochs,
            seed=s.seed,
            workers=s.workers,
            project=str(runs),
            name="demo",
            exist_ok=True,
            plots=False,
        )
        best = runs / "demo" / "weights" / "best.pt"
        checkpoint = atomic_write(folder / "demo.pt", lambda tmp: shutil.copyfile(best, tmp))
        box = getattr(metrics, "box", None)
        manifest = {
            "key": s.key(),
            "settings": asdict(s),
            "sha256": _sha256(checkpoint),
            "map50-95": float(box.map) if box is not None else None,
        }
        atomic_write(folder / "demo.json", lambda tmp: tmp.write_text(json.dumps(manifest, indent=2, default=list)))
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    return checkpoint


def checkpoint(cache: Path, settings: DemoSettings | None = None) -> Path:
    """The demo model's checkpoint: from the cache, or trained now (once) and cached under ``cache``."""
    s = settings or SETTINGS
    folder = Path(cache) / "demo" / s.key()
    found = cached(folder, s)
    if found is not None:
        return found
    data = make_data(cache, s)
    LOGGER.info(f"yolo-nexp: no model given: training the demo model once ({s.describe()}), cached in {folder}")
    return _train(s, data, folder)


def resolve(overrides: dict, cache: Path) -> dict:
    """The job's Ultralytics arguments with ``model`` resolved: the demo model when none (or ``demo``) is given.

    With the synthetic data (the default ``data``), the demo checkpoint (trained once), its dataset, and
    :meth:`DemoSettings.job_defaults` for the keys not given; with other data, a random-init ``yolov8n.yaml``, the
    default before the demo (the demo model knows only the synthetic classes). An explicit model is left as it is.
    """
    overrides = dict(overrides)
    if str(overrides.get("model", DEMO)) != DEMO:
        return overrides
    if overrides.get("data") not in (None, "", "synthetic"):
        LOGGER.info(f"yolo-nexp: no model given, data={overrides['data']}: pruning {FALLBACK} (random init)")
        return {**overrides, "model": FALLBACK}
    s = SETTINGS
    return {**s.job_defaults(), **overrides, "model": str(checkpoint(cache, s)), "data": str(make_data(cache, s))}
