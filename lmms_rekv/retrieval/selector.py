"""The retrieval policy of a question, as one callable: ``(layer, question queries) -> blocks``.

Built from the settings (``ReKVConfig``: ``retrieval``, ``score``, ``query_pool``,
``block_score``, ``layer_frames``, ``hybrid_*`` and the selection fields) and two score sources the session
provides -- the internal one (the layer's block summaries against the question's pre-RoPE
queries) and the external one (open_clip similarity of the question to each block), so that
the policy lives here and the engine only asks for blocks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Protocol

import torch

from .scoring import frame_scores, token_scores
from .selection import SelectionPolicy, fuse, select

#: ``(layer, queries (Hq, T, D), neutral (Hq, R, D) or None) -> block indices (time order)``:
#: ``queries`` of the question's tokens, ``neutral`` of the template's tokens after it;
#: ``.fixed``: the same blocks for every layer, known before the first layer runs (external
#: retrieval), or None
Selector = Callable[[int, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def policy_of(config) -> SelectionPolicy:
    """The block-selection policy ``config`` (``lmms_rekv.settings.RetrievalSettings``, or a
    ``ReKVConfig``: the same names) describes."""
    return SelectionPolicy(topk=config.topk_frames, adaptive=config.adaptive, mass=config.adaptive_mass,
                           temperature=config.adaptive_temperature, min_frames=config.adaptive_min_frames,
                           recent=config.recent_frames, group=config.group_frames)


class Retriever(Protocol):
    """A retrieval method (``ReKVConfig.retrieval``; register one with
    ``lmms_rekv.registry.RETRIEVERS``): builds a question's selector from the settings, the
    block-selection policy and the question's score sources."""

    def __call__(self, config, policy: SelectionPolicy, scores: "Scores") -> Selector: ...


@dataclass
class Scores:
    """A question's score sources over its ``blocks`` stored blocks: ``summaries(layer)`` ``(blocks,
    kv_heads, head_dim)`` block summaries of that layer; ``external()`` ``(blocks,)`` similarity of
    the question to each block (open_clip; external and hybrid retrieval); ``token_keys(layer)``
    ``(blocks, tokens, kv_heads, head_dim)`` stored keys (``block_score="tokens"``)."""

    config: object
    blocks: int
    summaries: Callable[[int], torch.Tensor]
    external: Optional[Callable[[], torch.Tensor]] = None
    token_keys: Optional[Callable[[int], torch.Tensor]] = None

    def internal(self, layer: int, queries: torch.Tensor, neutral: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(blocks,)`` scores of the layer's blocks against the question's pre-RoPE ``queries``
        ``(Hq, T, D)`` (``neutral``: the template's, for ``hub_correction``)."""
        config = self.config
        tokens = config.block_score == "tokens"
        rows = self.token_keys(layer).float() if tokens else self.summaries(layer)
        neutral = None if neutral is None else neutral.to(rows.device)
        scorer = token_scores if tokens else frame_scores
        return scorer(queries.to(rows.device), rows, config.score, config.query_pool, config.hub_correction, neutral)


def make_selector(config, blocks: int, summaries: Callable[[int], torch.Tensor],
                  external_scores: Optional[Callable[[], torch.Tensor]] = None,
                  token_keys: Optional[Callable[[int], torch.Tensor]] = None) -> Selector:
    """The selector of one question (``config``: the ``RetrievalSettings``): the retriever
    registered as ``config.retrieval`` given the
    score sources (``Scores``), the first layer's choice serving every layer with
    ``layer_frames="first"``."""
    from lmms_rekv.registry import RETRIEVERS

    scores = Scores(config, blocks, summaries, external_scores, token_keys)
    selector = RETRIEVERS.get(config.retrieval)(config, policy_of(config), scores)
    if getattr(selector, "fixed", None) is not None or config.layer_frames == "own":
        return selector
    return _from_first_layer(selector)


def internal(config, policy: SelectionPolicy, scores: Scores) -> Selector:
    """ReKV's retrieval: each layer scores blocks with the question's own pre-RoPE queries."""
    def per_layer(layer: int, queries: torch.Tensor, neutral: Optional[torch.Tensor] = None) -> torch.Tensor:
        return select(scores.internal(layer, queries, neutral), policy)

    return per_layer


def external(config, policy: SelectionPolicy, scores: Scores) -> Selector:
    """The blocks most similar to the question by open_clip, the same for every layer (known
    before the first layer runs: ``.fixed``, every layer's blocks fetched in one batched read)."""
    chosen = select(scores.external(), policy)

    def same_for_all(layer: int, queries: torch.Tensor, neutral: Optional[torch.Tensor] = None) -> torch.Tensor:
        return chosen

    same_for_all.fixed = chosen
    return same_for_all


def hybrid(config, policy: SelectionPolicy, scores: Scores) -> Selector:
    """Internal and external scores fused per layer (``hybrid_rule``, ``hybrid_alpha``)."""
    outside = scores.external()

    def per_layer(layer: int, queries: torch.Tensor, neutral: Optional[torch.Tensor] = None) -> torch.Tensor:
        return select(fuse(scores.internal(layer, queries, neutral), outside, config.hybrid_rule, config.hybrid_alpha), policy)

    return per_layer


def _from_first_layer(per_layer: Selector) -> Selector:
    """The first layer's selection for every layer (the first layer's prefill runs first)."""
    first: List[torch.Tensor] = []

    def from_first_layer(layer: int, queries: torch.Tensor, neutral: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not first:
            first.append(per_layer(layer, queries, neutral))
        return first[0]

    return from_first_layer
