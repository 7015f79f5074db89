"""yolo-nexp: structured channel pruning of Ultralytics YOLOv8 driven by Neural Expressiveness (NEXP)."""

__version__ = "0.1.0"

from .calibration import score
from .callback import NexpPruneCallback, attach
from .loading import load
from .pruner import prune
from .report import PruneReport
from .trainer import NexpTrainer, trainer_for

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
