"""Where the lmms-eval model keeps an encoded video: ``cache_key`` names a ``cache_dir`` entry
by what determines its content -- the model, the settings that change the stored KV, the
video's bytes and the sampling (fps, max_frames, start, another frame source's settings)."""

from __future__ import annotations

import hashlib
import json
from typing import Optional


def video_digest(path: str, block: int = 1 << 22) -> str:
    """BLAKE2b of a file's bytes."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(engine, video: str, fps: float, max_frames: Optional[int], start: float = 0.0, sampling: Optional[dict] = None) -> str:
    """Key of an encoded video: model, KV-relevant settings, video content, sampling
    (``sampling``: another frame source's settings, e.g. qwen-vl-utils')."""
    cfg = engine.config
    relevant = {
        "model": engine.source or "", "dtype": str(engine.dtype), "frame_tokens": engine.block_tokens,
        "window_tokens": cfg.window_tokens, "chunk_frames": cfg.chunk_frames, "kv_quant": cfg.kv_quant,
        "clip": [cfg.clip_model, cfg.clip_pretrained] if cfg.uses_embeddings else None,
        "video": video_digest(video), "fps": fps, "max_frames": max_frames, "start": start, "format": 1,
        **({"sampling": sampling} if sampling else {}),
        **({"system": engine.system_prompt} if engine.system_prompt else {}),  # it is in the sinks
        **({"template": engine.chat_template_kwargs} if engine.chat_template_kwargs else {}),
        **({"token_reduction": [cfg.token_reduction, cfg.token_keep]} if cfg.token_reduction else {}),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:32]
