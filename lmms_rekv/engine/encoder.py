"""Stream state and the attention handlers used while encoding.

``StreamState`` holds what stays on the model's device for one stream: the sink tokens
(the chat template's tokens before ``<video>``) and the sliding window, both per layer and
pre-RoPE, plus the block store every frame is offloaded to.

Positions while encoding come from the family adapter (``Backbone.encode_positions``); for
1-D RoPE (``S`` sinks, window ``W``, stream token ``t``): window keys and queries sit at
their true relative distance; a sink ``i`` is seen by token ``t`` at distance
``S + min(t, W - 1) - i`` -- its true distance until the window is full, then as if it sat
just before the oldest window slot. Absolute positions stay below ``S + W + chunk`` however
long the stream is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from ..storage.store import BlockStore, OverlayStore
from .attention import Rope, causal_attention, sink_window_attention

logger = logging.getLogger(__name__)

WINDOW_FIELDS = ("sink_k", "sink_v", "win_k", "win_v")


@dataclass
class StreamState:
    """Device-side state of one stream. Lists are indexed by layer; tensors are ``(Hkv, T, D)``."""

    store: BlockStore
    window: Optional[int]
    sink_k: List[torch.Tensor] = field(default_factory=list)  # rotated at 0..S-1
    sink_v: List[torch.Tensor] = field(default_factory=list)
    win_k: List[torch.Tensor] = field(default_factory=list)  # pre-RoPE, most recent <= W tokens
    win_v: List[torch.Tensor] = field(default_factory=list)
    stream_tokens: int = 0
    padded_block: Optional[int] = None  # a fork's incomplete last block, padded for one question

    @property
    def sinks(self) -> int:
        return self.sink_k[0].shape[1] if self.sink_k else 0

    @property
    def window_len(self) -> int:
        return self.win_k[0].shape[1] if self.win_k else 0

    def device_bytes(self) -> int:
        tensors = [*self.sink_k, *self.sink_v, *self.win_k, *self.win_v]
        return sum(t.numel() * t.element_size() for t in tensors)

    def fork(self, extra) -> "StreamState":
        """This state followed by ``extra`` (an empty store of its own): encoding into the fork
        leaves this state (store, window, counters) untouched."""
        return StreamState(store=OverlayStore(self.store, extra), window=self.window, sink_k=self.sink_k, sink_v=self.sink_v,
                           win_k=list(self.win_k), win_v=list(self.win_v), stream_tokens=self.stream_tokens)

    def export(self) -> Dict[str, torch.Tensor]:
        """CPU tensors of everything but the stored blocks: block summaries ``summaries``
        ``(layers, blocks, kv_heads, head_dim)``, per layer ``sink_k.L`` / ``sink_v.L`` /
        ``win_k.L`` / ``win_v.L`` ``(heads, tokens, head_dim)`` and, with token reduction, the
        reducer's memory (``reducer.L``)."""
        tensors = {"summaries": self.store.all_summaries().contiguous().cpu()}
        for name in WINDOW_FIELDS:
            for layer, tensor in enumerate(getattr(self, name)):
                tensors[f"{name}.{layer}"] = tensor.contiguous().cpu()
        if self.store.reducer is not None:  # token reduction's memory of the last block (temporal)
            tensors.update(self.store.reducer.state())
        return tensors

    def restore(self, tensors: Dict[str, torch.Tensor], stream_tokens: int) -> None:
        """Take back what ``export`` gave (the blocks are already in the store)."""
        self.store.load_summaries(tensors["summaries"])
        for name in WINDOW_FIELDS:
            getattr(self, name).extend(tensors[f"{name}.{layer}"] for layer in range(self.store.layers))
        self.stream_tokens = stream_tokens
        if self.store.reducer is not None:
            self.store.reducer.load_state(tensors)


class PrefixStep:
    """Handler that encodes the sink tokens (causal attention at positions 0..S-1)."""

    def __init__(self, state: StreamState) -> None:
        self.state = state

    def attend(self, layer, q, k, v, q_pre, k_pre, scaling):
        q, k, v = q[0], k[0], v[0]
        st = self.state
        st.sink_k.append(k.contiguous())
        st.sink_v.append(v.contiguous())
        empty = k[:, :0]
        st.win_k.append(empty.contiguous())
        st.win_v.append(empty.contiguous())
        return causal_attention(q, k, v, scaling).unsqueeze(0)


class ChunkStep:
    """Handler that encodes one chunk of tokens with sink + sliding-window attention and
    offloads its pre-RoPE keys and values to the block store.

    The model runs with the chunk at its window-frame positions (``Backbone.encode_positions``),
    so its post-RoPE queries/keys are already in the window frame; the window's pre-RoPE
    keys are rotated at ``window_positions`` ``(P, Wn)`` and the queries, for the sinks, at
    ``sink_positions`` ``(P, L)``."""

    def __init__(self, state: StreamState, rope: Rope, first_frame: int, block: int,
                 window_positions: torch.Tensor, sink_positions: torch.Tensor, like: torch.Tensor,
                 slots: Optional[torch.Tensor] = None, slot_count: int = 0):
        self.state, self.rope, self.first_frame, self.block = state, rope, first_frame, block
        self.slots, self.slot_count = slots, slot_count  # (L,): each chunk token's slot among the chunk's blocks
        self.cos_w, self.sin_w = rope.tables(window_positions, like)
        self.cos_s, self.sin_s = rope.tables(sink_positions, like)

    def attend(self, layer, q, k, v, q_pre, k_pre, scaling):
        st = self.state
        q, k, v = q[0], k[0], v[0]
        k_pre_h = k_pre[0].transpose(0, 1)
        win_k, win_v = st.win_k[layer], st.win_v[layer]
        keys = torch.cat([self.rope.rotate(win_k, self.cos_w, self.sin_w), k], dim=1)
        values = torch.cat([win_v, v], dim=1)
        q_sink = self.rope.rotate(q_pre[0].transpose(0, 1), self.cos_s, self.sin_s)
        out = sink_window_attention(
            q, keys, values, q_sink, st.sink_k[layer], st.sink_v[layer],
            first_query=win_k.shape[1], window=st.window, scaling=scaling, block=self.block,
        )
        all_k = torch.cat([win_k, k_pre_h], dim=1)
        if st.window is not None:
            all_k, values = all_k[:, -st.window :].contiguous(), values[:, -st.window :].contiguous()
        st.win_k[layer], st.win_v[layer] = all_k, values
        st.store.write(layer, self.first_frame, self._slotted(k_pre[0]), self._slotted(v.transpose(0, 1)))
        return out.unsqueeze(0)

    def _slotted(self, x: torch.Tensor) -> torch.Tensor:
        """``(L, Hkv, D)`` chunk tokens -> ``(blocks * block slots, Hkv, D)`` (unused slots zero)
        for families whose blocks vary in length (stored in fixed slots); else ``x``."""
        if self.slots is None:
            return x
        out = x.new_zeros((self.slot_count, *x.shape[1:]))
        return out.index_copy_(0, self.slots, x)


@torch.inference_mode()
def encode_blocks(engine, layout, pixels: torch.Tensor, state: StreamState, query_block_tokens: Optional[int]) -> None:
    """Encode whole blocks of preprocessed ``pixels`` ``(N, 3, S, S)`` into ``state`` of a stream
    of ``layout`` (``lmms_rekv.layout.StreamLayout``): one forward of the language model with sink +
    window attention (``ChunkStep``), the blocks committed to the store at the end (a failure
    leaves the store and the window as they were)."""
    bb, st, device = engine.backbone, state, engine.device
    layout = layout.with_padding(st.padded_block)
    n = pixels.shape[0] // bb.frames_per_block  # blocks
    inputs = bb.chunk_inputs(pixels, st.store.blocks, layout)
    features = inputs.embeds  # (1, L, hidden)
    first = st.store.reserve(n)
    length = features.shape[1]
    block = query_block_tokens or (2048 if device.type == "cuda" else 128)
    window_keys, chunk, seen = bb.encode_positions(st.sinks, st.window_len, length, st.stream_tokens, st.window, device, layout)
    step = ChunkStep(st, bb.rope, first, block, window_keys, seen, features, slots=inputs.slots, slot_count=n * layout.block_tokens)
    window = list(st.win_k), list(st.win_v)  # the handler replaces (never mutates) them per layer
    try:
        with bb.routed(step):
            bb.text_model(inputs_embeds=features, position_ids=bb.position_ids(chunk), use_cache=False, **inputs.lm_kwargs)
    except BaseException:  # the reserved blocks stay uncommitted: restore the window too
        st.win_k[:], st.win_v[:] = window
        raise
    st.store.commit(n)
    st.stream_tokens += length
    logger.debug("encoded %d blocks (stream: %d blocks)", n, st.store.blocks)


@torch.inference_mode()
def encode_sinks(engine, state: StreamState) -> None:
    """Encode the sink tokens (the chat template before the video) into ``state`` (empty sinks
    and window for a family without them); a failure leaves them empty."""
    bb, st = engine.backbone, state
    ids = bb.prompt.prefix_ids()
    if not ids:
        empty = torch.empty((st.store.kv_heads, 0, st.store.head_dim), dtype=engine.dtype, device=engine.device)
        for lst in (st.sink_k, st.sink_v, st.win_k, st.win_v):
            lst.extend([empty] * st.store.layers)
        return
    ids_t = torch.tensor([ids], device=engine.device)
    positions = bb.text_positions(0, len(ids), engine.device)
    try:
        with bb.routed(PrefixStep(st)):
            bb.text_model(input_ids=ids_t, position_ids=bb.position_ids(positions), use_cache=False)
    except BaseException:
        for lst in (st.sink_k, st.sink_v, st.win_k, st.win_v):
            lst.clear()
        raise
