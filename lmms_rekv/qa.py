"""Question answering over retrieved KV: the QA attention handler and the decoding loop.

Context layout (consecutive positions, as vanilla LLaVA-OV sees it when every frame is
retrieved): ``[sinks (0..S-1), retrieved frames in time order (S..C-1), image_newline,
question + rest of the chat template, answer]`` with ``C = S + K * frame_tokens``.
Retrieval happens inside each layer's attention during the prefill, from that layer's
pre-RoPE question queries (the question tokens, not the newline).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch

from .attention import Rope, causal_attention
from .encoder import StreamState

Selector = Callable[[int, torch.Tensor], torch.Tensor]


class _LayerCache:
    """Preallocated post-RoPE K/V of one layer for one question: ``(Hkv, capacity, D)``."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, extra: int) -> None:
        hkv, n, dim = keys.shape
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
    select: Selector  # (layer, question query mean (Hq, D) fp32) -> frame indices (K,)
    frames: int  # K, the same on every layer
    extra_tokens: int
    question_offset: int = 1  # the first prefill token is image_newline, not question
    question_end: Optional[int] = None  # prefill tokens after it (a scored answer) are not question
    decoding: bool = False
    selected: List[Optional[torch.Tensor]] = field(default_factory=list)
    _caches: List[Optional[_LayerCache]] = field(default_factory=list)
    _tables: Optional[tuple] = None

    def attend(self, layer, q, k, v, q_pre, k_pre, scaling):
        q, k, v = q[0], k[0], v[0]
        if self.decoding:
            cache = self._caches[layer]
            past = cache.length
            cache.append(k, v)
            keys, values = cache.view()
            return causal_attention(q, keys, values, scaling, past=past).unsqueeze(0)
        return self._prefill(layer, q, k, v, q_pre, scaling).unsqueeze(0)

    def _prefill(self, layer, q, k, v, q_pre, scaling):
        st = self.state
        if not self._caches:
            self._caches = [None] * st.store.layers
            self.selected = [None] * st.store.layers
        query_mean = q_pre[0, self.question_offset : self.question_end].float().mean(dim=0)
        index = self.select(layer, query_mean)
        if index.numel() != self.frames:
            raise RuntimeError(f"layer {layer} selected {index.numel()} frames, expected {self.frames}")
        self.selected[layer] = index
        k_ctx, v_ctx = st.store.gather(layer, index, q.device)
        if self._tables is None:
            sinks = st.sinks
            positions = torch.arange(sinks, sinks + k_ctx.shape[0], device=q.device)
            self._tables = self.rope.tables(positions, q)
        k_ctx = self.rope.rotate(k_ctx.transpose(0, 1), *self._tables)
        past_k = torch.cat([st.sink_k[layer], k_ctx], dim=1)
        past_v = torch.cat([st.sink_v[layer], v_ctx.transpose(0, 1)], dim=1)
        cache = _LayerCache(past_k, past_v, extra=k.shape[1] + self.extra_tokens)
        cache.append(k, v)
        self._caches[layer] = cache
        keys, values = cache.view()
        return causal_attention(q, keys, values, scaling, past=past_k.shape[1])
