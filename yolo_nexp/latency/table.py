"""The latency table: each prunable set's layers timed on the backend at its candidate widths, cached as json.

A removal step takes a linked set of groups (:mod:`yolo_nexp.pruning.allocation`) from one width to the next;
what it saves on the backend is what the convs it narrows (the roots' outputs, the consumers' inputs) save.
For every set this module builds those convs alone (conv, bias, and the block's activation, as Ultralytics'
exporter fuses them), at the input sizes they see in the model at ``imgsz`` and ``batch``, with the set at
one width and every other set dense, exports them with Ultralytics' ONNX export helper and times them on the
backend, all widths of one set interleaved (:func:`~yolo_nexp.latency.timing.interleaved_ms`).

Cost: every set's layers at one width take about twice the model's time (each conv is narrowed by two sets,
its producer's and its own), and a set has up to ~65 candidate widths at ``round_to=8``. On a busy 2-core CPU
one (set, width) costs ~80 ms of export, session and Python overhead besides its runs (yolov8n at 96: 430
widths in 36 s); yolov8s at 640 has ~1500 candidate (set, width) pairs, so measuring them all is estimated at
3-4 min (overhead plus ~7 runs of each set's layers), against ~1 min for the ~600 that :data:`MAX_WIDTHS`
keeps (estimates from those figures, not measured at 640). So at most :data:`MAX_WIDTHS` widths per set are
measured, evenly spaced over its candidates from the dense width to the floor, and the others are
interpolated linearly: a width the backend runs unusually fast between two measured ones is then not seen. Measured once per (architecture, backend and its version, imgsz, batch, round_to, host)
and cached under ``<cache_dir>/latency/``; later passes of a prune read the dense model's table by set name,
so their predictions are approximate and the whole model is timed after each pass (:mod:`.target`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from ultralytics.nn.modules import Conv
from ultralytics.utils import LOGGER

from yolo_nexp.arch.family import c2f_split
from yolo_nexp.latency.backends import PACKAGES, runner
from yolo_nexp.latency.timing import interleaved_ms
from yolo_nexp.pruning.allocation import removal_steps
from yolo_nexp.pruning.groups import build_graph, linked_sets, prunable_groups
from yolo_nexp.utils import atomic_write, cache_dir, mode

TABLE_VERSION = 1  # bump when what is measured changes: old caches are then not read
MAX_WIDTHS = 12  # widths measured per set; the others are interpolated
TABLE_RUNS, TABLE_WARMUP, TABLE_ROUNDS = 6, 1, 3


@dataclass
class LatencyTable:
    """Milliseconds of every set's layers at measured widths.

    Attributes:
        ms (dict[str, dict[int, float]]): ``{set name (its first root conv's name): {width: median ms}}``.
        key (str): Hash of what the table was measured for.
        seconds (float): Seconds the measurement took (when it was made, for a cached table).
        cached (bool): Read from the cache rather than measured now.
        meta (dict): Backend, imgsz, batch and round_to it was measured at.
    """

    ms: dict[str, dict[int, float]]
    key: str = ""
    seconds: float = 0.0
    cached: bool = False
    meta: dict = field(default_factory=dict)

    def at(self, name: str, width: int) -> float:
        """Milliseconds of set ``name``'s layers at ``width``: interpolated between measured widths, held beyond;
        made non-increasing as the width falls, so that no step is predicted to slow the model down."""
        points = sorted(self.ms.get(name, {}).items())  # ascending width
        if not points:
            return 0.0
        ws = [w for w, _ in points]
        ms = np.minimum.accumulate([m for _, m in points][::-1])[::-1]  # ms[j] = min over widths >= ws[j]
        return float(np.interp(width, ws, ms))

    def dense_ms(self) -> float:
        """The dense convs' milliseconds as the table sees them: every set's layers at its widest measured width,
        halved (each conv is narrowed by two sets, as its producer's output and as its own input)."""
        return sum(max(t.items())[1] for t in self.ms.values() if t) / 2

    def saved(self, name: str, before: int, after: int) -> float:
        """Milliseconds one step of set ``name`` from ``before`` to ``after`` channels saves (>= 0)."""
        return max(self.at(name, before) - self.at(name, after), 0.0)


class _SetLayers(nn.Module):
    """The convs one set narrows, each on its own input: what a step of that set changes in the model."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, *xs):
        return tuple(layer(x) for layer, x in zip(self.layers, xs))


def _conv_inputs(det: nn.Module, imgsz: int, batch: int) -> dict[nn.Conv2d, tuple[int, ...]]:
    """The input shape of every conv at ``imgsz`` and ``batch``."""
    shapes, param = {}, next(det.parameters())
    hooks = [
        m.register_forward_pre_hook(lambda m, args: shapes.__setitem__(m, tuple(args[0].shape)))
        for m in det.modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.no_grad(), mode(det):
            det(torch.zeros(1, 3, imgsz, imgsz, device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
    return {m: (batch, *s[1:]) for m, s in shapes.items()}


def _narrowed(conv: nn.Conv2d, act: nn.Module | None, cut_in: int, cut_out: int) -> nn.Module:
    """A random conv of ``conv``'s geometry less ``cut_in`` input and ``cut_out`` output channels, then ``act``."""
    cin, cout = conv.in_channels - cut_in, conv.out_channels - cut_out
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    groups = cout if depthwise else conv.groups if cin % conv.groups == 0 and cout % conv.groups == 0 else 1
    cin = cout if depthwise else cin
    new = nn.Conv2d(cin, cout, conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups, bias=True)
    return nn.Sequential(new, act) if act is not None else new


def _set_module(linked, width: int, acts: dict, shapes: dict) -> tuple[nn.Module, list[np.ndarray]]:
    """The set's layers with the set at ``width``, and random inputs of their shapes."""
    cuts: dict = {}
    for g in linked:
        for (conv, kind), per in g.removed_per_channel.items():
            cuts.setdefault(conv, {"in": 0, "out": 0})[kind] += round(per * (g.size - width))
    layers, inputs, rng = [], [], np.random.default_rng(0)
    for conv, cut in cuts.items():
        if conv not in shapes:
            continue
        layer = _narrowed(conv, acts.get(conv), cut["in"], cut["out"])
        conv_new = layer[0] if isinstance(layer, nn.Sequential) else layer
        layers.append(layer)
        inputs.append(rng.random((shapes[conv][0], conv_new.in_channels, *shapes[conv][2:]), dtype=np.float32))
    return _SetLayers(layers).eval(), inputs


def measured_widths(widths: list[int], most: int = MAX_WIDTHS) -> list[int]:
    """At most ``most`` of a set's candidate widths, evenly spaced, the dense width and the floor included."""
    if len(widths) <= most:
        return list(widths)
    picks = np.unique(np.round(np.linspace(0, len(widths) - 1, most)).astype(int))
    return [widths[i] for i in picks]


def _key(det: nn.Module, backend: str, imgsz: int, batch: int, round_to: int) -> str:
    """Hash of the architecture (every conv's name and geometry), the backend, its version and the host."""
    convs = [
        (n, list(m.weight.shape), m.stride, m.padding, m.dilation, m.groups)
        for n, m in det.named_modules()
        if isinstance(m, nn.Conv2d)
    ]
    version = importlib.metadata.version(PACKAGES[backend])
    host = (platform.machine(), platform.processor(), os.cpu_count())
    what = [TABLE_VERSION, MAX_WIDTHS, convs, backend, version, imgsz, batch, round_to, host]
    return hashlib.sha256(json.dumps(what, default=str).encode()).hexdigest()[:16]


def latency_table(
    det: nn.Module, backend: str, imgsz: int, batch: int = 1, round_to: int = 8, verbose: bool = True
) -> LatencyTable:
    """The latency table of a (stock, not split) detection model: read from the cache, or measured and cached.

    Args:
        det (nn.Module): The dense detection model (unchanged).
        backend (str): One of :data:`~yolo_nexp.latency.backends.BACKENDS` (checked and installed).
        imgsz (int): Input size the layers see their inputs at.
        batch (int): Batch the layers are timed at.
        round_to (int): The pruner's ``round_to``: it sets the candidate widths.
        verbose (bool): Log the measurement.

    Returns:
        (LatencyTable): Milliseconds of each set's layers at its measured widths.
    """
    import onnx
    from ultralytics.utils.export.engine import best_onnx_opset, torch2onnx

    with c2f_split(det):
        key = _key(det, backend, imgsz, batch, round_to)
        path = cache_dir() / "latency" / f"{key}.json"
        if path.is_file():
            data = json.loads(path.read_text())
            ms = {n: {int(w): v for w, v in t.items()} for n, t in data["ms"].items()}
            return LatencyTable(ms, key, data.get("seconds", 0.0), cached=True, meta=data.get("meta", {}))
        t0 = time.perf_counter()
        sets = linked_sets(prunable_groups(build_graph(det), det), det)
        names = {m: n for n, m in det.named_modules()}
        widths = [measured_widths(ws, MAX_WIDTHS) for ws in removal_steps(sets, round_to)]
        acts = {m.conv: m.act for m in det.modules() if isinstance(m, Conv) and not isinstance(m.act, nn.Identity)}
        shapes = _conv_inputs(det, imgsz, batch)
        if verbose:
            LOGGER.info(
                f"yolo-nexp: measuring the latency table on {backend} ({len(sets)} sets, {sum(map(len, widths))} "
                f"widths, imgsz={imgsz}, batch={batch}); once, cached in {path.parent}"
            )
        opset, ms = best_onnx_opset(onnx), {}
        with tempfile.TemporaryDirectory(prefix="nexp-table-") as folder:
            for j, (linked, ws) in enumerate(zip(sets, widths)):
                runners = {}
                for w in ws:
                    module, inputs = _set_module(linked, w, acts, shapes)
                    file = Path(folder) / f"s{j}w{w}.onnx"
                    xs = tuple(torch.from_numpy(x) for x in inputs)
                    ins, outs = [f"x{i}" for i in range(len(xs))], [f"y{i}" for i in range(len(xs))]
                    with warnings.catch_warnings():  # torch's notice that this (Ultralytics') export mode is legacy
                        warnings.simplefilter("ignore", DeprecationWarning)
                        torch2onnx(module, xs, file, opset=opset, input_names=ins, output_names=outs)
                    runners[w] = runner(file, backend, inputs)
                    file.unlink()
                timed = interleaved_ms(runners, TABLE_RUNS, TABLE_WARMUP, TABLE_ROUNDS)
                ms[names[linked[0].module]] = {w: t.median for w, t in timed.items()}
        seconds = time.perf_counter() - t0
    meta = {"backend": backend, "imgsz": imgsz, "batch": batch, "round_to": round_to}
    data = {"ms": ms, "seconds": seconds, "meta": meta}
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1)))
    if verbose:
        LOGGER.info(f"yolo-nexp: latency table measured in {seconds:.1f}s")
    return LatencyTable(ms, key, seconds, cached=False, meta=meta)
