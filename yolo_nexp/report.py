"""What pruning did: MACs, params and channels per layer, before and after."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn


@torch.no_grad()
def macs_and_params(model: nn.Module, imgsz: int = 640) -> tuple[int, int]:
    """MACs of one forward pass at ``imgsz`` x ``imgsz`` (batch 1) and the parameter count."""
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        example = torch.zeros(1, 3, imgsz, imgsz, device=param.device, dtype=param.dtype)
        macs, _ = tp.utils.count_ops_and_params(model, example)
    finally:
        model.train(was_training)
    return int(macs), sum(p.numel() for p in model.parameters())


@dataclass
class PruneReport:
    """Result of one :func:`yolo_nexp.prune` call.

    Attributes:
        criterion (str): Importance criterion used.
        ratio (float): Fraction of channels removed per prunable group.
        round_to (int): Channel counts were rounded to multiples of this.
        imgsz (int): Input size the MACs are counted at.
        macs_before (int): MACs of the dense model.
        macs_after (int): MACs of the pruned model.
        params_before (int): Parameters of the dense model.
        params_after (int): Parameters of the pruned model.
        channels (dict[str, list[int]]): ``{conv block name: [channels before, channels after]}``.
        seconds_scoring (float): Wall time of NEXP scoring (0 for criteria that need no data).
        seconds_pruning (float): Wall time of the structural pruning itself.
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
    seconds_scoring: float = 0.0
    seconds_pruning: float = 0.0

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
        return {**asdict(self), "macs_reduction": self.macs_reduction, "params_reduction": self.params_reduction}

    def save_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    def summary(self) -> str:
        """One line: MACs and params before -> after, and the time taken."""
        return (
            f"{self.criterion} ratio={self.ratio:g}: MACs {self.macs_before / 1e9:.3f}G -> {self.macs_after / 1e9:.3f}G "
            f"(-{self.macs_reduction:.1%}), params {self.params_before / 1e6:.3f}M -> {self.params_after / 1e6:.3f}M "
            f"(-{self.params_reduction:.1%}) at imgsz={self.imgsz}; scoring {self.seconds_scoring:.1f}s, "
            f"pruning {self.seconds_pruning:.1f}s"
        )
