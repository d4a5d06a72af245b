"""Question answering over retrieved KV: the QA attention handler.

Context layout of layer ``l``: ``[sinks, the K_l blocks layer l retrieved, in time order,
text after the video (question + rest of the chat template), answer]``, positioned by the
family adapter (``Backbone.context_positions``; for 1-D RoPE consecutive positions, and
with every frame retrieved exactly what the vanilla model sees). Retrieval happens inside
each layer's attention during the prefill, from that layer's pre-RoPE question queries (the
question tokens only). Because ``K_l`` may differ between layers (adaptive policies), the
handler rotates the pre-RoPE queries and keys itself at each layer's own positions; the
positions the model was called with are not used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .attention import Rope, causal_attention
from .encoder import StreamState

Selector = Callable[[int, torch.Tensor], torch.Tensor]
#: (sinks, retrieved block indices (K,), text tokens, device, kept slots (K, S) or None) -> (P, sinks + tokens + text)
ContextPositions = Callable[[int, torch.Tensor, int, torch.device, Optional[torch.Tensor]], torch.Tensor]


class _LayerCache:
    """Preallocated post-RoPE K/V of one layer for one question: ``(Hkv, capacity, D)``."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, extra: int, tables: Tuple[torch.Tensor, torch.Tensor]) -> None:
        hkv, n, dim = keys.shape
        self.cos, self.sin = tables  # (positions, R): this layer's context positions
        self.keys = keys.new_empty((hkv, n + extra, dim))
        self.values = values.new_empty((hkv, n + extra, dim))
        self.keys[:, :n], self.values[:, :n] = keys, values
        self.length = n

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        n = keys.shape[1]
        self.keys[:, self.length : self.length + n] = keys
        self.values[:, self.length : self.length + n] = values
        self.length += n

    def view(self):
        return self.keys[:, : self.length], self.values[:, : self.length]


@dataclass
class QAStep:
    """Handler for one question: prefill retrieves per layer and builds the context;
    decode steps attend over it. Never writes to the stream state or the store."""

    state: StreamState
    rope: Rope
    positions: ContextPositions
    select: Selector  # (layer, question queries (Hq, T, D) pre-RoPE fp32) -> sorted frame indices
    extra_tokens: int  # answer tokens to leave room for
    by_index: bool = False  # positions depend on which blocks were retrieved, not only how many
    question_offset: int = 1  # prefill tokens before the question (the family may place some, e.g. a newline)
    question_end: Optional[int] = None  # prefill tokens after it (a scored answer) are not question
    template_end: Optional[int] = None  # the template's tokens after the question end here (hub_correction="template")
    fixed: Optional[torch.Tensor] = None  # frames shared by every layer (external): prefetched at once
    rows: Optional[Callable[..., Optional[torch.Tensor]]] = None  # (blocks, device, kept) -> slots holding tokens (Backbone.block_rows)
    decoding: bool = False
    selected: List[Optional[torch.Tensor]] = field(default_factory=list)
    _caches: List[Optional[_LayerCache]] = field(default_factory=list)
    _tables: Dict[tuple, tuple] = field(default_factory=dict)
    _prefetched: Optional[tuple] = None

    def _layer_tables(self, blocks: torch.Tensor, text: int, like: torch.Tensor, kept: Optional[torch.Tensor]) -> tuple:
        """cos, sin of a context with the retrieved ``blocks`` (``kept``: the ``(K, S)`` slots their
        stored tokens stand for, when the layer's own) and ``text`` tokens after them (shared by
        layers that retrieved the same blocks)."""
        if kept is not None:  # each layer kept its own tokens, positioned where they stood
            return self.rope.tables(self.positions(self.state.sinks, blocks, text, like.device, kept), like)
        key = (tuple(blocks.tolist()) if self.by_index else len(blocks), text)  # tolist syncs: only when needed
        if key not in self._tables:
            self._tables[key] = self.rope.tables(self.positions(self.state.sinks, blocks, text, like.device, kept), like)
        return self._tables[key]

    def _rotate(self, x: torch.Tensor, cache: _LayerCache, start: int) -> torch.Tensor:
        """RoPE of ``(H, T, D)`` pre-RoPE ``x`` at rows ``start..start+T-1`` of the layer's
        context positions."""
        end = start + x.shape[1]
        if end > cache.cos.shape[0]:
            raise RuntimeError(f"position {end} beyond the {cache.cos.shape[0]} positions reserved for this question")
        return self.rope.rotate(x, cache.cos[start:end], cache.sin[start:end])

    def attend(self, layer, q, k, v, q_pre, k_pre, scaling):
        q_pre, k_pre, v = q_pre[0].transpose(0, 1), k_pre[0].transpose(0, 1), v[0]
        if self.decoding:
            cache = self._caches[layer]
            past = cache.length
            cache.append(self._rotate(k_pre, cache, past), v)
            keys, values = cache.view()
            return causal_attention(self._rotate(q_pre, cache, past), keys, values, scaling, past=past).unsqueeze(0)
        return self._prefill(layer, q_pre, k_pre, v, scaling).unsqueeze(0)

    def _prefill(self, layer, q_pre, k_pre, v, scaling):
        st = self.state
        if not self._caches:
            self._caches = [None] * st.store.layers
            self.selected = [None] * st.store.layers
        if self.fixed is not None:
            index = self.fixed
            if self._prefetched is None:
                self._prefetched = st.store.read_blocks(index, q_pre.device)
            k_ctx, v_ctx, kept = (None if x is None else x[layer] for x in self._prefetched)
        else:
            question = q_pre[:, self.question_offset : self.question_end].float()
            if self.template_end is None:  # a two-argument selector stays valid
                index = self.select(layer, question)
            else:
                index = self.select(layer, question, q_pre[:, self.question_end : self.template_end].float())
            k_ctx, v_ctx, kept = st.store.read_blocks(index, q_pre.device, layer)
        self.selected[layer] = index
        keep = None if self.rows is None else self.rows(index, q_pre.device, kept)
        if keep is not None:  # blocks stored in fixed slots: the tokens only
            k_ctx, v_ctx = k_ctx.index_select(0, keep), v_ctx.index_select(0, keep)
        text = k_pre.shape[1] + self.extra_tokens
        tables = self._layer_tables(index, text, k_pre, kept)
        k_ctx = k_ctx.transpose(0, 1)
        cache = _LayerCache(st.sink_k[layer], st.sink_v[layer], extra=k_ctx.shape[1] + text, tables=tables)
        cache.append(self._rotate(k_ctx, cache, st.sinks), v_ctx.transpose(0, 1))
        past = cache.length
        cache.append(self._rotate(k_pre, cache, past), v)
        self._caches[layer] = cache
        keys, values = cache.view()
        return causal_attention(self._rotate(q_pre, cache, past), keys, values, scaling, past=past)
