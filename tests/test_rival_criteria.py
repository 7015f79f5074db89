"""The rival criteria (taylor, hessian, lamp, fpgm, shapley): each ranks channels as its definition says, and prunes."""

import pytest
import torch
import torch_pruning as tp
from torch import nn
from ultralytics import YOLO
from ultralytics.utils.nms import non_max_suppression
from ultralytics.utils.ops import xywh2xyxy

import yolo_nexp
from yolo_nexp.arch.family import c2f_split
from yolo_nexp.pruning.groups import build_graph, prunable_groups
from yolo_nexp.scoring import criteria, gradients, shapley
from yolo_nexp.scoring.calibration import calibrate
from yolo_nexp.scoring.criteria import CRITERIA, build_importance
from yolo_nexp.testing import informative

from .conftest import IMGSZ

RIVALS = ("taylor", "hessian", "lamp", "fpgm", "shapley")


def _two_convs(out_weights: torch.Tensor) -> tuple[nn.Sequential, object]:
    """conv1 (1x1, ``out_weights`` as its filters) -> conv2 reading every channel with the same weight; conv1's group."""
    c, i = out_weights.shape
    net = nn.Sequential(nn.Conv2d(i, c, 1, bias=False), nn.Conv2d(c, 2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(out_weights.view(c, i, 1, 1))
        net[1].weight.fill_(0.5)  # identical columns: no in-channel term tells the channels apart
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.zeros(1, i, 4, 4))
    return net, graph.get_pruning_group(net[0], tp.prune_conv_out_channels, list(range(c)))


def test_lamp_is_each_score_over_the_sum_of_those_not_below_it():
    _, group = _two_convs(torch.tensor([[3.0], [1.0], [4.0], [2.0]]))
    # group L2 per channel: mean of conv1's w^2 and conv2's column energy (0.5^2 * 2 = 0.5, equal for all)
    raw = (torch.tensor([9.0, 1.0, 16.0, 4.0]) + 0.5) / 2
    expected = torch.tensor([raw[0] / (raw[0] + raw[2]), raw[1] / raw.sum(), 1.0, raw[3] / (raw.sum() - raw[1])])
    torch.testing.assert_close(build_importance("lamp", nn.Identity())(group), expected)


def test_fpgm_prunes_the_filter_nearest_the_others_first_where_l2_does_not():
    # filters 0 and 1 are duplicates (the most redundant) and the largest; filter 2 is small and alone
    _, group = _two_convs(torch.tensor([[2.0, 2.0], [2.0, 2.0], [0.0, 1.0]]))
    fpgm, l2 = build_importance("fpgm", nn.Identity())(group), build_importance("l2", nn.Identity())(group)
    # TP's FPGM: summed distance between the filters' squared magnitudes (4, 4), (4, 4), (0, 1): 5, 5, 10
    torch.testing.assert_close(fpgm / fpgm.mean(), torch.tensor([0.75, 0.75, 1.5]))
    assert l2.argmin() == 2 and fpgm.argmax() == 2
    _, line = _two_convs(torch.tensor([[0.0], [1.0], [3.0]]))  # on a line the geometric median is the median
    assert build_importance("fpgm", nn.Identity())(line).argmin() == 1


def test_taylor_is_weight_times_gradient_with_the_given_gradients():
    net, group = _two_convs(torch.tensor([[1.0], [2.0], [3.0]]))
    grads = {net[0].weight: torch.tensor([0.5, 0.0, 1.0]).view(3, 1, 1, 1), net[1].weight: torch.zeros(2, 3, 1, 1)}
    imp = gradients.WithGradients(tp.importance.GroupTaylorImportance(), grads)(group)
    per = torch.tensor([0.5, 0.0, 3.0]) / 2  # |w * g| of conv1, and 0 of conv2's columns, averaged
    torch.testing.assert_close(imp, per / per.mean())
    assert net[0].weight.grad is None and net[1].weight.grad is None  # the gradients were only lent
    zero = {p: torch.zeros_like(p) for p in grads}
    assert gradients.WithGradients(tp.importance.GroupTaylorImportance(), zero)(group).eq(0).all()  # not 0 / 0


def test_hessian_averages_the_squared_gradient_of_every_sample():
    net, group = _two_convs(torch.tensor([[1.0], [2.0]]))
    hessian = gradients.HessianImportance()
    for c in (torch.tensor([1.0, 0.0]), torch.tensor([1.0, 2.0])):  # per-sample gradients of conv1: c
        net.zero_grad()
        (net[0].weight.view(2) * c).sum().backward()
        hessian.accumulate_grad(net)
    means = hessian.mean_squared()
    torch.testing.assert_close(means[net[0].weight].view(2), torch.tensor([1.0, 2.0]))  # (1 + 1) / 2, (0 + 4) / 2
    net.zero_grad(set_to_none=True)
    imp = gradients.WithGradients(hessian, means)(group)  # conv2 has no gradient: TP leaves it out
    torch.testing.assert_close(imp, torch.tensor([1.0, 8.0]) / 4.5)  # w^2 * mean g^2, mean-normalised


def _model_with_dead_channels(dead: slice, constant: bool = False) -> YOLO:
    """yolov8n whose block model.1 outputs nothing (or a constant) on channels ``dead``."""
    torch.manual_seed(0)
    model = informative(YOLO("yolov8n.yaml"))  # outputs that depend on the input (a random model's hardly do)
    bn = model.model.model[1].bn
    with torch.no_grad():
        bn.weight[dead] = 0.0
        bn.bias[dead] = 0.5 if constant else -1e4  # SiLU(-1e4) is -0.0: neither output nor gradient
    return model


def _score_block_one(model: YOLO, criterion: str, **calib) -> torch.Tensor:
    """The criterion's scores of the group rooted at model.1's conv (32 channels)."""
    det = model.model
    with c2f_split(det):
        calib = calibrate(det, "noise", 1, IMGSZ, 2, keep_images=1, verbose=False, **calib)
        groups = prunable_groups(build_graph(det), det)
        (group,) = [g.group for g in groups if g.module is det.model[1].conv]
        return build_importance(criterion, det, calib, seed=0)(group)


@pytest.mark.parametrize("criterion", ["taylor", "hessian"])
def test_gradient_criteria_score_channels_without_gradient_zero(criterion):
    model = _model_with_dead_channels(slice(0, 8))
    flags = {name: p.requires_grad for name, p in model.model.named_parameters()}
    imp = _score_block_one(model, criterion)
    assert imp[:8].eq(0).all() and (imp[8:] > 0).all()
    assert all(p.grad is None for p in model.model.parameters())
    assert {name: p.requires_grad for name, p in model.model.named_parameters()} == flags


def test_pseudo_labels_are_the_models_own_detections():
    model = YOLO("yolov8n.yaml")
    det = model.model.eval()
    with torch.no_grad():
        det.model[-1].cv3[1][-1].bias[3] = 4.0  # class 3 confident everywhere on the stride-16 level
        out = det(torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0)))
        labels = gradients.pseudo_labels(gradients.detection_loss(det), out[1], (IMGSZ, IMGSZ))
    own = non_max_suppression(out[0], gradients.PSEUDO_CONF, gradients.PSEUDO_IOU)
    assert len(labels["cls"]) == sum(len(d) for d in own) > 0 and labels["cls"].eq(3).all()
    for i, d in enumerate(own):
        boxes = xywh2xyxy(labels["bboxes"][labels["batch_idx"] == i]) * IMGSZ
        torch.testing.assert_close(boxes, d[:, :4], atol=1e-3, rtol=1e-4)


def test_the_detection_loss_takes_the_models_gains_or_ultralytics_defaults():
    det = YOLO("yolov8n.yaml").model
    det.args = {"box": 2.0}
    hyp = gradients.detection_loss(det).hyp
    assert (hyp.box, hyp.cls, hyp.dfl) == (2.0, 0.5, 1.5) and det.args == {"box": 2.0}


@pytest.mark.parametrize("criterion", ["taylor", "hessian", "fpgm"])
def test_one_score_per_channel_in_every_ghost_group(criterion):
    """Torch-Pruning sizes a group's score by the first layer it scores: in Ghost groups (Taylor and FPGM skip
    BatchNorm and depthwise convs) that was a consumer reading every channel twice, and the score came out twice
    as long."""
    det = YOLO("yolov8n-ghost.yaml").model
    with c2f_split(det):
        calib = calibrate(det, "noise", 1, IMGSZ, 2, keep_images=1, verbose=False)
        imp = build_importance(criterion, det, calib)
        sizes = [(g.size, len(imp(g.group))) for g in prunable_groups(build_graph(det), det)]
    assert all(size == n for size, n in sizes), sizes


def _quadratic(w: torch.Tensor):
    """The game D(A) = (sum of w over A)^2: solo effect w_i^2, Shapley value w_i * sum(w)."""
    return lambda absent: (absent.double() @ w).pow(2)


def test_shapley_of_an_additive_game_is_each_players_solo_effect():
    w = torch.tensor([0.3, 2.0, 0.0, 1.1, 0.7], dtype=torch.float64)
    for depth in (1, 2, 5):
        gen = torch.Generator().manual_seed(depth)
        phi = shapley.permutation_shapley(lambda absent: absent.double() @ w, 5, 3, depth, gen, batch=2)
        torch.testing.assert_close(phi, w)


def test_shapley_of_a_quadratic_game_full_and_truncated():
    w = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    full = shapley.permutation_shapley(_quadratic(w), 3, permutations=3000, depth=3, generator=gen)
    torch.testing.assert_close(full, w * w.sum(), rtol=0.03, atol=0)  # 6, 12, 18
    solo = shapley.permutation_shapley(_quadratic(w), 3, permutations=2, depth=1, generator=gen)
    torch.testing.assert_close(solo, w.pow(2))  # truncated to runs of one: each alone, from the dense model


def test_shapley_scores_channels_whose_mean_is_all_they_carry_zero_and_is_seeded():
    model = _model_with_dead_channels(slice(0, 4), constant=True)  # replacing them by their mean changes nothing
    imp = _score_block_one(model, "shapley", inputs=True)
    assert set(imp.argsort()[:4].tolist()) == {0, 1, 2, 3}
    assert imp[:4].abs().max() < 1e-3 * imp[4:].min() and (imp[4:] > 0).all()
    torch.testing.assert_close(_score_block_one(model, "shapley", inputs=True), imp)  # the same seed
    with c2f_split(model.model):
        det = model.model
        calib = calibrate(det, "noise", 1, IMGSZ, 2, inputs=True, keep_images=1, verbose=False)
        (group,) = [g.group for g in prunable_groups(build_graph(det), det) if g.module is det.model[1].conv]
        other = criteria.build_importance("shapley", det, calib, seed=1)(group)
    assert not torch.equal(other, imp)  # another seed, other permutations


def test_every_rival_is_a_criterion_and_says_what_it_needs():
    assert set(RIVALS) <= set(CRITERIA)
    assert criteria.kept_batches("taylor", 3) == 3 and criteria.kept_batches("shapley", 3) == 1
    assert criteria.kept_batches("lamp", 3) == 0 and criteria.NEEDS["shapley"] == "inputs"
    with pytest.raises(ValueError, match="taylor"):
        build_importance("taylor", nn.Identity())  # no calibration: no images to take gradients on


@pytest.mark.parametrize("criterion", RIVALS)
def test_each_rival_prunes_yolov8n_and_the_result_forwards(criterion):
    model = YOLO("yolov8n.yaml")
    kw = dict(ratio=0.3, criterion=criterion, source="noise", imgsz=IMGSZ, batches=1, batch=2, verbose=False)
    report = yolo_nexp.prune(model, **kw)
    assert report.criterion == criterion and report.params_after < report.params_before
    assert report.macs_after < report.macs_before
    det = model.model.eval()
    with torch.no_grad():
        assert det(torch.rand(1, 3, IMGSZ, IMGSZ))[0].shape == (1, 84, 84)
    assert all(p.grad is None for p in det.parameters())
