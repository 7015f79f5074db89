"""Reconstruction: after pruning, every conv refit so that its outputs match the dense model's, module after module."""

import copy

import pytest
import torch
from torch import nn
from ultralytics import YOLO

import yolo_nexp
from yolo_nexp.arch.family import detection_model
from yolo_nexp.pruning import pruner, reconstruct
from yolo_nexp.scoring.sources import calibration_batches

ARGS = dict(source="noise", imgsz=64, batches=2, batch=4, round_to=1, seed=0, verbose=False)


def _predictions(det: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The head's raw outputs per anchor: box distributions and class logits, (B, 4 x 16 + classes, anchors)."""
    with torch.no_grad():
        raw = det.eval()(images)[1]
    return torch.cat([raw["boxes"], raw["scores"]], 1)


def _distortion(pruned, dense, images) -> float:
    """Squared error of the pruned model's predictions relative to the dense predictions' energy."""
    a, b = _predictions(pruned, images), _predictions(dense, images)
    return float((a - b).pow(2).sum() / b.pow(2).sum())


def _trained_like(seed: int = 0) -> YOLO:
    """A yolov8n with random BatchNorm statistics and affine terms, so channels differ as in a trained model."""
    model = YOLO("yolov8n.yaml")
    gen = torch.Generator().manual_seed(seed)
    for m in model.model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=gen)
            m.bias.data = 0.2 * torch.randn(n, generator=gen)
            m.running_var = 0.5 + torch.rand(n, generator=gen)
    return model


def test_reconstruction_brings_the_head_closer_to_the_dense_model():
    dense = _trained_like()
    images = torch.cat(list(calibration_batches("noise", batches=2, imgsz=64, batch=4, seed=0)))
    errors = {}
    for rebuild in (False, True):
        model = copy.deepcopy(dense)
        # two passes: the dense indices of the kept channels compose
        report = yolo_nexp.prune(model, macs=0.4, passes=2, reconstruct=rebuild, **ARGS)
        assert report.macs_reduction > 0.3
        assert report.reconstruct == rebuild and (report.seconds_reconstruction > 0) == rebuild
        assert ("reconstruction" in report.summary()) == rebuild
        errors[rebuild] = _distortion(detection_model(model), detection_model(dense), images)
    assert errors[True] < 0.7 * errors[False], errors


def test_the_dense_indices_of_kept_channels_follow_every_pass(monkeypatch):
    seen = {}

    def spy(det, dense, kept, images, verbose=True):
        seen.update(det=copy.deepcopy(det), dense=copy.deepcopy(dense), kept=dict(kept), images=images)

    monkeypatch.setattr(pruner, "refit_to_dense", spy)
    model = _trained_like()
    yolo_nexp.prune(model, macs=0.4, passes=2, reconstruct=True, repair="none", **ARGS)
    # The first conv reads the image, which no pass changes: its weights are the dense rows it kept.
    first = "model.0.conv"
    kept = seen["kept"][first]
    assert len(kept) < seen["dense"].get_submodule(first).out_channels
    assert torch.equal(seen["det"].get_submodule(first).weight, seen["dense"].get_submodule(first).weight[kept])
    assert len(seen["images"]) == 2 and seen["images"][0].shape == (4, 3, 64, 64)


def test_a_conv_is_refit_to_the_least_squares_solution():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 3, 3, padding=1, bias=True)
    target = nn.Conv2d(6, 3, 3, padding=1, bias=True)
    x = torch.randn(8, 6, 10, 10)
    regression = reconstruct._Regression()
    step = reconstruct._step(10, 10)
    regression.add(reconstruct._patches(conv, x, step), reconstruct._targets(target(x), torch.arange(3), step))
    w, b = regression.solve(conv.weight.detach().reshape(3, -1).T)
    fitted = nn.Conv2d(6, 3, 3, padding=1, bias=True)
    fitted.weight.data = w.T.reshape(fitted.weight.shape).float()
    fitted.bias.data = b.float()
    # A target the inputs can express exactly is recovered, up to the ridge's pull towards the prior.
    assert torch.allclose(fitted(x), target(x), atol=0.05 * target(x).abs().max().item())
    assert (fitted(x) - target(x)).pow(2).mean() < 0.01 * (conv(x) - target(x)).pow(2).mean()


def test_reconstruct_must_be_a_bool():
    with pytest.raises(ValueError, match="reconstruct must be True or False"):
        yolo_nexp.prune(YOLO("yolov8n.yaml"), ratio=0.2, reconstruct="yes", **ARGS)
