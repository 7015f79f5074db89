"""Allocation by information concentration: the rank and entropy statistics, their fusion, the ratio rule, and
the allocation end to end on yolov8n."""

import math
from types import SimpleNamespace

import pytest
import torch
from ultralytics import YOLO

import yolo_nexp
from yolo_nexp.arch.family import conv_blocks
from yolo_nexp.pruning import allocation as alloc
from yolo_nexp.pruning import pruner
from yolo_nexp.pruning.information import (
    MIN_WEIGHT,
    conv_concentration,
    fuse,
    information_order,
    set_concentration,
    target_ratios,
)
from yolo_nexp.scoring.calibration import calibrate
from yolo_nexp.scoring.feature_information import RANK_IMAGES, FeatureInformation, map_ranks

from .conftest import IMGSZ


def _outer_sum(rank: int, h: int, w: int, generator) -> torch.Tensor:
    """An h x w map of rank ``rank``: the sum of ``rank`` random outer products."""
    u, v = torch.randn(rank, h, generator=generator), torch.randn(rank, w, generator=generator)
    return torch.einsum("rh,rw->hw", u, v)


def test_map_rank_is_averaged_over_images_and_normalised_by_the_map_side():
    g = torch.Generator().manual_seed(0)
    stats = FeatureInformation()
    for rank0 in (1, 3):  # two batches of one image: the first channel's maps have rank 1, then rank 3
        x = torch.stack([_outer_sum(rank0, 8, 6, g), torch.randn(8, 6, generator=g)]).unsqueeze(0)
        stats.update(x)
    assert stats.n == 2
    assert stats.rank.tolist() == pytest.approx([(1 + 3) / 2 / 6, 1.0])  # full rank of an 8 x 6 map is 6


def test_map_ranks_match_torch_matrix_rank():
    g = torch.Generator().manual_seed(1)
    maps = [_outer_sum(r, 12, 9, g) for r in (1, 2, 5, 9)] + [torch.zeros(12, 9), torch.full((12, 9), 3.0)]
    maps += [torch.randn(12, 9, generator=g).clamp(min=0), _outer_sum(4, 12, 9, g) * 1e-6]
    x = torch.stack(maps)
    assert map_ranks(x).tolist() == torch.linalg.matrix_rank(x).tolist() == [1, 2, 5, 9, 0, 1, 9, 4]
    assert map_ranks(x.transpose(1, 2)).tolist() == torch.linalg.matrix_rank(x).tolist()  # wide maps too


def test_ranks_read_the_first_images_of_a_batch_entropy_all_of_them():
    g = torch.Generator().manual_seed(2)
    low = torch.stack([_outer_sum(1, 8, 8, g) for _ in range(RANK_IMAGES)])
    full = torch.randn(3, 8, 8, generator=g)
    stats = FeatureInformation()
    stats.update(torch.cat([low, full]).unsqueeze(1))  # RANK_IMAGES rank-1 maps, then 3 full-rank ones
    assert stats.n == RANK_IMAGES + 3 and stats.rank.tolist() == pytest.approx([1 / 8])
    assert stats.counts.sum().item() == (RANK_IMAGES + 3) * 64


def test_entropy_is_zero_for_a_constant_channel_and_maximal_for_an_even_spread():
    x = torch.zeros(1, 3, 8, 8)  # 64 values per channel: min(32, sqrt(64)) = 8 bins
    x[0, 0] = 2.5  # constant
    x[0, 1] = torch.arange(64.0).view(8, 8)  # exactly 8 values in each of the 8 bins
    x[0, 2, :4] = 1.0  # half at the bottom of its range, half at the top: 2 of 8 bins, equally
    stats = FeatureInformation()
    stats.update(x)
    assert stats.bins == 8
    assert stats.entropy.tolist() == pytest.approx([0.0, 1.0, math.log(2) / math.log(8)])


def test_bins_fixed_on_the_first_batch_and_memory_flat_in_the_images():
    stats = FeatureInformation()
    stats.update(torch.arange(64.0).view(1, 1, 8, 8))
    size = stats.counts.numel()
    for _ in range(5):  # later values beyond the first batch's range count in the end bins
        stats.update(torch.full((1, 1, 8, 8), 1000.0))
    assert stats.counts.numel() == size == 8 and stats.n == 6
    assert stats.counts[-1].item() == 8 + 5 * 64 and stats.counts[:-1].tolist() == [8.0] * 7


@pytest.mark.parametrize(
    "rank,entropy,expected",
    [(1.0, 1.0, 1.0), (0.5, 1.0, 2 / 3), (0.2, 0.8, 0.32), (0.0, 0.7, 0.0), (0.0, 0.0, 0.0), (0.9, 0.9, 0.9)],
)
def test_fusion_is_the_harmonic_mean(rank, entropy, expected):
    assert fuse(rank, entropy) == pytest.approx(expected)


def test_ratio_rule_gives_each_layer_a_share_proportional_to_one_minus_its_concentration():
    # 1 - IC = 0.8 and 0.4 (mean 0.6): at a mean ratio of 0.3 the layers lose 0.4 and 0.2
    assert target_ratios([0.2, 0.6], 0.3) == pytest.approx([0.4, 0.2])
    assert target_ratios([0.2, 0.6], 0.8) == pytest.approx([alloc.MAX_REMOVED, 0.8 * 2 / 3])  # capped
    assert target_ratios([0.5, 0.5, 0.5], 0.3) == pytest.approx([0.3] * 3)  # equal concentrations: uniform
    assert target_ratios([1.0, 0.0], 0.1)[0] == pytest.approx(0.1 * MIN_WEIGHT / ((MIN_WEIGHT + 1) / 2))


def test_the_more_concentrated_layer_loses_what_the_rule_gives_it_under_a_ratio():
    sets = [[SimpleNamespace(size=100)], [SimpleNamespace(size=100)]]
    widths = alloc.removal_steps(sets, round_to=1)
    order = information_order(widths, [0.2, 0.6])  # the second layer holds more information
    n = alloc.steps_for_ratio(sets, widths, order, 0.3, "information")  # 60 of 200 channels
    assert alloc.widths_after(widths, order, n) == [60, 80]  # 40% and 20% removed: the rule's 0.4 and 0.2
    swapped = information_order(widths, [0.6, 0.2])
    assert alloc.widths_after(widths, swapped, n) == [80, 60]


def test_equal_concentrations_order_the_steps_as_uniform():
    widths = [alloc.allowed_widths(s, 8) for s in (16, 64, 256, 80)]
    assert information_order(widths, [0.7] * 4) == alloc.uniform_order(widths)


def test_set_concentration_averages_the_output_convs_and_fills_unknown_sets():
    a, b, c, d = "conv_a", "conv_b", "conv_c", "conv_d"  # stand-ins: any hashable key works

    def group(*outs):  # a group whose channels are the outputs of ``outs`` and are read by d
        return SimpleNamespace(removed_per_channel={**{(o, "out"): 1 for o in outs}, (d, "in"): 1})

    sets = [[group(a, b)], [group(c)], [group("unrecorded")]]
    per_conv = {a: 0.2, b: 0.4, c: 0.9, d: 0.0}  # d is only an input consumer: it does not count
    assert set_concentration(sets, per_conv) == pytest.approx([0.3, 0.9, 0.6])


def test_calibration_records_every_block_in_range():
    det = YOLO("yolov8n.yaml").model
    calib = calibrate(det, "noise", batches=2, imgsz=IMGSZ, batch=2, information=True, verbose=False)
    assert set(calib.information) == set(conv_blocks(det))
    assert all(s.n == 4 for s in calib.information.values())
    per_conv = conv_concentration(det, calib.information)
    assert len(per_conv) == len(conv_blocks(det)) and all(0.0 <= v <= 1.0 for v in per_conv.values())
    assert len(set(round(v, 6) for v in per_conv.values())) > 1  # the layers differ


def test_macs_target_is_reached_and_the_model_forwards():
    model = YOLO("yolov8n.yaml")
    report = yolo_nexp.prune(
        model, macs=0.3, allocation="information", source="noise", imgsz=IMGSZ, batches=1, batch=2, verbose=False
    )
    assert abs(report.macs_reduction - 0.3) < 0.01, report.macs_reduction
    assert report.allocation == "information"
    model.model.eval()
    with torch.no_grad():
        assert model.model(torch.rand(1, 3, IMGSZ, IMGSZ))[0].shape == (1, 84, 84)
    kw = dict(source="noise", imgsz=IMGSZ, batches=1, batch=2, repair="none", verbose=False)  # widths only
    uniform = yolo_nexp.prune(YOLO("yolov8n.yaml"), macs=0.3, allocation="uniform", **kw)
    assert report.channels != uniform.channels  # the concentrations moved channels between layers


@pytest.mark.parametrize("target", [0.1, 0.46, 0.7])
def test_other_macs_targets_land_within_one_point(target):
    kw = dict(source="noise", imgsz=IMGSZ, batches=1, batch=2, repair="none", verbose=False)  # widths only
    report = yolo_nexp.prune(YOLO("yolov8n.yaml"), macs=target, allocation="information", **kw)
    assert abs(report.macs_reduction - target) < 0.01, report.macs_reduction


def test_the_least_concentrated_layer_is_pruned_most(monkeypatch):
    """Wiring: the pruner allocates by the calibrated concentrations (here one layer is made to hold none)."""

    def fake(model, information):
        real = dict.fromkeys(conv_concentration(model, information), 0.95)
        real[conv_blocks(model)["model.7"].conv] = 0.0
        return real

    monkeypatch.setattr(pruner, "conv_concentration", fake)
    report = yolo_nexp.prune(
        YOLO("yolov8n.yaml"), ratio=0.2, allocation="information", round_to=1, repair="none", imgsz=IMGSZ, batches=1,
        batch=2, verbose=False,
    )  # fmt: skip
    removed = {name: 1 - a / b for name, (b, a) in report.channels.items()}
    assert removed["model.7"] == pytest.approx(alloc.MAX_REMOVED, abs=1 / 256)
    assert max(v for k, v in removed.items() if k != "model.7") < 0.2
