"""Reconstruction after pruning: every conv refit, module after module, so its outputs match the dense model's.

The repairs (:mod:`yolo_nexp.pruning.repair`, :mod:`yolo_nexp.pruning.lsq_repair`) fold what a removed channel
carried into its consumers from statistics of the model as the pass found it. Errors still add up through the
network: every pruned layer's input differs from its dense input, and no repair looks at that. Reconstruction
runs the calibration images through the pruned and the dense model side by side, one top-level module at a
time, and refits every conv of the module in closed form: the ridge regression of the dense conv's output (its
kept channels, before BatchNorm) on the pruned conv's input patches, where that input is what the pruned (and
already refit) modules before it produce. This is the layer-wise refit of channel pruning (He et al. 2017), made
sequential as layer-wise compression methods (e.g. GPTQ) are, so each layer corrects the error it receives.

The ridge pulls towards the conv's current (repaired) weights, not towards zero: with few images and wide
kernels (a 3x3 conv on 512 channels has 4608 weights per output) the fit would otherwise follow the calibration
images. The fitted intercept goes where the repairs put theirs: the BatchNorm's running mean, or the bias.

Memory: the outputs each model keeps for later modules (Ultralytics' ``save`` list) for all images at once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.nn.modules import DFL
from ultralytics.utils import TQDM

from yolo_nexp.arch.family import bn_of_conv
from yolo_nexp.utils import chunks, mode

RIDGE = 1e-2  # pull towards the current weights, relative to the input patches' mean variance
ROUNDS = 2  # refits per module: the second fits each conv on what the module's refit convs before it produce
MAX_POSITIONS = 1024  # output positions per image the regression reads, on a regular grid


class _Regression:
    """Streaming sums of one conv's input patches and target outputs, for a ridge regression of one on the other."""

    def __init__(self):
        """Start empty."""
        self.n, self.sx, self.sy, self.xx, self.xy = 0, 0.0, 0.0, 0.0, 0.0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows ``x`` (N, D) and targets ``y`` (N, O): products in float32, sums in float64."""
        self.n += x.shape[0]
        self.sx = self.sx + x.sum(0).double()
        self.sy = self.sy + y.sum(0).double()
        self.xx = self.xx + (x.T @ x).double()
        self.xy = self.xy + (x.T @ y).double()

    def solve(self, prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights (D, O) and intercept (O) minimising the squared error plus ``RIDGE`` x its distance to ``prior``."""
        mx, my = self.sx / self.n, self.sy / self.n
        cxx = self.xx / self.n - torch.outer(mx, mx)
        cxy = self.xy / self.n - torch.outer(mx, my)
        lam = RIDGE * cxx.diagonal().mean().clamp(min=1e-12)
        eye = torch.eye(len(cxx), dtype=cxx.dtype, device=cxx.device)
        w = torch.linalg.solve(cxx + lam * eye, cxy + lam * prior.double())
        return w, my - w.T @ mx


def _step(height: int, width: int) -> int:
    """The spacing of a regular grid on a ``height`` x ``width`` output with at most :data:`MAX_POSITIONS` points."""
    return max(1, math.ceil(math.sqrt(height * width / MAX_POSITIONS)))


def _out_size(conv: nn.Conv2d, x: torch.Tensor) -> tuple[int, int]:
    """The height and width of ``conv``'s output on ``x``."""
    return tuple(
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, p, d, k, s in zip(x.shape[-2:], conv.padding, conv.dilation, conv.kernel_size, conv.stride)
    )


def _patches(conv: nn.Conv2d, x: torch.Tensor, step: int) -> torch.Tensor:
    """The input patches (N, C*kh*kw) that every ``step``-th output row and column of ``conv`` reads, in its weights'
    layout: an unfold at ``step`` times the conv's stride reads only those."""
    stride = tuple(s * step for s in conv.stride)
    cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _targets(y: torch.Tensor, kept: torch.Tensor, step: int) -> torch.Tensor:
    """The dense output's kept channels on the same grid, (N, kept)."""
    y = y[:, kept.to(y.device), ::step, ::step].flatten(2)
    return y.transpose(1, 2).reshape(-1, y.shape[1])


def _route(m: nn.Module, x, saved: list):
    """The input of top-level module ``m`` as Ultralytics' ``_predict_once`` routes it (``m.f``)."""
    if m.f == -1:
        return x
    return saved[m.f] if isinstance(m.f, int) else [x if j == -1 else saved[j] for j in m.f]


def _fittable(module: nn.Module, names: dict) -> list[tuple[str, nn.Conv2d]]:
    """The ordinary convs of a module, by their name in the model (DFL's fixed conv and grouped convs stay)."""
    fixed = {id(c) for d in module.modules() if isinstance(d, DFL) for c in d.modules()}
    return [
        (names[c], c) for c in module.modules() if isinstance(c, nn.Conv2d) and c.groups == 1 and id(c) not in fixed
    ]


class _Recorder:
    """Hooks that keep, per conv, its inputs (``inputs=True``) or outputs as they pass, until taken."""

    def __init__(self, convs: list[nn.Conv2d], inputs: bool):
        """Hook every conv of ``convs``."""
        self.seen: dict[nn.Conv2d, list[torch.Tensor]] = {}
        if inputs:
            self.handles = [c.register_forward_pre_hook(lambda c, args: self._keep(c, args[0])) for c in convs]
        else:
            self.handles = [c.register_forward_hook(lambda c, _args, out: self._keep(c, out)) for c in convs]

    def _keep(self, conv: nn.Conv2d, x: torch.Tensor) -> None:
        self.seen.setdefault(conv, []).append(x)

    def take(self, conv: nn.Conv2d) -> list[torch.Tensor]:
        """What ``conv`` saw since the last take."""
        return self.seen.pop(conv, [])

    def remove(self) -> None:
        """Remove the hooks."""
        for h in self.handles:
            h.remove()


def _dense_pass(md: nn.Module, fits: list, kept: dict, inputs: list) -> tuple[list, dict]:
    """The dense module's outputs for every chunk, and each fitted conv's targets per chunk (grid, kept channels)."""
    recorder = _Recorder([d for _, _, d in fits], inputs=False)
    outputs, targets = [], {name: [] for name, _, _ in fits}
    try:
        for x in inputs:
            outputs.append(md(x))
            for name, _, d in fits:
                targets[name].append([_targets(y, kept[name], _step(*y.shape[-2:])) for y in recorder.take(d)])
    finally:
        recorder.remove()
    return outputs, targets


def _refit_module(mp: nn.Module, fits: list, targets: dict, inputs: list, bn_p: dict, bn_d: dict, kept: dict) -> None:
    """One round: regress every fitted conv of ``mp`` on the chunks' pruned inputs, and set its weights."""
    regressions = {name: _Regression() for name, _, _ in fits}
    recorder = _Recorder([p for _, p, _ in fits], inputs=True)
    try:
        for c, x in enumerate(inputs):
            mp(x)
            for name, p, _ in fits:
                for xin, y in zip(recorder.take(p), targets[name][c]):
                    step = _step(*_out_size(p, xin))
                    regressions[name].add(_patches(p, xin, step).float(), y.float())
    finally:
        recorder.remove()
    for name, p, d in fits:
        if regressions[name].n == 0:
            continue
        prior = p.weight.detach().reshape(p.out_channels, -1).T
        w, b = regressions[name].solve(prior)
        p.weight.data.copy_(w.T.reshape(p.weight.shape).to(p.weight))
        _set_intercept(p, b, kept[name], bn_p.get(p), bn_d.get(d))


def _set_intercept(p, b, kept, bn_p, bn_d) -> None:
    """Put the fitted intercept where the dense model had its statistics: BatchNorm running mean, or the bias."""
    if bn_p is not None and bn_d is not None:
        index = kept.to(bn_d.running_mean.device)
        bn_p.running_mean.copy_((bn_d.running_mean[index] - b.to(bn_d.running_mean)).to(bn_p.running_mean))
        bn_p.running_var.copy_(bn_d.running_var[index].to(bn_p.running_var))
        if p.bias is not None:
            p.bias.data.zero_()
    elif p.bias is not None:
        p.bias.data.copy_(b.to(p.bias))
    else:
        p.bias = nn.Parameter(b.to(p.weight))


@torch.no_grad()
def reconstruct(pruned: nn.Module, dense: nn.Module, kept: dict[str, torch.Tensor], images, verbose=True) -> None:
    """Refit the convs of ``pruned`` so that, module after module, they reproduce ``dense``'s outputs.

    Args:
        pruned (DetectionModel): The pruned model (modified in place), C2f blocks split as ``dense``'s are.
        dense (DetectionModel): The model before pruning, the same architecture with its original widths.
        kept (dict[str, torch.Tensor]): For every conv whose output channels were pruned, by name, the dense
            indices of the channels it kept (convs not named kept all of theirs).
        images (list[torch.Tensor]): Calibration batches (B, 3, H, W) in [0, 1].
        verbose (bool): Show a progress bar over the modules.
    """
    names_p = {m: n for n, m in pruned.named_modules()}
    dense_by_name = dict(dense.named_modules())
    bn_p, bn_d = bn_of_conv(pruned), bn_of_conv(dense)
    param = next(pruned.parameters())
    batches = [c.to(param.device, param.dtype) for b in images for c in chunks(b)]
    xs_p, xs_d = list(batches), list(batches)
    saved_p, saved_d = [[] for _ in batches], [[] for _ in batches]
    with mode(pruned), mode(dense):
        modules = list(zip(pruned.model, dense.model))
        for i, (mp, md) in enumerate(TQDM(modules, desc="reconstruction", disable=not verbose)):
            inputs_p = [_route(mp, x, s) for x, s in zip(xs_p, saved_p)]
            inputs_d = [_route(md, x, s) for x, s in zip(xs_d, saved_d)]
            fits, kept_all = [], {}
            for name, p in _fittable(mp, names_p):
                d, index = dense_by_name.get(name), kept.get(name, torch.arange(p.out_channels))
                if isinstance(d, nn.Conv2d) and len(index) == p.out_channels and d.kernel_size == p.kernel_size:
                    fits.append((name, p, d))
                    kept_all[name] = index
            xs_d, targets = _dense_pass(md, fits, kept_all, inputs_d)
            for _ in range(ROUNDS if fits else 0):
                _refit_module(mp, fits, targets, inputs_p, bn_p, bn_d, kept_all)
            if i == len(modules) - 1:
                break  # the head's outputs are not needed
            xs_p = [mp(x) for x in inputs_p]
            for s, x in zip(saved_p, xs_p):
                s.append(x if mp.i in pruned.save else None)
            for s, x in zip(saved_d, xs_d):
                s.append(x if md.i in dense.save else None)
