"""Per-channel feature-map rank and activation entropy, streamed over calibration batches.

What ``calibrate(information=True)`` records for every ``Conv`` block's output: the two information indicators
that allocation by information concentration fuses (:mod:`yolo_nexp.pruning.information`). Only sums and
counts are kept, so memory does not grow with the number of images.
"""

from __future__ import annotations

import math

import torch

ENTROPY_BINS = 32  # the most histogram bins per channel for the activation entropy (fewer for few values)
RANK_IMAGES = 4  # images per batch whose map ranks are computed (HRank: a filter's mean map rank hardly varies)


def map_ranks(maps: torch.Tensor) -> torch.Tensor:
    """Matrix rank of each (H, W) map of an (N, H, W) tensor, as ``torch.linalg.matrix_rank`` gives it in float32.

    The same count (singular values above ``max(H, W) * eps(float32)`` times the largest), read off the
    eigenvalues of the float64 Gram matrix of the shorter side: 3-5x faster on the CPU than the SVD, and float64
    resolves eigenvalues far below that threshold squared, so the count is the same.
    """
    m = (maps.cpu() if maps.device.type == "mps" else maps).double()  # MPS has no float64
    gram = m @ m.transpose(1, 2) if m.shape[1] <= m.shape[2] else m.transpose(1, 2) @ m
    eig = torch.linalg.eigvalsh(gram)  # ascending, the squared singular values
    tol = (max(maps.shape[1:]) * torch.finfo(torch.float32).eps) ** 2
    return (eig > tol * eig[:, -1:].clamp(min=0)).sum(1).to(maps.device)


class FeatureInformation:
    """Streaming per-channel feature-map rank and activation entropy of a (B, C, H, W) output.

    Rank as HRank has it: the matrix rank of each image's H x W map of the channel, here divided by
    ``min(H, W)`` (the largest rank such a map can have) so that layers of every resolution compare, and
    averaged over the first :data:`RANK_IMAGES` images of every batch. Entropy: the Shannon entropy of a
    histogram of the channel's values over every image and position, divided by ``log(bins)`` (a channel
    spread evenly over its range scores 1, a constant one 0).
    The bins are set on the first batch: edges from each channel's range there (values outside it count in the
    end bins), and at most the square root of the values per channel (the square-root rule), so that a small
    map (2 x 2 at stride 32 of a 64 px input) is not judged poorer for having fewer values than bins to fill.
    What is kept is a count per bin, so memory does not grow with the images.

    Args:
        bins (int): The most histogram bins per channel.
    """

    def __init__(self, bins: int = ENTROPY_BINS):
        """Start empty."""
        self.max_bins, self.bins, self.n, self.rank_sum, self.counts = bins, bins, 0, None, None
        self.lo = self.width = None
        self.n_ranked = 0  # images whose maps were ranked (at most RANK_IMAGES a batch)

    def update(self, x: torch.Tensor) -> None:
        """Add one batch."""
        x = x.detach().float()
        b, c, h, w = x.shape
        k = min(b, RANK_IMAGES)  # the rank is the costly part (an eigendecomposition per map)
        ranks = map_ranks(x[:k].reshape(k * c, h, w)).reshape(k, c).double().sum(0) / min(h, w)
        if self.lo is None:
            self.bins = min(self.max_bins, max(2, math.isqrt(b * h * w)))
            self.lo = x.amin((0, 2, 3)).view(1, c, 1, 1)
            self.width = (x.amax((0, 2, 3)).view(1, c, 1, 1) - self.lo).clamp(min=1e-12)
            self.rank_sum = torch.zeros(c, dtype=torch.float64, device=x.device)
            self.counts = torch.zeros(c * self.bins, dtype=torch.float64, device=x.device)
        idx = ((x - self.lo) / self.width * self.bins).floor().clamp_(0, self.bins - 1).long()
        idx += torch.arange(c, device=x.device).view(1, c, 1, 1) * self.bins  # one bincount for every channel
        self.counts += torch.bincount(idx.flatten(), minlength=c * self.bins).double()
        self.rank_sum += ranks
        self.n += b
        self.n_ranked += k

    @property
    def rank(self) -> torch.Tensor:
        """Mean normalised map rank per channel, in [0, 1] (CPU, float64)."""
        return (self.rank_sum / max(self.n_ranked, 1)).cpu()

    @property
    def entropy(self) -> torch.Tensor:
        """Normalised entropy per channel, in [0, 1] (CPU, float64)."""
        counts = self.counts.view(-1, self.bins).cpu()
        p = counts / counts.sum(1, keepdim=True).clamp(min=1)
        return -(p * p.clamp(min=1e-300).log()).sum(1) / math.log(self.bins)
