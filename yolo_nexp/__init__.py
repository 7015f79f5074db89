"""yolo-nexp: structured channel pruning of Ultralytics YOLOv8 driven by Neural Expressiveness (NEXP)."""

__version__ = "0.1.0"

from yolo_nexp.checkpoints.loader import load
from yolo_nexp.pruning.pruner import prune
from yolo_nexp.report import PruneReport
from yolo_nexp.scoring.calibration import score
from yolo_nexp.training.callback import NexpPruneCallback, attach
from yolo_nexp.training.trainers import NexpTrainer, trainer_for

__all__ = [
    "__version__",
    "NexpPruneCallback",
    "NexpTrainer",
    "PruneReport",
    "attach",
    "load",
    "prune",
    "score",
    "trainer_for",
]
