"""The retrieval policy of a question, as one callable: ``(layer, question queries) -> blocks``.

Built from the settings (``ReKVConfig``: ``retrieval``, ``score``, ``query_pool``,
``block_score``, ``layer_frames``, ``hybrid_*`` and the selection fields) and two score sources the session
provides -- the internal one (the layer's block summaries against the question's pre-RoPE
queries) and the external one (open_clip similarity of the question to each block), so that
the policy lives here and the engine only asks for blocks."""

from __future__ import annotations

from typing import Callable, List, Optional

import torch

from .scoring import frame_scores, token_scores
from .selection import SelectionPolicy, fuse, select

#: ``(layer, queries (Hq, T, D), neutral (Hq, R, D) or None) -> block indices (time order)``:
#: ``queries`` of the question's tokens, ``neutral`` of the template's tokens after it;
#: ``.fixed``: the same blocks for every layer, known before the first layer runs (external
#: retrieval), or None
Selector = Callable[[int, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def policy_of(config) -> SelectionPolicy:
    """The block-selection policy ``config`` (a ``ReKVConfig``) describes."""
    return SelectionPolicy(topk=config.topk_frames, adaptive=config.adaptive, mass=config.adaptive_mass,
                           temperature=config.adaptive_temperature, min_frames=config.adaptive_min_frames,
                           recent=config.recent_frames, group=config.group_frames)


def make_selector(config, summaries: Callable[[int], torch.Tensor],
                  external_scores: Optional[Callable[[], torch.Tensor]] = None,
                  token_keys: Optional[Callable[[int], torch.Tensor]] = None) -> Selector:
    """The selector of one question. ``summaries(layer)``: ``(blocks, kv_heads, head_dim)``
    block summaries of that layer; ``external_scores()``: ``(blocks,)`` similarity of the
    question to each block (external and hybrid retrieval); ``token_keys(layer)``: ``(blocks,
    tokens, kv_heads, head_dim)`` stored keys, for ``block_score="tokens"``."""
    policy = policy_of(config)

    hub = getattr(config, "hub_correction", None)

    def internal(layer: int, queries: torch.Tensor, neutral: Optional[torch.Tensor]) -> torch.Tensor:
        rows = token_keys(layer).float() if config.block_score == "tokens" else summaries(layer)
        neutral = None if neutral is None else neutral.to(rows.device)
        scorer = token_scores if config.block_score == "tokens" else frame_scores
        return scorer(queries.to(rows.device), rows, config.score, config.query_pool, hub, neutral)

    if config.retrieval == "external":
        chosen = select(external_scores(), policy)

        def same_for_all(layer: int, queries: torch.Tensor, neutral: Optional[torch.Tensor] = None) -> torch.Tensor:
            return chosen

        same_for_all.fixed = chosen  # every layer's blocks fetched in one batched read
        return same_for_all
    if config.retrieval == "internal":
        def per_layer(layer: int, queries: torch.Tensor, neutral: Optional[torch.Tensor] = None) -> torch.Tensor:
            return select(internal(layer, queries, neutral), policy)
    else:
        external = external_scores()

        def per_layer(layer: int, queries: torch.Tensor, neutral: Optional[torch.Tensor] = None) -> torch.Tensor:
            return select(fuse(internal(layer, queries, neutral), external, config.hybrid_rule, config.hybrid_alpha), policy)
    return per_layer if config.layer_frames == "own" else _from_first_layer(per_layer)


def _from_first_layer(per_layer: Selector) -> Selector:
    """The first layer's selection for every layer (the first layer's prefill runs first)."""
    first: List[torch.Tensor] = []

    def from_first_layer(layer: int, queries: torch.Tensor, neutral: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not first:
            first.append(per_layer(layer, queries, neutral))
        return first[0]

    return from_first_layer
