"""A DetectionTrainer that keeps the pruned architecture (DESIGN.md section 3).

Ultralytics' trainer rebuilds the model from ``model.yaml`` and copies only the tensors whose shapes
match, so a pruned model silently turns back into the dense one. :class:`NexpTrainer` trains the
pruned module itself; for a dense model it behaves exactly like the stock trainer.
"""

from __future__ import annotations

from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import LOGGER, RANK

from .graph import is_pruned


class NexpTrainer(DetectionTrainer):
    """Fine-tune, and resume, a pruned YOLOv8 without losing its architecture.

    Examples:
        >>> from ultralytics import YOLO
        >>> from yolo_nexp import NexpTrainer
        >>> YOLO("pruned.pt").train(trainer=NexpTrainer, data="coco128.yaml", epochs=10)
    """

    def get_model(self, cfg=None, weights=None, verbose: bool = True) -> DetectionModel:
        """The pruned ``weights`` module itself; otherwise the stock model built from ``cfg``.

        Raises:
            ValueError: If a pruned model's class count differs from the data's (its head cannot be rebuilt).
        """
        if isinstance(weights, DetectionModel) and is_pruned(weights):
            nc = weights.model[-1].nc
            if nc != self.data["nc"]:
                raise ValueError(
                    f"data: the pruned model predicts {nc} classes but '{self.args.data}' has "
                    f"{self.data['nc']}. Prune a model trained on this data, or use data with {nc} classes."
                )
            if verbose and RANK in {-1, 0}:
                LOGGER.info(f"NexpTrainer: training the pruned model as it is ({sum(p.numel() for p in weights.parameters()):,} parameters)")
            return self.set_model_names_for_load(weights.float())
        return super().get_model(cfg=cfg, weights=weights, verbose=verbose)
