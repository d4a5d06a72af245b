"""Shared by the M-RoPE families' tests (``test_mrope.py``, ``test_qwen3_vl.py``, ``families/``):
random videos, the vanilla model's answer through its own processor, attention by brute force
with 3-D offsets, and what the family contract knows of each family (``SPECS``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple

import numpy as np
import torch

QUESTION = "what is the color?"


def video_frames(n: int, size=(56, 56), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


def vanilla_answer(engine, video: np.ndarray, question: str, new_tokens: int, fps: float = 3.0):
    """Greedy tokens and per-step logits of the vanilla model run by its own processor on a
    video sampled at ``fps``."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(engine.source)
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    n = len(video)
    metadata = [{"fps": fps, "frames_indices": list(range(n)), "total_num_frames": n}]
    inputs = processor(text=[text], videos=[video], video_metadata=metadata, return_tensors="pt", do_sample_frames=False)
    with torch.inference_mode():
        out = engine.model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, output_logits=True,
                                    return_dict_in_generate=True)
    return out.sequences[0, inputs["input_ids"].shape[1]:].tolist(), [l[0].float() for l in out.logits], inputs


class Dense3D:
    """Attention by brute force over ``[sinks, stream]``: softmax over allowed keys, score =
    rot(q, offset) . k with pre-RoPE q/k and a (t, h, w) offset per (query, key) pair."""

    def __init__(self, rotary, allowed: torch.Tensor, offsets: torch.Tensor):
        self.rotary, self.allowed, self.offsets = rotary, allowed, offsets  # (N, N), (3, N, N)

    def attend(self, layer, q, k, v, q_pre, k_pre, scaling):
        from transformers.models.qwen2_vl.modeling_qwen2_vl import rotate_half

        qp, kp = q_pre[0].transpose(0, 1).float(), k_pre[0].transpose(0, 1).float()
        hq, n = qp.shape[0], qp.shape[1]
        kp = kp.repeat_interleave(hq // kp.shape[0], dim=0)
        vv = v[0].float().repeat_interleave(hq // v.shape[1], dim=0)
        cos, sin = self.rotary(qp, self.offsets[:, :n, :n].reshape(3, 1, -1))  # h/w offsets may be negative
        cos, sin = cos[0].view(n, n, -1), sin[0].view(n, n, -1)
        q_rot = qp[:, :, None, :] * cos + rotate_half(qp)[:, :, None, :] * sin
        logits = (q_rot * kp[:, None, :, :]).sum(-1) * scaling
        logits = logits.masked_fill(~self.allowed[:n, :n], float("-inf"))
        return (torch.softmax(logits, dim=-1) @ vv).to(v.dtype)[None]


@dataclass(frozen=True)
class Spec:
    """What the family contract tests (``tests/families``) need to know of one M-RoPE family."""

    fps: float  # the stream's sampling rate (Qwen2.5-VL positions and Qwen3-VL timestamps depend on it)
    size: Tuple[int, int]  # frames' height x width
    exact: frozenset  # position strategies that reproduce vanilla with every block retrieved (README table)
    strategies: Tuple[str, ...]  # the strategies the family accepts
    config: dict = field(default_factory=dict)
    other_size: Tuple[int, int] = (56, 84)  # a non-square video the processor keeps as it is (sized per stream)


SPECS = {
    # Qwen2.5-VL: 2 * 2 / 3 s per block -> time steps of 1.33 (floored): 0, 1, 2, 4, 5, 6, 8, ...
    "qwen2_vl": Spec(3.0, (56, 56), frozenset({"layout", "original", "consecutive_t"}), ("layout", "original", "consecutive_t", "1d")),
    "qwen2_5_vl": Spec(3.0, (56, 56), frozenset({"layout", "original"}), ("layout", "original", "consecutive_t", "1d"),
                       other_size=(84, 56)),
    # block g at (4g + 1) s: the timestamp text grows from "<1.0 seconds>" to "<13.0 seconds>" by block 3
    "qwen3_vl": Spec(0.5, (64, 64), frozenset({"layout", "original"}), ("layout", "original", "1d"), {"frame_size": (64, 64)},
                     other_size=(64, 96)),
}
