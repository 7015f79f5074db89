"""yolo-nexp: structured channel pruning of Ultralytics YOLOv8 and YOLO11 (detect, segment, pose, obb) by NEXP.

NEXP (Neural Expressiveness, :mod:`yolo_nexp.scoring.nexp`) scores a channel by how differently it fires on
different images. Channels are ranked by it or by a related activation statistic (the criteria of
:mod:`yolo_nexp.scoring.criteria`; the default ``nexp_lsq`` weighs the part of a channel's spread that the kept
channels cannot predict by its consumers' use of it; ``nexp_use`` the whole spread) and the lowest-ranked are
removed, in whole coupled groups, keeping stock Ultralytics modules.
"""

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
