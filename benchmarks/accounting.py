"""KV-cache arithmetic: bytes per frame and per hour of video for a model.

bytes/frame = layers * 2 (K and V) * kv_heads * head_dim * bytes/element * tokens/frame.
Measured on the module shapes of a model (a meta-device build costs no memory)."""

from __future__ import annotations

import math
from typing import Dict

import torch

GIB = 1024**3
MIB = 1024**2


def kv_bytes_from_model(model, dtype: torch.dtype = torch.float16) -> Dict[str, float]:
    """KV accounting read off a LLaVA-OV model's modules (k_proj/v_proj output sizes)."""
    layers = list(model.model.language_model.layers)
    attn = layers[0].self_attn
    head_dim = attn.head_dim
    kv_heads = attn.k_proj.out_features // head_dim
    vision = model.config.vision_config
    frame_tokens = math.ceil(vision.image_size // vision.patch_size / 2) ** 2
    item = torch.empty((), dtype=dtype).element_size()
    per_token = sum((l.self_attn.k_proj.out_features + l.self_attn.v_proj.out_features) * item for l in layers)
    per_frame = per_token * frame_tokens
    return {
        "layers": len(layers), "kv_heads": kv_heads, "head_dim": head_dim, "frame_tokens": frame_tokens,
        "bytes_per_frame": per_frame, "mib_per_frame": per_frame / MIB,
    }


def gib_per_hour(bytes_per_frame: float, fps: float = 0.5) -> float:
    return bytes_per_frame * fps * 3600 / GIB


def preset_accounting(name: str, dtype: torch.dtype = torch.float16, fps: float = 0.5) -> Dict[str, float]:
    """Accounting of the real ``name`` architecture, built on the meta device."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from .presets import real_config

    with torch.device("meta"):
        model = LlavaOnevisionForConditionalGeneration(real_config(name))
    out = kv_bytes_from_model(model, dtype)
    out["gib_per_hour"] = gib_per_hour(out["bytes_per_frame"], fps)
    return out
