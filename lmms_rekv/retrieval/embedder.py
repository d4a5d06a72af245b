"""External retrieval embedder: an open_clip model (SigLIP-SO400M-14-384 by default).

``ClipEmbedder.embed_frames`` maps uint8 frames ``(N, H, W, 3)`` to L2-normalised fp32
embeddings ``(N, E)`` in batches on the model's device; ``embed_text`` maps a question to
``(E,)``. Any open_clip model name works, a path to an open_clip model-config JSON (its
file name is the model name), or ``"miniature"`` (the embedder trained with the miniature);
``pretrained`` is an open_clip tag, a local checkpoint file, or None for random weights
(tests, benchmarks).
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Protocol

import torch
import torch.nn.functional as F

from lmms_rekv.io.preprocess import as_frames

logger = logging.getLogger(__name__)

MISSING = "external/hybrid retrieval needs open_clip: pip install 'lmms-rekv[clip]' (open_clip_torch)"


class Embedder(Protocol):
    def embed_frames(self, frames) -> torch.Tensor: ...

    def embed_text(self, text: str) -> torch.Tensor: ...


def import_open_clip():
    try:
        import open_clip
    except ImportError as exc:
        raise ImportError(MISSING) from exc
    return open_clip


class ClipEmbedder:
    """Frames and questions in one open_clip embedding space."""

    def __init__(self, model: str, pretrained: Optional[str], device: torch.device, batch_size: int = 32) -> None:
        open_clip = import_open_clip()
        if model == "miniature":  # the embedder trained on the miniature's world, shipped with it
            from ..miniature import embedder_files

            model, pretrained = embedder_files()
        name = model
        if model.endswith(".json") and os.path.isfile(model):
            open_clip.add_model_config(model)
            name = os.path.splitext(os.path.basename(model))[0]
        self._setup(open_clip.create_model(name, pretrained=pretrained, device=device).eval(), open_clip.get_tokenizer(name), device, batch_size)
        logger.info("loaded open_clip %s (pretrained=%s)", name, pretrained)

    @classmethod
    def from_model(cls, model, tokenizer, device: torch.device, batch_size: int = 32) -> "ClipEmbedder":
        """Wrap an open_clip model that is already built (e.g. while training it)."""
        self = cls.__new__(cls)
        self._setup(model, tokenizer, device, batch_size)
        return self

    def _setup(self, model, tokenizer, device: torch.device, batch_size: int) -> None:
        self.model, self.tokenizer = model, tokenizer
        cfg = getattr(self.model.visual, "preprocess_cfg", {}) or {}
        size = cfg.get("size", getattr(self.model.visual, "image_size", 224))
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), device=device).view(1, 3, 1, 1)
        self.device, self.batch_size = device, batch_size

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 -> ``(N, 3, S, S)`` normalised model input (squash-resized, bicubic)."""
        x = frames.to(self.device).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=self.size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 255)
        return (x / 255.0 - self.mean) / self.std

    @torch.inference_mode()
    def embed_frames(self, frames) -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 -> ``(N, E)`` normalised fp32 (squash-resized, bicubic)."""
        frames = as_frames(frames)
        out = []
        for lo in range(0, frames.shape[0], self.batch_size):
            x = self.preprocess(frames[lo : lo + self.batch_size])
            out.append(F.normalize(self.model.encode_image(x).float(), dim=-1))
        return torch.cat(out)

    @torch.inference_mode()
    def embed_text(self, text: str) -> torch.Tensor:
        tokens = self.tokenizer([text]).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)[0]


def block_embeddings(rows: torch.Tensor, per_block: int, blocks: int) -> torch.Tensor:
    """``(blocks, E)`` embeddings of blocks of ``per_block`` frames from the frames' ``rows``
    ``(frames, E)``: a block's frames averaged and re-normalised, an incomplete last block
    padded by repeating its last frame."""
    if per_block == 1:
        return rows[:blocks]
    need = blocks * per_block
    if rows.shape[0] < need:
        rows = torch.cat([rows, rows[-1:].expand(need - rows.shape[0], -1)])
    pooled = rows[:need].view(blocks, per_block, -1).mean(dim=1)
    return pooled / pooled.norm(dim=-1, keepdim=True)
