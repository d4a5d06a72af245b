"""Slow dense references for the tests: one forward over the whole sequence where every
(query, key) pair gets its own mask bit and RoPE distance, computed from the documented
semantics rather than from the engine's chunked code."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, List, Optional, Tuple

import torch
from transformers.models.qwen2.modeling_qwen2 import rotate_half


def distances(sinks: int, stream: int, qa: int, window: Optional[int]):
    """(allowed, distance) ``(N, N)`` for ``[sinks, stream tokens, qa tokens]``.

    sinks: causal among themselves; stream token t: every sink at distance
    ``S + min(t, W-1) - i`` and stream tokens j with ``t - W < j <= t`` at distance ``t - j``;
    qa tokens: every earlier token at its true distance (all frames in context)."""
    n = sinks + stream + qa
    idx = torch.arange(n)
    allowed = idx[None, :] <= idx[:, None]
    dist = (idx[:, None] - idx[None, :]).clamp(min=0)
    if window is not None:
        t = torch.arange(stream)
        rows = slice(sinks, sinks + stream)
        j = t[None, :]
        allowed[rows, sinks : sinks + stream] &= j > t[:, None] - window
        dist[rows, :sinks] = sinks + t.clamp(max=window - 1)[:, None] - torch.arange(sinks)[None, :]
    return allowed, dist


class DenseHandler:
    """Attention by brute force: softmax over allowed keys, score = rot(q, d) . k (pre-RoPE)."""

    def __init__(self, rope, allowed: torch.Tensor, dist: torch.Tensor):
        self.rope, self.allowed, self.dist = rope, allowed, dist

    def attend(self, layer, q, k, v, q_pre, k_pre, scaling):
        qp = q_pre[0].transpose(0, 1).float()  # (Hq, N, D)
        kp = k_pre[0].transpose(0, 1).float()
        hq, hkv = qp.shape[0], kp.shape[0]
        kp = kp.repeat_interleave(hq // hkv, dim=0)
        vv = v[0].float().repeat_interleave(hq // hkv, dim=0)
        n = qp.shape[1]
        cos, sin = self.rope.rotary(qp, torch.arange(int(self.dist.max()) + 1)[None])
        cos, sin = cos[0][self.dist[:n, :n]], sin[0][self.dist[:n, :n]]  # (N, N, D)
        q_rot = qp[:, :, None, :] * cos + rotate_half(qp)[:, :, None, :] * sin  # (H, N, N, D)
        logits = (q_rot * kp[:, None, :, :]).sum(-1) * scaling
        logits = logits.masked_fill(~self.allowed[:n, :n], float("-inf"))
        out = torch.softmax(logits, dim=-1) @ vv
        return out.to(v.dtype)[None]


def dense_forward(engine, frames, window, suffix_ids: Optional[List[int]] = None):
    """Last hidden states ``(N, hidden)`` and the final-position logits of the dense reference
    over ``[prefix, frames, (newline, suffix_ids)]``."""
    prefix = engine.backbone.prompt.prefix_ids()
    pixels = engine.processor(torch.as_tensor(frames))
    parts = [engine.backbone.embed(prefix), engine.backbone.block_features(pixels)]
    stream = parts[1].shape[1]
    qa = 0
    if suffix_ids is not None:
        parts += [engine.backbone.newline_embedding(), engine.backbone.embed(suffix_ids)]
        qa = 1 + len(suffix_ids)
    embeds = torch.cat(parts, dim=1)
    allowed, dist = distances(len(prefix), stream, qa, window)
    handler = DenseHandler(engine.backbone.rope, allowed, dist)
    with torch.inference_mode(), engine.patch.routed(handler):
        hidden = engine.language_model(inputs_embeds=embeds, use_cache=False).last_hidden_state
        logits = engine.model.lm_head(hidden[:, -1]).float()[0]
    return hidden[0], logits


def dense_generate(engine, frames, window, question: str, max_new_tokens: int):
    """Greedy tokens and per-step logits of the dense reference (every frame in context)."""
    suffix = engine.prompt_suffix_ids(question)
    tokens, all_logits = [], []
    for _ in range(max_new_tokens):
        _, logits = dense_forward(engine, frames, window, suffix + tokens)
        all_logits.append(logits)
        tokens.append(int(logits.argmax()))
    return tokens, all_logits


def answer_capturing_queries(engine, session, question: str, **kwargs):
    """``session.answer`` plus each layer's pre-RoPE query projection of the QA prefill
    ``{layer: (tokens, Hq * D)}``, captured by hooks of the test's own."""
    seen = {}

    def hook_for(idx):
        def hook(module, inputs, output):
            seen.setdefault(idx, output[0].detach().clone())  # returns None: output unchanged

        return hook

    hooks = [l.self_attn.q_proj.register_forward_hook(hook_for(i)) for i, l in enumerate(engine.language_model.layers)]
    try:
        answer = session.answer(question, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return answer, seen


@contextmanager
def capture_kv(engine):
    """``with capture_kv(engine) as captured:`` -- every ``k_proj`` / ``v_proj`` output of every
    forward inside the block, ``captured[(layer, "k_proj" | "v_proj")]``: a list of ``(tokens,
    Hkv * D)`` tensors in call order (hooks of the test's own, removed on exit)."""
    captured: Dict[Tuple[int, str], List[torch.Tensor]] = {}
    hooks = []
    for idx, layer in enumerate(engine.language_model.layers):
        for name in ("k_proj", "v_proj"):
            def hook(module, inputs, output, key=(idx, name)):
                captured.setdefault(key, []).append(output[0].detach().clone())
            hooks.append(getattr(layer.self_attn, name).register_forward_hook(hook))
    try:
        yield captured
    finally:
        for h in hooks:
            h.remove()


def stream_with_kv(engine, video, step: int = 5):
    """Stream ``video`` into a new session in calls of ``step`` frames and flush; returns
    ``(session, {layer: (keys, values)})`` -- the pre-RoPE keys and values the model produced
    for every committed block, ``(blocks, tokens per block as encoded, Hkv, D)`` each (the
    first captured forward is the prefix, the sinks)."""
    with capture_kv(engine) as captured:
        session = engine.new_session()
        for lo in range(0, len(video), step):
            session.add_frames(video[lo: lo + step])
        session.flush()
    store = session.state.store
    shape = (-1, store.input_tokens, store.kv_heads, store.head_dim)
    return session, {layer: tuple(torch.cat(captured[(layer, n)][1:]).view(shape) for n in ("k_proj", "v_proj"))
                     for layer in range(store.layers)}
