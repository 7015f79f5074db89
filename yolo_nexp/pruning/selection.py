"""Candidates: prune the model several times, keep the prune whose detections stay closest to the dense model's.

On a real model one-shot accuracy at a given MACs cut moves a lot with the calibration draw and the sensitivity
estimate's random projections (README: at -25% MACs the same settings kept 0.45-0.72 mAP50-95 over seeds), and
which prune is better shows on images it was not calibrated on: the pruned model's detections are compared with
the dense model's, as the real-model benchmark's fidelity does, on a separate draw of the calibration source.
``self_fidelity`` is that comparison: mAP50-95 of the model's detections (validation's conf 0.001, NMS IoU 0.7)
against the dense model's at conf 0.25, matched and averaged by Ultralytics' own validator code. Boxes are compared
axis-aligned (an OBB model's angle is ignored) and mask or keypoint outputs are not compared.
"""

from __future__ import annotations

from copy import deepcopy
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from ultralytics.engine.validator import BaseValidator
from ultralytics.utils import nms
from ultralytics.utils.metrics import ap_per_class, box_iou

from yolo_nexp.utils import chunks, mode

REFERENCE_CONF = 0.25  # the dense detections a prune is compared with (Ultralytics' predict default)
VAL_CONF, VAL_IOU = 0.001, 0.7  # validation's own thresholds for the pruned model's detections
IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)  # mAP50-95, as DetectionValidator.iouv


@torch.no_grad()
def detections(det: nn.Module, images: list[torch.Tensor], conf: float) -> list[torch.Tensor]:
    """Per image, the model's detections ``(n, 6)``: xyxy, confidence, class (NMS never cut short)."""
    out, nc = [], det.model[-1].nc
    with mode(det):
        for batch in images:
            for chunk in chunks(batch):
                pred = det(chunk)
                pred = pred[0] if isinstance(pred, (tuple, list)) else pred
                out += nms.non_max_suppression(pred, conf, VAL_IOU, nc=nc, max_det=300, max_time_img=float("inf"))
    return out


def self_fidelity(det: nn.Module, references: list[torch.Tensor], images: list[torch.Tensor]) -> float:
    """mAP50-95 of ``det``'s detections on ``images`` against ``references`` (the dense model's, per image).

    Returns:
        (float): In [0, 1]; 0 when the references hold no detection at all.
    """
    matcher = SimpleNamespace(iouv=IOU_THRESHOLDS)  # all BaseValidator.match_predictions reads
    tp, conf, pred_cls, target_cls = [], [], [], []
    for pred, ref in zip(detections(det, images, VAL_CONF), references):
        target_cls.append(ref[:, 5].numpy())
        conf.append(pred[:, 4].numpy())
        pred_cls.append(pred[:, 5].numpy())
        if len(ref) and len(pred):
            iou = box_iou(ref[:, :4], pred[:, :4])
            tp.append(BaseValidator.match_predictions(matcher, pred[:, 5], ref[:, 5], iou).numpy())
        else:
            tp.append(np.zeros((len(pred), len(IOU_THRESHOLDS)), dtype=bool))
    if not sum(len(t) for t in target_cls):
        return 0.0
    ap = ap_per_class(np.concatenate(tp), *(np.concatenate(x) for x in (conf, pred_cls, target_cls)))[5]
    return float(ap.mean()) if ap.size else 0.0


SELECTION_SEED = 7919  # added to the job's seed: the images candidates are compared on are a draw of their own


def prune_candidates(det: nn.Module, candidates: int, prune_one, images, seed: int, verbose: bool = True):
    """Prune ``candidates`` copies of ``det`` (seeds ``seed``, ``seed + 1``, ...), keep the best in ``det``.

    Args:
        det (nn.Module): The detection model, modified in place: its layers become the chosen candidate's.
        candidates (int): How many prunes to compare.
        prune_one (Callable): ``prune_one(model, seed)`` prunes ``model`` in place and returns its report.
        images (list[torch.Tensor]): Batches the candidates are compared on (not the calibration draw).
        seed (int): The first candidate's seed.
        verbose (bool): Log each candidate's fidelity.

    Returns:
        (tuple[PruneReport, list[float], int]): The chosen prune's report (its seconds summed over every candidate),
        every candidate's self-fidelity and the chosen one's index.

    Raises:
        ValueError: When the dense model detects nothing on ``images`` (noise, or images of another domain): there
            is nothing to compare the candidates on.
    """
    from ultralytics.utils import LOGGER

    references = detections(det, images, REFERENCE_CONF)
    if not any(len(r) for r in references):
        raise ValueError(
            f"candidates={candidates}: the dense model detects nothing at conf {REFERENCE_CONF} on the calibration "
            "source's images, so the prunes cannot be compared; give images of the model's domain (source=) or "
            "candidates=1."
        )
    scores, reports, best = [], [], None
    for k in range(candidates):
        copy = deepcopy(det)
        reports.append(prune_one(copy, seed + k))
        scores.append(self_fidelity(copy, references, images))
        if verbose:
            LOGGER.info(f"yolo-nexp: candidate {k + 1}/{candidates} (seed {seed + k}): fidelity {scores[-1]:.3f}")
        if best is None or scores[-1] > scores[best[0]]:
            best = (k, copy)
    chosen, winner = best
    det.model = winner.model  # the pruned layers; everything else of a DetectionModel is width-independent
    report = reports[chosen]
    for part in ("seconds_scoring", "seconds_sensitivity", "seconds_surgery", "seconds_reconstruction"):
        setattr(report, part, sum(getattr(r, part) for r in reports))  # what the step cost, every candidate included
    return report, scores, chosen
