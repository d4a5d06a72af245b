"""Attention kernels of ReKV: sink + sliding-window attention for encoding, context
attention for question answering, and the RoPE interface the family adapters provide.

Shapes: ``Hq`` query heads, ``Hkv`` key/value heads (GQA group ``G = Hq // Hkv``; query head
``h`` reads kv head ``h // G``), ``D`` head dim. Batch size is 1 (one stream).
"""

from __future__ import annotations

from typing import Optional, Protocol, Tuple

import torch
import torch.nn.functional as F


class Rope(Protocol):
    """RoPE at arbitrary positions, supplied by the family adapter (``Backbone.rope``)."""

    def tables(self, positions: torch.Tensor, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """cos, sin ``(T, R)`` in ``like``'s dtype for ``(P, T)`` positions."""
        ...

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """RoPE of ``x`` ``(H, T, D)`` with tables ``(T, R)``."""
        ...


def sink_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_sink: torch.Tensor,
    k_sink: torch.Tensor,
    v_sink: torch.Tensor,
    first_query: int,
    window: Optional[int],
    scaling: float,
    block: int,
) -> torch.Tensor:
    """Attention of a chunk of queries over sink tokens plus a per-query sliding window.

    Args:
        q: ``(Hq, L, D)`` queries rotated in the window frame.
        k, v: ``(Hkv, N, D)`` keys (rotated in the window frame) / values; query ``i`` sits
            at key index ``first_query + i`` and sees key indices in
            ``(first_query + i - window, first_query + i]`` (all earlier ones if ``window`` is None).
        q_sink: ``(Hq, L, D)`` the same queries rotated at their sink-relative positions.
        k_sink, v_sink: ``(Hkv, S, D)`` sink keys (rotated at 0..S-1) / values, seen by every query.
        block: queries per SDPA call; bounds the mask to ``block x (S + window + block)``.

    Returns ``(Hq, L, D)``: one softmax over the union of sink and window keys.

    Sink scores need the queries rotated differently from window scores. Both fit one
    ``scaled_dot_product_attention`` call by widening the head dim: queries
    ``[q | q_sink]``, window keys ``[k | 0]``, sink keys ``[0 | k_sink]``, so that each key
    meets only its own rotation of the query (the scale stays ``1/sqrt(D)``).
    """
    hq, length, dim = q.shape
    n_sink = k_sink.shape[1]
    if n_sink:
        q = torch.cat([q, q_sink], dim=-1)
        sink_keys = torch.cat([torch.zeros_like(k_sink), k_sink], dim=-1)
        k = torch.cat([k, torch.zeros_like(k)], dim=-1)
    out = torch.empty((hq, length, dim), dtype=v.dtype, device=v.device)
    gqa = hq != k.shape[0]
    for i0 in range(0, length, block):
        i1 = min(length, i0 + block)
        lo = 0 if window is None else max(0, first_query + i0 - window + 1)
        hi = first_query + i1
        q_idx = torch.arange(first_query + i0, hi, device=q.device)[:, None]
        k_idx = torch.arange(lo, hi, device=q.device)[None, :]
        mask = k_idx <= q_idx
        if window is not None:
            mask &= k_idx > q_idx - window
        keys, values = k[:, lo:hi], v[:, lo:hi]
        if n_sink:
            keys, values = torch.cat([sink_keys, keys], dim=1), torch.cat([v_sink, values], dim=1)
            mask = torch.cat([mask.new_ones((i1 - i0, n_sink)), mask], dim=1)
        out[:, i0:i1] = F.scaled_dot_product_attention(
            q[None, :, i0:i1], keys[None], values[None], attn_mask=mask, scale=scaling, enable_gqa=gqa
        )[0]
    return out


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float, past: int = 0) -> torch.Tensor:
    """Causal attention of ``(Hq, L, D)`` queries over ``(Hkv, past + L, D)`` keys/values,
    where the first ``past`` keys are context every query sees. Returns ``(Hq, L, D)``."""
    length, total = q.shape[1], k.shape[1]
    mask = None
    if length > 1:
        mask = torch.arange(total, device=q.device)[None, :] <= torch.arange(past, past + length, device=q.device)[:, None]
    out = F.scaled_dot_product_attention(
        q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), attn_mask=mask, scale=scaling, enable_gqa=q.shape[0] != k.shape[0]
    )
    return out[0]
