"""Internal retrieval: score stored frames with the question's own queries, per layer.

score(frame f, layer l) = < mean pre-RoPE query of the question tokens (heads concatenated),
mean pre-RoPE key of frame f (kv heads repeated to the query heads, concatenated) >,
the raw dot product (``"dot"``, ReKV's code) or its cosine (``"cosine"``, ReKV's paper).
"""

from __future__ import annotations

import torch


def frame_scores(query_mean: torch.Tensor, summaries: torch.Tensor, score: str = "dot") -> torch.Tensor:
    """Scores of every stored frame for one layer.

    Args:
        query_mean: ``(Hq, D)`` mean pre-RoPE query of the question tokens (fp32).
        summaries: ``(F, Hkv, D)`` mean pre-RoPE key of each frame (fp32).
    Returns ``(F,)`` fp32.
    """
    hq, dim = query_mean.shape
    frames, hkv, _ = summaries.shape
    group = hq // hkv
    # Repeating each kv head over its G query heads and taking the dot product equals the
    # dot product with the query heads of each group summed first.
    grouped = query_mean.view(hkv, group, dim).sum(dim=1)
    dots = torch.einsum("hd,fhd->f", grouped, summaries)
    if score == "dot":
        return dots
    if score == "cosine":
        q_norm = query_mean.norm()
        k_norm = summaries.reshape(frames, -1).norm(dim=1) * group**0.5
        return dots / (q_norm * k_norm).clamp_min(torch.finfo(dots.dtype).tiny)
    raise ValueError(f"unknown score {score!r}")
