"""Qwen2-VL (M-RoPE, sectioned): the family adapter.

A block is one temporal patch: 2 frames -> ``(h / 28) * (w / 28)`` tokens for a frame of
``h x w`` (fixed once per engine: every frame is resized to ``frame_size``). The chat
template renders ``<|vision_start|><|video_pad|><|vision_end|>``: the prefix (the sinks)
ends with ``<|vision_start|>``, the text after the video starts with ``<|vision_end|>``.

Positions (``(3, T)``: time, height, width; the installed transformers' rule, checked
against its ``get_rope_index`` by the tests): a text run of ``n`` tokens at counter ``c``
takes ``c..c+n-1`` on every row and moves ``c`` by ``n``; ``k`` video blocks of ``H' x W'``
tokens at ``c`` take ``t = c + block``, ``h = c + i``, ``w = c + j`` (raster order) and move
``c`` by ``max(H', W')``. A question's context ``[sinks, retrieved blocks, text]`` is that
layout re-run over the retrieved blocks in time order (block ranks as time: exact with every
block retrieved). While encoding, the window is re-based to the block of its oldest token
(time differences are kept; height/width never move).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .base import Backbone

#: spatial patch (14) x merge (2)
PIXELS_PER_TOKEN = 28


class Qwen2VLBackbone(Backbone):
    """ReKV adapter for ``Qwen2VLForConditionalGeneration``."""

    model_type = "qwen2_vl"
    frames_per_block = 2
    position_rows = 3
    model_class = "Qwen2VLForConditionalGeneration"
    default_side = 448

    def __init__(self, model, tokenizer, chat_template: str, processor, frame_size: Optional[Tuple[int, int]] = None) -> None:
        vision = model.config.vision_config
        self.processor = processor
        self.unit = vision.patch_size * vision.spatial_merge_size
        self.frame_size = self._check_size(frame_size or self._default_size())
        self.grid = (self.frame_size[0] // self.unit, self.frame_size[1] // self.unit)
        super().__init__(model, tokenizer, chat_template, processor)

    @classmethod
    def load(cls, path: str, dtype: torch.dtype, **model_kwargs):
        import transformers
        from transformers import AutoProcessor

        model = getattr(transformers, cls.model_class).from_pretrained(path, dtype=dtype, **model_kwargs)
        processor = AutoProcessor.from_pretrained(path)
        if not processor.chat_template:
            raise ValueError(f"no chat template found in {path} (chat_template.jinja or chat_template.json)")
        return model, processor.tokenizer, processor.chat_template, processor.video_processor

    # -- structure ------------------------------------------------------------------------
    @property
    def block_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def rotary_function(self):
        from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb

        return apply_rotary_pos_emb

    # -- vision -----------------------------------------------------------------------------
    def _default_size(self) -> Tuple[int, int]:
        """The largest square of side <= 448 (a multiple of 28) within the processor's pixel budget."""
        budget = getattr(self.processor, "max_pixels", None) or (self.processor.size or {}).get("longest_edge")
        side = self.default_side
        while budget and side > self.unit and side * side > budget:
            side -= self.unit
        return side, side

    def _check_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        h, w = (int(v) for v in size)
        if h < self.unit or w < self.unit or h % self.unit or w % self.unit:
            raise ValueError(f"frame_size must be multiples of {self.unit} pixels (>= {self.unit}), got {size!r}")
        return h, w

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, H, W, 3)`` -> uint8 ``(N, h, w, 3)`` at the engine's fixed frame size
        (bicubic, only when the size differs)."""
        h, w = self.frame_size
        if tuple(frames.shape[1:3]) == (h, w):
            return frames
        x = frames.permute(0, 3, 1, 2).float()
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
        return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    def vision_inputs(self, frames: torch.Tensor) -> dict:
        """The video processor's ``pixel_values_videos`` / ``video_grid_thw`` for uint8
        ``(2k, h, w, 3)`` frames taken as one video (every frame kept)."""
        out = self.processor(videos=[frames.cpu().numpy()], do_sample_frames=False, return_tensors="pt")
        return {"pixel_values_videos": out["pixel_values_videos"], "video_grid_thw": out["video_grid_thw"]}

    def block_features(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``(2k, h, w, 3)`` -> ``(1, k * block_tokens, hidden)`` (blocks are encoded
        independently by the vision tower: any split of the stream gives the same rows)."""
        if frames.shape[0] % self.frames_per_block:
            raise ValueError(f"a chunk needs a multiple of {self.frames_per_block} frames, got {frames.shape[0]}")
        inputs = self.vision_inputs(frames)
        pixels = inputs["pixel_values_videos"].to(self.model.device, self.model.dtype)
        grid = inputs["video_grid_thw"].to(self.model.device)
        out = self.model.model.get_video_features(pixel_values_videos=pixels, video_grid_thw=grid)
        return torch.cat(list(out.pooler_output), dim=0)[None].to(self.model.dtype)

    # -- prompt -----------------------------------------------------------------------------
    @property
    def video_token(self) -> str:
        return self.tokenizer.convert_ids_to_tokens(self.model.config.video_token_id)

    def split_prompt(self, question: str) -> Tuple[str, str]:
        from lmms_rekv.io.prompt import split_prompt

        return split_prompt(self.tokenizer, self.chat_template, question, self.video_token)

    def vanilla_input_ids(self, question: str, frames: int) -> torch.Tensor:
        """``<|video_pad|>`` expanded to ``ceil(frames / 2) * block_tokens`` pads."""
        blocks = -(-frames // self.frames_per_block)
        video = [self.model.config.video_token_id] * (blocks * self.block_tokens)
        return torch.tensor([self.prefix_ids() + video + self.suffix_ids(question)], device=self.model.device)

    # -- positions -------------------------------------------------------------------------
    def _block_rows(self, first_block: torch.Tensor, origin: int, count: int, start_token: int) -> torch.Tensor:
        """``(3, count)`` positions of video tokens ``start_token..`` whose block time is
        ``origin + block - first_block`` (``first_block`` broadcast per token)."""
        device = first_block.device
        token = torch.arange(start_token, start_token + count, device=device)
        block, inside = token // self.block_tokens, token % self.block_tokens
        t = origin + block - first_block
        h = origin + inside // self.grid[1]
        w = origin + inside % self.grid[1]
        return torch.stack([t, h, w])

    def encode_positions(self, sinks: int, window_len: int, chunk: int, stream_tokens: int, window: Optional[int],
                         device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Window and chunk re-based to the block of the oldest window token; each query as
        seen from the sinks re-based to the block of the oldest token of its own window."""
        oldest = stream_tokens - window_len
        base = torch.tensor(oldest // self.block_tokens, device=device)
        window_keys = self._block_rows(base, sinks, window_len, oldest)
        chunk_pos = self._block_rows(base, sinks, chunk, stream_tokens)
        token = torch.arange(stream_tokens, stream_tokens + chunk, device=device)
        own = torch.zeros_like(token) if window is None else (token - window + 1).clamp(min=0) // self.block_tokens
        seen = self._block_rows(own, sinks, chunk, stream_tokens)
        return window_keys, chunk_pos, seen

    def context_positions(self, sinks: int, blocks: int, text: int, device: torch.device) -> torch.Tensor:
        """``[sinks, blocks, text]`` laid out by the family's rule (see module doc)."""
        prefix = self.text_positions(0, sinks, device)
        video = self._block_rows(torch.tensor(0, device=device), sinks, blocks * self.block_tokens, 0)
        after = self.text_positions(sinks + max(self.grid), text, device)
        return torch.cat([prefix, video, after], dim=1)
