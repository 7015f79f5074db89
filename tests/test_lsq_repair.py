"""The least-squares repair: a removed channel that the kept ones predict is removed without changing the output."""

import torch
import torch_pruning as tp
from torch import nn

from yolo_nexp.pruning.lsq_repair import LeastSquaresFolder
from yolo_nexp.pruning.repair import MeanFolder
from yolo_nexp.scoring.calibration import CrossMoments


def _model_and_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.Conv2d(4, 5, 3, padding=1, padding_mode="replicate"), nn.BatchNorm2d(5)
    )
    with torch.no_grad():  # channel 3 of the first conv = channel 0 + 2 x channel 1 + 0.5: predictable from the others
        first = model[0]
        first.weight[3] = first.weight[0] + 2 * first.weight[1]
        first.bias[3] = first.bias[0] + 2 * first.bias[1] + 0.5
    return model.eval(), torch.randn(8, 3, 12, 12)


def _pruned_output(folder_of) -> tuple[torch.Tensor, torch.Tensor]:
    model, x = _model_and_inputs()
    with torch.no_grad():
        ref = model(x)
        stats = CrossMoments()
        stats.update(model[0](x))
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x[:1])
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, [3])
    folder_of(model, {model[1]: stats})(group)
    group.prune()
    with torch.no_grad():
        return model(x), ref


def test_least_squares_removes_a_predictable_channel_exactly():
    out, ref = _pruned_output(LeastSquaresFolder)
    assert (out - ref).abs().max() < 5e-3 * ref.abs().max()  # the ridge keeps it from exact


def test_the_mean_repair_cannot_and_the_check_can_fail():
    out, ref = _pruned_output(lambda model, stats: MeanFolder(model, {c: s.mean.float() for c, s in stats.items()}))
    assert (out - ref).abs().max() > 1e-2 * ref.abs().max()
