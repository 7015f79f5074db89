"""What pruning did: MACs, params and channels per layer, before and after."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from yolo_nexp.utils import atomic_write, mode


@torch.no_grad()
def macs_and_params(model: nn.Module, imgsz: int = 640) -> tuple[int, int]:
    """MACs of one forward pass at ``imgsz`` x ``imgsz`` (batch 1) and the parameter count."""
    param = next(model.parameters())
    with mode(model):
        example = torch.zeros(1, 3, imgsz, imgsz, device=param.device, dtype=param.dtype)
        macs, _ = tp.utils.count_ops_and_params(model, example)
    return int(macs), sum(p.numel() for p in model.parameters())


@dataclass
class PruneReport:
    """Result of one :func:`yolo_nexp.prune` call.

    Attributes:
        criterion (str): Importance criterion used.
        ratio (float): Fraction of the prunable channels removed, in all.
        round_to (int): Channel counts were rounded to multiples of this.
        imgsz (int): Input size the MACs are counted at.
        macs_before (int): MACs of the dense model.
        macs_after (int): MACs of the pruned model.
        params_before (int): Parameters of the dense model.
        params_after (int): Parameters of the pruned model.
        channels (dict[str, list[int]]): ``{conv block name: [channels before, channels after]}``.
        floored (list[str]): Layers cut down to their floor (``round_to`` channels, or 1) and no further.
        global_pruning (bool): Channels were ranked across layers rather than per group.
        macs_target (float | None): Fraction of MACs asked for.
        seconds_scoring (float): Wall time of the calibration pass and the criterion's scores.
        seconds_sensitivity (float): Wall time of the sensitivity estimate (0 for other allocations).
        seconds_surgery (float): Wall time of the rest: allocation, repair and the structural pruning.
        repair (str): How removed channels were repaired (``mean``: folded into consumers, ``none``).
        allocation (str): How channels were allocated across layers (``uniform``, ``global``, ``sensitivity``).
        bn_recal (bool): Whether BatchNorm statistics were re-estimated on the calibration images.
        reconstruct (bool): Whether every conv was refit to the dense model's outputs after pruning.
        seconds_reconstruction (float): Wall time of that refit (0 without it).
        passes (int): Prunes it took, each recalibrated on the model the previous one left.
        latency_target (float | None): Latency ratio asked for (``latency=``).
        backend (str | None): Backend the latencies were measured on (None: not measured).
        latency_batch (int): Images per timed run.
        latency_ms (dict | None): ``{"dense": ..., "pruned": ...}``, each the milliseconds per run (median,
            p25, p75, min, max, runs) of the exported model, the two timed in interleaved rounds.
        latency_met (bool | None): Whether the measured ratio is at most ``latency_target`` (None: no target).
        latency_note (str): Why latency was not measured, or that the target was not met.
        candidates (list[float]): With ``candidates > 1``: each candidate prune's fidelity to the dense model's
            detections (mAP50-95 against them, :mod:`yolo_nexp.pruning.selection`); empty otherwise.
        chosen (int | None): Index of the candidate kept (None: one prune, no choice).
    """

    criterion: str
    ratio: float
    round_to: int
    imgsz: int
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    channels: dict[str, list[int]] = field(default_factory=dict)
    floored: list[str] = field(default_factory=list)
    global_pruning: bool = False
    macs_target: float | None = None
    seconds_scoring: float = 0.0
    seconds_sensitivity: float = 0.0
    seconds_surgery: float = 0.0
    repair: str = "none"
    allocation: str = "uniform"
    bn_recal: bool = False
    reconstruct: bool = False
    seconds_reconstruction: float = 0.0
    passes: int = 1
    latency_target: float | None = None
    backend: str | None = None
    latency_batch: int = 1
    latency_ms: dict | None = None
    latency_met: bool | None = None
    latency_note: str = ""
    candidates: list[float] = field(default_factory=list)
    chosen: int | None = None

    @property
    def speedup(self) -> float | None:
        """Dense latency / pruned latency (medians) on the backend, or None when not measured."""
        return self.latency_ms["dense"]["median"] / self.latency_ms["pruned"]["median"] if self.latency_ms else None

    @property
    def macs_reduction(self) -> float:
        """Fraction of MACs removed."""
        return 1.0 - self.macs_after / self.macs_before

    @property
    def params_reduction(self) -> float:
        """Fraction of parameters removed."""
        return 1.0 - self.params_after / self.params_before

    def to_dict(self) -> dict:
        """Plain dict, with the reductions, for JSON."""
        reductions = {"macs_reduction": self.macs_reduction, "params_reduction": self.params_reduction}
        return {**asdict(self), **reductions, "speedup": self.speedup}

    @classmethod
    def chain(cls, reports: list[PruneReport], macs_target: float | None = None) -> PruneReport:
        """One report for successive prunes of one model (passes): the first's state before, the last's after, seconds summed."""
        first, last = reports[0], reports[-1]
        channels = {name: [first.channels[name][0], last.channels[name][1]] for name in first.channels}
        return cls(
            **{
                **asdict(last),
                "channels": channels,
                "macs_target": macs_target,
                "ratio": 1 - sum(a for _, a in channels.values()) / sum(b for b, _ in channels.values()),
                "macs_before": first.macs_before,
                "params_before": first.params_before,
                "seconds_scoring": sum(r.seconds_scoring for r in reports),
                "seconds_sensitivity": sum(r.seconds_sensitivity for r in reports),
                "seconds_surgery": sum(r.seconds_surgery for r in reports),
                "passes": len(reports),
            }
        )

    def summary(self) -> str:
        """One line: MACs and params before -> after, and the time taken."""
        return (
            f"{self.criterion} ({self.allocation}, repair {self.repair}): MACs {self.macs_before / 1e9:.3f}G -> {self.macs_after / 1e9:.3f}G "
            f"(-{self.macs_reduction:.1%}), params {self.params_before / 1e6:.3f}M -> {self.params_after / 1e6:.3f}M "
            f"(-{self.params_reduction:.1%}) at imgsz={self.imgsz}; scoring {self.seconds_scoring:.1f}s, "
            f"sensitivity {self.seconds_sensitivity:.1f}s, surgery {self.seconds_surgery:.1f}s"
            + (f", reconstruction {self.seconds_reconstruction:.1f}s" if self.reconstruct else "")
            + (f" ({self.passes} passes)" if self.passes > 1 else "")
            + (f"; {self.candidates_line()}" if self.candidates else "")
            + (f"; {self.latency_line()}" if self.latency_ms or self.latency_note else "")
        )

    def candidates_line(self) -> str:
        """Which candidate prune was kept, and each one's fidelity to the dense model's detections."""
        scores = ", ".join(f"{s:.3f}" for s in self.candidates)
        return f"kept candidate {self.chosen + 1} of {len(self.candidates)} (fidelity {scores}; seconds summed)"

    def latency_line(self) -> str:
        """Dense and pruned latency (median, p25-p75) on the backend and the speed-up beside the MACs cut, or the note."""
        if not self.latency_ms:
            return self.latency_note
        d, p = self.latency_ms["dense"], self.latency_ms["pruned"]
        target = (
            f", target {self.latency_target:g}: {'met' if self.latency_met else 'NOT met'}"
            if self.latency_target
            else ""
        )
        return (
            f"latency on {self.backend} (batch {self.latency_batch}) {d['median']:.2f} ms [{d['p25']:.2f}-{d['p75']:.2f}] "
            f"-> {p['median']:.2f} ms [{p['p25']:.2f}-{p['p75']:.2f}] (ratio {p['median'] / d['median']:.3f}{target}): "
            f"{self.speedup:.2f}x faster for {self.macs_before / self.macs_after:.2f}x fewer MACs"
        )


def save_json(data: dict, path: str | Path) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2)))


def stage_table(stages: dict[str, dict]) -> str:
    """Table of MACs (G), params (M) and mAP per stage, with the reductions against the first stage.

    mAP columns are labelled by source: Ultralytics' validator, and pycocotools (official COCO) when available.
    """
    coco = any("coco" in s for s in stages.values())
    head = f"{'stage':<11}{'GMACs':>9}{'Mparams':>10}{'mAP50':>9}{'mAP50-95':>10}"
    head += f"{'COCO mAP50':>12}{'COCO mAP50-95':>15}" if coco else ""
    lines = [f"{'':<39}{'(ultralytics)':>19}" + (f"{'(pycocotools)':>27}" if coco else ""), head, "-" * len(head)]
    for name, s in stages.items():
        line = f"{name:<11}{s['macs'] / 1e9:>9.3f}{s['params'] / 1e6:>10.3f}{_fmt(s.get('map50')):>9}{_fmt(s.get('map')):>10}"
        if coco:
            line += f"{_fmt(s.get('coco', {}).get('map50')):>12}{_fmt(s.get('coco', {}).get('map')):>15}"
        lines.append(line)
    first, last = next(iter(stages.values())), list(stages.values())[-1]
    macs_cut, params_cut = 1 - last["macs"] / first["macs"], 1 - last["params"] / first["params"]
    lines.append(f"{'reduction':<11}{-macs_cut:>9.1%}{-params_cut:>10.1%}")
    if not coco:
        lines.append("official COCO mAP (pycocotools): not available, no COCO annotation json (coco_json=...)")
    return "\n".join(lines)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def plot_channels(channels: dict[str, list[int]], path: str | Path, title: str = "") -> Path:
    """Bar chart of output channels per conv block, dense against pruned, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(channels)
    before, after = zip(*(channels[n] for n in names))
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.18), 4.5), tight_layout=True)
    x = range(len(names))
    ax.bar(x, before, color="#c8c8c8", label="dense")
    ax.bar(x, after, color="#1f77b4", label="pruned")
    ax.set_xticks(list(x), [n.removeprefix("model.") for n in names], rotation=90, fontsize=6)
    ax.set_ylabel("output channels")
    ax.set_title(title or "channels kept per conv block")
    ax.legend()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return Path(path)
