"""Attention blocks (YOLO11's C2PSA, PSABlock, Attention): what must keep its width.

``Attention`` views its ``qkv`` output as ``(batch, num_heads, 2 * key_dim + head_dim, positions)`` and its
value path as ``(batch, C, H, W)``, with ``num_heads``, ``key_dim`` and ``head_dim`` stored as attributes.
Torch-Pruning cannot map channel indices through these views, and pruning whole heads would also change
the width of the residual stream the heads write into (``C = num_heads * head_dim``), which in C2PSA is
one of the two equal halves its ``split`` expects. So the attention internals and the residual stream
are left alone: ``qkv``, ``proj``, ``pe``, the feed-forward output, and the convs that produce the stream
(C2PSA's ``cv1``; both halves of a C2f-style block whose bottlenecks contain attention).

What stays prunable: each PSABlock's feed-forward hidden layer (``ffn[0]``, a plain conv pair), C2PSA's
``cv2`` output, and everything around the block.
"""

from __future__ import annotations

from torch import nn
from ultralytics.nn.modules.block import C2PSA, PSA, Attention, PSABlock

from yolo_nexp.arch.csp import C2fSplit


def _has_attention(module: nn.Module) -> bool:
    return any(isinstance(m, Attention) for m in module.modules())


def attention_locked(model: nn.Module) -> list[nn.Module]:
    """Conv blocks whose output channels must be kept so that every attention block stays consistent."""
    locked: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, Attention):
            locked += [m.qkv, m.proj, m.pe]
        elif isinstance(m, PSABlock):
            locked.append(m.ffn[-1])  # writes into the residual stream
        elif isinstance(m, PSA):
            locked += [m.cv1, m.ffn[-1]]
        elif isinstance(m, C2PSA):
            locked.append(m.cv1)  # split into the two equal halves C2PSA's forward expects
        elif isinstance(m, C2fSplit) and _has_attention(m.m):
            locked += [m.cv0, m.cv1]  # the halves must stay equal, and the second one is the residual stream
    return locked
