"""Internal retrieval: score stored frames with the question's own queries, per layer.

Every frame ``f`` is summarised by its mean pre-RoPE key ``k_f`` (kv heads repeated to the
query heads). The question's pre-RoPE queries ``q_{h,t}`` (head ``h``, question token ``t``)
score it in one of three ways (``pool``):

* ``"mean"`` (ReKV): ``< mean_t q_t , k_f >`` with heads concatenated -- one query for the
  whole question;
* ``"max"``: per question token ``s_t(f) = < q_t , k_f >`` (heads concatenated), each token's
  scores z-normalised over the frames, then the maximum over tokens -- the token that asks
  for a frame is not averaged away by the template tokens around it;
* ``"head"``: like ``"max"`` but per query head and token (z over frames, max over heads and
  tokens).

``score="dot"`` uses raw dot products (ReKV's code); ``"cosine"`` divides by the norms
(ReKV's paper), per token (and per head for ``"head"``).

``hub`` corrects for what a block scores whatever the question (a *hub*: e.g. an empty frame that
every question ranks high), from the same prefill, with no pass over the stored KV:

* ``"center"``: each block's score minus its mean z-score over the question's rows (tokens, or
  tokens x heads) -- a block that every token ranks high gains nothing from it;
* ``"template"``: minus its mean z-score over the rows of ``neutral`` queries -- the chat
  template's tokens after the question, which are the same for every question (a neutral prompt
  that costs nothing: they are in the prefill anyway).
"""

from __future__ import annotations

from typing import Optional

import torch

from lmms_rekv.config import HUB_CORRECTIONS, QUERY_POOLS, SCORES

POOLS = QUERY_POOLS  # the allowed values are the configuration's (one list)
HUBS = tuple(h for h in HUB_CORRECTIONS if h is not None)


def frame_scores(queries: torch.Tensor, summaries: torch.Tensor, score: str = "dot", pool: str = "mean",
                 hub: Optional[str] = None, neutral: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Scores of every stored frame for one layer.

    Args:
        queries: ``(Hq, T, D)`` pre-RoPE queries of the question tokens (fp32); a
            ``(Hq, D)`` tensor is taken as one token.
        summaries: ``(F, Hkv, D)`` mean pre-RoPE key of each frame (fp32).
        hub: None, ``"center"`` or ``"template"`` (see the module docstring).
        neutral: ``(Hq, R, D)`` queries of the template tokens (``hub="template"``).
    Returns ``(F,)`` fp32.
    """
    if queries.dim() == 2:
        queries = queries[:, None]
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}")
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; choose from {POOLS}")
    if hub is not None and hub not in HUBS:
        raise ValueError(f"unknown hub correction {hub!r}; choose from {HUBS}")
    if pool == "mean" and hub is None:
        return _grouped(queries.mean(dim=1, keepdim=True), summaries, score)[0]
    rows = _rows(queries, summaries, score, pool)  # (R, F) z-scored over frames
    best = rows.amax(dim=0)
    if hub == "center":
        return best - rows.mean(dim=0)
    if hub == "template":
        if neutral is None or neutral.shape[-2] == 0:
            raise ValueError("hub correction 'template' needs the template's queries (neutral)")
        return best - _rows(neutral, summaries, score, pool).mean(dim=0)
    return best


def _rows(queries: torch.Tensor, summaries: torch.Tensor, score: str, pool: str) -> torch.Tensor:
    """``(R, F)`` per-row scores z-normalised over the frames: one row (``"mean"``: the mean
    query), one per token (``"max"``) or one per head and token (``"head"``)."""
    hq, tokens, dim = queries.shape
    frames, hkv, _ = summaries.shape
    if pool == "mean":
        return _zscore_rows(_grouped(queries.mean(dim=1, keepdim=True), summaries, score))
    if pool == "max":
        return _zscore_rows(_grouped(queries, summaries, score))
    per_head = queries.view(hkv, hq // hkv, tokens, dim)
    dots = torch.einsum("hgtd,fhd->hgtf", per_head, summaries)
    if score == "cosine":
        q_norm = per_head.norm(dim=-1)[..., None]
        k_norm = summaries.norm(dim=-1).T[:, None, None, :]  # (Hkv, 1, 1, F)
        dots = dots / (q_norm * k_norm).clamp_min(torch.finfo(dots.dtype).tiny)
    return _zscore_rows(dots.reshape(-1, frames))


def token_scores(queries: torch.Tensor, keys: torch.Tensor, score: str = "dot", pool: str = "mean",
                 hub: Optional[str] = None, neutral: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Scores of every stored block by its best token: ``keys`` ``(F, T, Hkv, D)`` (each block's
    stored pre-RoPE keys, fp32) are scored as ``F * T`` rows by ``frame_scores`` and each block
    takes the maximum over its ``T`` tokens. Returns ``(F,)`` fp32."""
    frames, tokens = keys.shape[:2]
    flat = keys.reshape(frames * tokens, *keys.shape[2:])
    return frame_scores(queries, flat, score, pool, hub, neutral).view(frames, tokens).amax(dim=1)


def _grouped(queries: torch.Tensor, summaries: torch.Tensor, score: str) -> torch.Tensor:
    """``(T, F)`` dot products (or cosines) of each token's concatenated heads with each frame."""
    hq, tokens, dim = queries.shape
    frames, hkv, _ = summaries.shape
    group = hq // hkv
    # Repeating each kv head over its G query heads and taking the dot product equals the
    # dot product with the query heads of each group summed first.
    grouped = queries.view(hkv, group, tokens, dim).sum(dim=1)
    dots = torch.einsum("htd,fhd->tf", grouped, summaries)
    if score == "dot":
        return dots
    q_norm = queries.permute(1, 0, 2).reshape(tokens, -1).norm(dim=1)[:, None]
    k_norm = summaries.reshape(frames, -1).norm(dim=1)[None, :] * group**0.5
    return dots / (q_norm * k_norm).clamp_min(torch.finfo(dots.dtype).tiny)


def _zscore_rows(scores: torch.Tensor) -> torch.Tensor:
    """Each row of ``(R, F)`` z-normalised over its F entries (a constant row becomes zeros)."""
    centred = scores - scores.mean(dim=1, keepdim=True)
    std = scores.std(dim=1, unbiased=False, keepdim=True)
    return centred / std.clamp_min(torch.finfo(scores.dtype).tiny)
