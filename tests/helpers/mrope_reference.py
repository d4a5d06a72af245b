"""Shared by the M-RoPE families' tests (``test_mrope.py``, ``test_qwen3_vl.py``): random videos,
the vanilla model's answer through its own processor, and attention by brute force with 3-D
offsets."""

from __future__ import annotations

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
