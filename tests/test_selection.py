"""candidates=: several prunes compared by their detections against the dense model's, on cases worked out by hand."""

import pytest
import torch
from torch import nn
from ultralytics import YOLO

import yolo_nexp
from yolo_nexp.pruning import selection

from .conftest import IMGSZ

NC = 2


class FixedHead(nn.Module):
    """Raw detector output ``(batch, 4 + nc, anchors)`` that does not depend on the image: boxes as xywh."""

    def __init__(self, boxes: list[tuple[float, float, float, float, int, float]]):
        super().__init__()
        self.nc = NC
        self.boxes = boxes
        self.shift = 0.0  # moves every box right by this many pixels

    def forward(self, x):
        out = torch.zeros(x.shape[0], 4 + NC, len(self.boxes))
        for j, (cx, cy, w, h, cls, conf) in enumerate(self.boxes):
            out[:, :4, j] = torch.tensor([cx + self.shift, cy, w, h])
            out[:, 4 + cls, j] = conf
        return out


class FixedDetector(nn.Module):
    """A stand-in for a DetectionModel: ``model[-1]`` is the head, as Ultralytics lays it out."""

    def __init__(self):
        super().__init__()
        self.model = nn.ModuleList([FixedHead([(40, 40, 20, 20, 0, 0.9), (100, 60, 30, 10, 1, 0.6)])])

    def forward(self, x):
        return self.model[-1](x)


def _images(n: int = 2) -> list[torch.Tensor]:
    return [torch.zeros(n, 3, 32, 32)]


def test_the_dense_model_against_its_own_detections_scores_the_top_of_the_ap_scale():
    det = FixedDetector()
    refs = selection.detections(det, _images(), selection.REFERENCE_CONF)
    assert [len(r) for r in refs] == [2, 2]
    # 101-point interpolated AP with every reference found first: 0.995 (as Ultralytics' validation reports)
    assert selection.self_fidelity(det, refs, _images()) == pytest.approx(0.995, abs=1e-6)


def test_a_box_moved_to_iou_0_72_counts_at_the_five_thresholds_up_to_0_7():
    dense = FixedDetector()
    refs = selection.detections(dense, _images(), selection.REFERENCE_CONF)
    moved = FixedDetector()
    # a 20 x 20 box moved right by s overlaps (20 - s) x 20: IoU = (20 - s) / (20 + s) = 0.72 at s = 3.256; the
    # 30 x 10 box then has IoU (30 - s) / (30 + s) = 0.80, found at thresholds 0.5-0.8 (seven of ten)
    moved.model[-1].shift = 20 * 0.28 / 1.72
    score = selection.self_fidelity(moved, refs, _images())
    assert score == pytest.approx(0.995 * (5 + 7) / 20, abs=1e-6)  # the mean over two classes of the ten thresholds


def test_prune_candidates_keeps_the_copy_closest_to_the_dense_detections():
    det = FixedDetector()

    def prune_one(model, seed):  # seed 11 leaves the boxes where they were; the others move them
        model.model[-1].shift = abs(seed - 11) * 4.0
        return yolo_nexp.PruneReport("nexp_lsq", 0.5, 1, IMGSZ, 10, 5, 10, 5, seconds_scoring=1.0)

    report, scores, chosen = selection.prune_candidates(det, 3, prune_one, _images(), seed=10, verbose=False)
    assert chosen == 1 and scores[1] == max(scores) and scores[1] > scores[0]
    assert det.model[-1].shift == 0.0  # the dense detector now holds the chosen copy's layers
    assert report.seconds_scoring == 3.0  # every candidate's time is counted


def test_candidates_on_noise_say_there_is_nothing_to_compare_on():
    model = YOLO("yolov8n.yaml")  # random weights: nothing above conf 0.25 on noise
    with pytest.raises(ValueError, match="detects nothing"):
        yolo_nexp.prune(model, macs=0.2, candidates=2, source="noise", imgsz=IMGSZ, batches=1, batch=2, verbose=False)


@pytest.mark.parametrize("bad", [0, 17, 1.5, True])
def test_candidates_must_be_a_small_whole_number(bad):
    with pytest.raises(ValueError, match="candidates"):
        yolo_nexp.prune(YOLO("yolov8n.yaml"), candidates=bad, source="noise", imgsz=IMGSZ, verbose=False)
