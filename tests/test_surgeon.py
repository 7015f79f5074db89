"""criterion=nexp_lsq: greedy least-squares (Optimal Brain Surgeon) removal cost, on cases worked out by hand."""

import pytest
import torch
import torch_pruning as tp
from torch import nn
from ultralytics import YOLO

import yolo_nexp
from yolo_nexp.scoring import surgeon
from yolo_nexp.scoring.calibration import CrossMoments
from yolo_nexp.scoring.criteria import CRITERIA, NEEDS, build_importance

from .conftest import IMGSZ


def _lsq_cost(h: torch.Tensor, w: torch.Tensor, removed: list[int]) -> float:
    """Exact error of dropping inputs ``removed`` of ``y = W x`` and refitting the rest: tr(W_R S W_R^T), S = H_RR|K."""
    keep = [i for i in range(len(h)) if i not in removed]
    hrr, hrk, hkk = h[removed][:, removed], h[removed][:, keep], h[keep][:, keep]
    schur = hrr - hrk @ torch.linalg.solve(hkk, hrk.T) if keep else hrr
    wr = w[:, removed]
    return float(torch.trace(wr @ schur @ wr.T))


def _consumer(h: torch.Tensor, w: torch.Tensor) -> tuple:
    """(Gram, precision, input index, root index) of one consumer reading every root channel once."""
    return (w.T @ w, torch.linalg.inv(h), torch.arange(len(h)))


def test_a_duplicate_channel_is_free_until_its_twin_is_gone():
    # x0 and x1 nearly equal, x2 independent; weights 1, 1, 0.5 on them
    h = torch.tensor([[1.0, 0.999, 0.0], [0.999, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    w = torch.tensor([[1.0, 1.0, 0.5]], dtype=torch.float64)
    scores = surgeon._greedy_order_costs([_consumer(h, w)], torch.zeros(3, dtype=torch.float64), 3)
    order = torch.argsort(scores).tolist()
    assert set(order[:1]) <= {0, 1} and order[1] == 2  # one twin first (~free), then x2 (0.25), then the other twin
    # nexp_use (variance x weight energy) would take x2 first: 0.25 against 1 and 1
    first, second = order[0], order[1]
    torch.testing.assert_close(scores[first].item(), _lsq_cost(h, w, [first]), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(scores[second].item(), _lsq_cost(h, w, [first, second]), rtol=1e-6, atol=1e-9)


def test_cumulative_cost_is_the_exact_refit_error_of_the_removed_set():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=gen, dtype=torch.float64) @ torch.randn(6, 6, generator=gen, dtype=torch.float64)
    h = x.T @ x / 200
    w = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    scores = surgeon._greedy_order_costs([_consumer(h, w)], torch.zeros(6, dtype=torch.float64), 6)
    order = torch.argsort(scores).tolist()
    for k in range(1, 6):  # removing one at a time with the optimal refit after each is the exact joint refit
        torch.testing.assert_close(scores[order[k - 1]].item(), _lsq_cost(h, w, order[:k]), rtol=1e-6, atol=1e-9)
    # and the greedy first step is the cheapest single removal
    singles = [_lsq_cost(h, w, [j]) for j in range(6)]
    assert order[0] == min(range(6), key=singles.__getitem__)


def test_in_blocks_the_score_at_each_block_end_is_the_exact_refit_error_so_far():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 8, generator=gen, dtype=torch.float64) @ torch.randn(8, 8, generator=gen, dtype=torch.float64)
    h, w = x.T @ x / 300, torch.randn(3, 8, generator=gen, dtype=torch.float64)
    scores = surgeon._greedy_order_costs([_consumer(h, w)], torch.zeros(8, dtype=torch.float64), 8, block=3)
    order = torch.argsort(scores).tolist()
    for end in (3, 6, 8):  # blocks of 3, 3, 2
        torch.testing.assert_close(scores[order[end - 1]].item(), _lsq_cost(h, w, order[:end]), rtol=1e-6, atol=1e-9)
    singles = [_lsq_cost(h, w, [j]) for j in range(8)]
    assert set(order[:3]) == set(sorted(range(8), key=singles.__getitem__)[:3])  # the 3 cheapest go first


def test_importance_reads_the_consumers_of_a_real_group_and_their_batchnorm_scale():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.Conv2d(3, 2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.001], [0.0, 1.0]]).view(3, 2, 1, 1))
        net[1].weight.copy_(torch.tensor([[1.0, 1.0, 0.5], [0.0, 0.0, 0.0]]).view(2, 3, 1, 1))
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.zeros(1, 2, 4, 4))
    group = graph.get_pruning_group(net[0], tp.prune_conv_out_channels, [0, 1, 2])
    moments = CrossMoments()
    moments.update(net[0](torch.randn(64, 2, 8, 8)))
    imp = surgeon.SurgeonImportance({net[1]: moments}, lambda conv: torch.ones(conv.out_channels))
    scores = imp(group)
    assert scores.shape == (3,)
    assert torch.argsort(scores)[1] == 2  # channels 0 and 1 predict each other: one goes, then channel 2
    doubled = surgeon.SurgeonImportance({net[1]: moments}, lambda conv: torch.full((conv.out_channels,), 2.0))
    torch.testing.assert_close(doubled(group), 4 * scores)  # costs are in BN-scaled pre-activations, squared


def test_nexp_lsq_is_a_criterion_that_needs_the_covariances():
    assert "nexp_lsq" in CRITERIA and NEEDS["nexp_lsq"] == "cross"
    with pytest.raises(ValueError, match="covariances"):
        build_importance("nexp_lsq", nn.Identity(), calib=type("C", (), {"cross": {}})())


@pytest.mark.parametrize("repair", ["lsq", "mean"])
def test_nexp_lsq_prunes_yolov8n_with_either_repair(repair):
    model = YOLO("yolov8n.yaml")
    report = yolo_nexp.prune(
        model, macs=0.3, criterion="nexp_lsq", repair=repair, source="noise", imgsz=IMGSZ, batches=1, batch=2,
        passes=1, verbose=False,
    )  # fmt: skip
    assert 0.2 < report.macs_reduction < 0.4
    model.model.eval()
    assert model.model(torch.zeros(1, 3, IMGSZ, IMGSZ))[0].shape[0] == 1
