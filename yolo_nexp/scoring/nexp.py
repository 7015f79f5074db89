"""Neural Expressiveness (NEXP): streaming activation statistics and the per-channel score.

For N calibration images and one conv block, let B[n, c, p] = (A[n, c, p] > 0) be the binarised
output of channel c at spatial position p, and k[c, p] = sum_n B[n, c, p] the number of images
that fire there. Then

    NEXP(c) = mean_p 2 * k[c, p] * (N - k[c, p]) / (N * (N - 1))

which equals the mean normalised Hamming distance between channel c's binary maps over all
ordered pairs of different images. A channel that always or never fires at a position separates no
two images there (0); one that fires on half of them scores about 0.5. Channels with the lowest NEXP
are pruned first. Only the integer counts k are kept, so memory does not grow with N and batches
can be streamed.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


def nexp_from_counts(counts: torch.Tensor, n: int) -> torch.Tensor:
    """Closed-form NEXP from firing counts.

    Args:
        counts (torch.Tensor): Integer tensor (C, ...) of how many of the ``n`` images fire per channel and position.
        n (int): Number of images the counts were taken over (at least 2).

    Returns:
        (torch.Tensor): float32 tensor (C,), the NEXP score of every channel, in [0, N / (2 (N - 1))], about [0, 0.5].
    """
    if n < 2:
        raise ValueError(f"NEXP needs at least 2 calibration images, got {n}: raise 'batches' or the batch size.")
    k = counts.reshape(counts.shape[0], -1).double()
    return (2.0 * k * (n - k) / (n * (n - 1))).mean(1).float()


def nexp_continuous(variance: torch.Tensor) -> torch.Tensor:
    """Continuous NEXP from the unbiased variance over images of each (channel, position): ``2 * mean_p var``.

    It is the mean squared distance between a channel's maps for two different images, so on binary maps it
    equals :func:`nexp_from_counts` exactly; on raw activations it also sees how far apart the maps are,
    not only whether they cross zero.

    Args:
        variance (torch.Tensor): (C, ...) variance over images per channel and position.

    Returns:
        (torch.Tensor): float32 tensor (C,).
    """
    return (2.0 * variance.reshape(variance.shape[0], -1).double().mean(1)).float()


def nexp_pairwise(activations: torch.Tensor) -> torch.Tensor:
    """Reference O(N^2) NEXP: mean normalised Hamming distance over all ordered pairs of different images.

    Kept for tests and the scoring-cost benchmark; use :class:`FiringCounter` for real work.

    Args:
        activations (torch.Tensor): (N, C, ...) activations (or binary maps) of N images.

    Returns:
        (torch.Tensor): float32 tensor (C,).
    """
    b = (activations > 0).flatten(2).float()  # N, C, P
    n = b.shape[0]
    total = torch.zeros(b.shape[1], dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            if i != j:
                total += (b[i] != b[j]).double().mean(-1)
    return (total / (n * (n - 1))).float()


class FiringCounter:
    """Streaming per-(channel, position) firing counts of one layer's output.

    Attributes:
        counts (torch.Tensor | None): int32 tensor (C, H, W) of images with a positive activation.
        n (int): Number of images seen.
    """

    def __init__(self):
        """Start with no images seen."""
        self.counts = None
        self.n = 0

    def update(self, output: torch.Tensor) -> None:
        """Add one batch (B, C, H, W) of layer outputs."""
        fired = (output > 0).sum(0, dtype=torch.int32)
        if self.counts is None:
            self.counts = fired
        elif fired.shape != self.counts.shape:
            raise ValueError(
                f"calibration images changed size within one scoring run ({tuple(self.counts.shape)} then "
                f"{tuple(fired.shape)}): all images of one run must share one input size."
            )
        else:
            self.counts += fired
        self.n += output.shape[0]

    def score(self) -> torch.Tensor:
        """NEXP of every channel from the counts so far."""
        if self.counts is None:
            raise RuntimeError("no activations were recorded for this layer: the calibration data was empty.")
        return nexp_from_counts(self.counts.cpu(), self.n)


def position_share(counter: FiringCounter) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel: the firing rate q, and the share of the firing variance that the position explains.

    What NEXP ranks by, for analysis (``benchmarks/stability.py`` reports it); the pruner does not need it.

    With q_p the share of images that fire at position p and q their mean, the variance of the binary
    map over (image, position) is q(1 - q) = mean_p q_p(1 - q_p) (across images, within a position)
    + the variance of q_p over positions. NEXP is 2N/(N-1) times the first term, so
    NEXP = 2N/(N-1) * q(1 - q) * (1 - share): a channel scores low if it is mostly off, mostly on, or
    fires where it fires because of the position rather than the image. NaN for channels that never
    change (q = 0 or 1).

    Args:
        counter (FiringCounter): Firing counts of one layer over at least 2 images.

    Returns:
        (tuple[torch.Tensor, torch.Tensor]): float64 tensors (C,): the firing rate q and the position share.
    """
    q_p = counter.counts.flatten(1).double() / counter.n
    q = q_p.mean(1)
    total = q * (1 - q)
    within = (q_p * (1 - q_p)).mean(1)
    share = torch.where(total > 0, 1 - within / total, torch.full_like(total, float("nan")))
    return q, share


@contextmanager
def recording(blocks: dict[str, nn.Module]) -> Iterator[dict[str, FiringCounter]]:
    """Attach a :class:`FiringCounter` to the output of every block; hooks are removed on exit, also on error."""
    counters = {name: FiringCounter() for name in blocks}
    handles = [
        block.register_forward_hook(lambda _m, _i, out, c=counters[name]: c.update(out.detach()))
        for name, block in blocks.items()
    ]
    try:
        yield counters
    finally:
        for h in handles:
            h.remove()
