"""Qwen2-VL (M-RoPE, sectioned): the family adapter.

A block is one temporal patch (``temporal_patch_size`` frames: 2 in the released
checkpoints): 2 frames -> ``(h / 28) * (w / 28)`` tokens for a frame of
``h x w``. The frame size is fixed once per stream: by default what the family's processor
gives the stream's first frame (aspect kept; ``fit``: the stream's ``StreamLayout``), resized by
the processor's own operation so that the pixels are the vanilla model's; an explicit
``frame_size`` is used for every stream. The chat
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

from typing import Any, Dict, Optional, Tuple

import torch

from lmms_rekv.layout import StreamLayout, checked_timing

from .base import Backbone

#: spatial patch (14) x merge (2)
PIXELS_PER_TOKEN = 28


class QwenVideo:
    """The family's video processor as ReKV uses it: its pixel bounds, its own resize, and its
    ``pixel_values_videos`` / ``video_grid_thw`` for frames already at the stream's size."""

    def __init__(self, processor, processor_kwargs: dict) -> None:
        self.processor, self.processor_kwargs = processor, processor_kwargs

    def bounds(self) -> Tuple[int, int]:
        """``(min_pixels, max_pixels)`` of the video processor (per frame; Qwen3-VL: per clip)."""
        size = self.processor.size or {}  # what its resize reads (``min_pixels``/``max_pixels`` attributes can be stale)
        low = size.get("shortest_edge") or getattr(self.processor, "min_pixels", None)
        high = size.get("longest_edge") or getattr(self.processor, "max_pixels", None)
        return int(low), int(high)

    def resize(self, frames: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """The video processor's resize operation (its resampling, antialiasing and uint8
        rounding) of uint8 ``(N, H, W, 3)`` frames to ``size``."""
        from transformers.image_utils import SizeDict
        from transformers.video_processing_utils import BaseVideoProcessor

        x = frames.permute(0, 3, 1, 2)
        out = super(BaseVideoProcessor, self.processor).resize(image=x, size=SizeDict(height=size[0], width=size[1]),
                                                                resample=self.processor.resample)
        return out.permute(0, 2, 3, 1).contiguous()

    def inputs(self, frames: torch.Tensor, resize: bool = False) -> dict:
        """``pixel_values_videos`` / ``video_grid_thw`` for uint8 ``(2k, h, w, 3)`` frames taken as
        one video (every frame kept). The frames are already at the stream's size, so the
        processor does not resize them again unless ``resize`` (its ``smart_resize`` need not
        return a size it produced)."""
        options = {**self.processor_kwargs, "do_resize": resize}
        out = self.processor(videos=[frames.cpu().numpy()], do_sample_frames=False, return_tensors="pt", **options)
        return {"pixel_values_videos": out["pixel_values_videos"], "video_grid_thw": out["video_grid_thw"]}


def load_checkpoint(model_class: str, path: str, dtype: torch.dtype, processor_kwargs: Optional[dict] = None, **model_kwargs):
    """Model, tokenizer, chat template and video processor of a Qwen checkpoint folder;
    ``processor_kwargs`` go to ``AutoProcessor.from_pretrained`` (e.g. the pixel bounds
    ``min_pixels``/``max_pixels``, as lmms-eval's Qwen models load it)."""
    import transformers
    from transformers import AutoProcessor

    model = getattr(transformers, model_class).from_pretrained(path, dtype=dtype, **model_kwargs)
    processor = AutoProcessor.from_pretrained(path, **(processor_kwargs or {}))
    if not processor.chat_template:
        raise ValueError(f"no chat template found in {path} (chat_template.jinja or chat_template.json)")
    return model, processor.tokenizer, processor.chat_template, processor.video_processor


class GridRows:
    """M-RoPE positions of video tokens on a ``grid`` ``(H', W')`` of blocks of ``H' x W'``
    tokens, time from the family's ``block_time(blocks, fps)``."""

    def __init__(self, grid: Tuple[int, int], block_time) -> None:
        self.grid, self.block_tokens, self.block_time = grid, grid[0] * grid[1], block_time

    def __call__(self, time_base: torch.Tensor, origin: int, count: int, start_token: int, fps: Optional[float],
                 rank: Optional[torch.Tensor] = None, index_as_time: bool = False) -> torch.Tensor:
        """``(3, count)`` positions of the video tokens ``start_token..`` (the ``b``-th block
        stands for stream block ``rank[b]`` if given): ``t = origin + time(block) -
        time_base`` (``index_as_time``: the block index itself), ``h = origin + row``,
        ``w = origin + column``."""
        token = torch.arange(start_token, start_token + count, device=time_base.device)
        block, inside = token // self.block_tokens, token % self.block_tokens
        if rank is not None:
            block = rank[block]
        t = origin + (block if index_as_time else self.block_time(block, fps)) - time_base
        return torch.stack([t, origin + inside // self.grid[1], origin + inside % self.grid[1]])


class Qwen2VLBackbone(Backbone):
    """ReKV adapter for ``Qwen2VLForConditionalGeneration``."""

    model_type = "qwen2_vl"
    frames_per_block = 2
    position_rows = 3
    strategies = ("layout", "original", "consecutive_t", "1d")
    prompt_options = ("system_prompt", "template_kwargs")
    model_class = "Qwen2VLForConditionalGeneration"
    default_side = 448
    needs_fps: Optional[str] = None  # why a stream must give its sampling rate (None: it need not)
    positions_by_slot = True  # token reduction: a kept token keeps its own (t, h, w)
    processor_kwargs: dict = {}  # extra video-processor arguments of the family

    def __init__(self, model, tokenizer, chat_template: str, processor, frame_size: Optional[Tuple[int, int]] = None,
                 system_prompt: Optional[str] = None, template_kwargs: Optional[Dict[str, Any]] = None) -> None:
        vision = model.config.vision_config
        self.processor, self.video = processor, QwenVideo(processor, self.processor_kwargs)
        self.frames_per_block = vision.temporal_patch_size  # 2 in every released checkpoint
        self.unit = vision.patch_size * vision.spatial_merge_size
        self.system_prompt = system_prompt  # a system message before the user turn (None: the template's default)
        self.template_kwargs: Dict[str, Any] = dict(template_kwargs or {})  # the chat template's own variables
        self.sizes_per_stream = frame_size is None  # else every stream uses the given size
        self.frame_size = self._check_size(frame_size or self._default_size())
        self._check_budget(vision.spatial_merge_size)
        super().__init__(model, tokenizer, chat_template, processor)

    @classmethod
    def load(cls, path: str, dtype: torch.dtype, processor_kwargs: Optional[dict] = None, **model_kwargs):
        """``processor_kwargs``: passed to ``AutoProcessor.from_pretrained`` (see ``load_checkpoint``)."""
        return load_checkpoint(cls.model_class, path, dtype, processor_kwargs, **model_kwargs)

    # -- structure ------------------------------------------------------------------------
    def rotary_function(self):
        from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb

        return apply_rotary_pos_emb

    # -- a stream's layout ------------------------------------------------------------------
    def layout(self, frame_size: Optional[Tuple[int, int]] = None, fps: Optional[float] = None,
               frame_times=None) -> StreamLayout:
        """A stream at ``frame_size`` (resized by the processor's own operation when the family
        chooses sizes per stream, else bicubic), or at the family's size until ``fit`` reads the
        stream's own from its first frame."""
        fps, times = checked_timing(fps, frame_times)
        if frame_size is None:
            return self.sized_layout(self.frame_size, False, self.sizes_per_stream, fps, times)
        return self.sized_layout(self._check_size(frame_size), self.sizes_per_stream, False, fps, times)

    def fit(self, layout: StreamLayout, height: int, width: int, frames: Optional[int] = None) -> StreamLayout:
        """The layout at the size the processor gives this stream (``stream_size``) when the
        size is read from the frames; else ``layout``."""
        if not layout.from_frames:
            return layout
        return self.sized_layout(self.stream_size(height, width, frames), True, False, layout.fps, layout.frame_times)

    def sized_layout(self, size: Tuple[int, int], processor_resize: bool, from_frames: bool, fps: Optional[float],
                     frame_times: Optional[Tuple[float, ...]]) -> StreamLayout:
        """The layout of frames of ``size`` (``H' x W'`` tokens per block) and its position tables."""
        grid = (size[0] // self.unit, size[1] // self.unit)
        return StreamLayout(block_tokens=grid[0] * grid[1], frame_size=tuple(size), grid=grid,
                            processor_resize=processor_resize, from_frames=from_frames, fps=fps, frame_times=frame_times,
                            tables=GridRows(grid, self.block_time))

    def check_stream(self, layout: StreamLayout, strategy: str) -> None:
        super().check_stream(layout, strategy)
        if layout.fps is None and self.needs_fps:
            raise ValueError(f"{self.needs_fps}: give the stream's sampling rate, new_session(fps=...)")

    # -- vision -----------------------------------------------------------------------------
    def _default_size(self) -> Tuple[int, int]:
        """The largest square of side <= 448 (a multiple of 28) within the processor's pixel budget."""
        budget = getattr(self.processor, "max_pixels", None) or (self.processor.size or {}).get("longest_edge")
        side = self.default_side
        while budget and side > self.unit and side * side > budget:
            side -= self.unit
        return side, side

    def stream_size(self, height: int, width: int, frames: Optional[int] = None) -> Tuple[int, int]:
        """The size the processor resizes a ``height x width`` video to: its own
        ``smart_resize`` (multiples of 28, pixels within the processor's bounds, aspect kept;
        per frame, so ``frames`` does not matter)."""
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize

        if getattr(self.processor, "do_resize", True) is False:  # a processor that keeps frames as they are
            return self._check_size((height, width))
        low, high = self.video.bounds()
        return tuple(smart_resize(height, width, factor=self.unit, min_pixels=low, max_pixels=high))

    def _check_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        h, w = (int(v) for v in size)
        if h < self.unit or w < self.unit or h % self.unit or w % self.unit:
            raise ValueError(f"frame_size must be multiples of {self.unit} pixels (>= {self.unit}), got {size!r}")
        return h, w

    def _check_budget(self, merge: int) -> None:
        """The processor must keep ``frame_size`` as it is (else it would re-budget the frames
        into other blocks): checked on one black block."""
        black = torch.zeros((self.frames_per_block, *self.frame_size, 3), dtype=torch.uint8)
        grid = self.video.inputs(black, resize=True)["video_grid_thw"][0, 1:]
        if (int(grid[0]) // merge, int(grid[1]) // merge) != (self.frame_size[0] // self.unit, self.frame_size[1] // self.unit):
            raise ValueError(f"frame_size {self.frame_size} is outside the video processor's pixel budget "
                             f"(size={self.processor.size}): it would resize the frames to a {grid.tolist()} patch grid")

    def preprocess(self, frames: torch.Tensor, layout: StreamLayout) -> torch.Tensor:
        """uint8 ``(N, H, W, 3)`` -> uint8 ``(N, h, w, 3)`` at the stream's frame size, only
        when the size differs: by the processor's own resize for a size the processor chose
        (the vanilla model's pixels), else bicubic."""
        h, w = layout.frame_size
        if tuple(frames.shape[1:3]) == (h, w):
            return frames
        if layout.processor_resize:
            return self.video.resize(frames, (h, w))
        x = frames.permute(0, 3, 1, 2).float()
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
        return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    def video_features(self, frames: torch.Tensor):
        """The vision tower's output (``get_video_features``) for uint8 ``(2k, h, w, 3)``
        frames (blocks are encoded independently: any split of the stream gives the same rows)."""
        if frames.shape[0] % self.frames_per_block:
            raise ValueError(f"a chunk needs a multiple of {self.frames_per_block} frames, got {frames.shape[0]}")
        inputs = self.video.inputs(frames)
        pixels = inputs["pixel_values_videos"].to(self.model.device, self.model.dtype)
        grid = inputs["video_grid_thw"].to(self.model.device)
        return self.model.model.get_video_features(pixel_values_videos=pixels, video_grid_thw=grid)

    def block_features(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``(2k, h, w, 3)`` -> ``(1, k * block_tokens, hidden)``."""
        return torch.cat(list(self.video_features(frames).pooler_output), dim=0)[None].to(self.model.dtype)

    # -- prompt -----------------------------------------------------------------------------
    @property
    def video_token(self) -> str:
        return self.tokenizer.convert_ids_to_tokens(self.model.config.video_token_id)

    def split_prompt(self, question: str) -> Tuple[str, str]:
        from lmms_rekv.io.prompt import split_prompt

        return split_prompt(self.tokenizer, self.chat_template, question, self.video_token, system=self.system_prompt,
                           template_kwargs=self.template_kwargs)

    def vanilla_input_ids(self, question: str, frames: int, layout: Optional[StreamLayout] = None) -> torch.Tensor:
        """``<|video_pad|>`` expanded to ``ceil(frames / 2) * block_tokens`` pads."""
        blocks = -(-frames // self.frames_per_block)
        video = [self.model.config.video_token_id] * (blocks * (layout or self.default_layout).block_tokens)
        return torch.tensor([self.prompt.prefix_ids() + video + self.prompt.suffix_ids(question)], device=self.model.device)

    # -- positions -------------------------------------------------------------------------
    def block_time(self, blocks: torch.Tensor, fps: Optional[float]) -> torch.Tensor:
        """Temporal position offset of block ``blocks`` from the video start (Qwen2-VL: the
        block index)."""
        return blocks

    def encode_positions(self, sinks: int, window_len: int, chunk: int, stream_tokens: int, window: Optional[int],
                         device: torch.device, layout: StreamLayout) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Window and chunk re-based to the block of the oldest window token; each query as
        seen from the sinks re-based to the block of the oldest token of its own window
        (time differences kept; height/width never move)."""
        rows, fps, per_block = layout.tables, layout.fps, layout.block_tokens
        oldest = stream_tokens - window_len
        base = self.block_time(torch.tensor(oldest // per_block, device=device), fps)
        window_keys = rows(base, sinks, window_len, oldest, fps)
        chunk_pos = rows(base, sinks, chunk, stream_tokens, fps)
        token = torch.arange(stream_tokens, stream_tokens + chunk, device=device)
        own = torch.zeros_like(token) if window is None else (token - window + 1).clamp(min=0) // per_block
        seen = rows(self.block_time(own, fps), sinks, chunk, stream_tokens, fps)
        return window_keys, chunk_pos, seen

    def context_positions(self, sinks: int, blocks: torch.Tensor, text: int, device: torch.device, layout: StreamLayout,
                          strategy: str = "layout", stored_tokens: Optional[int] = None,
                          kept: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[sinks, retrieved blocks, text]``: ``layout`` (block ranks through the family's
        time rule), ``original`` (each block's stream time), ``consecutive_t`` (ranks as
        time) or ``1d`` (every token consecutive); text after the video as the family
        places it (``layout``/``original``/``consecutive_t``: the video origin +
        ``max(H', W')``, the installed transformers' rule). Token reduction: each kept token
        (``kept``: ``(K, S)`` slots) where its slot stands in that layout."""
        k, rows, fps, tokens = len(blocks), layout.tables, layout.fps, len(blocks) * layout.block_tokens
        prefix = self.text_positions(0, sinks, device)
        if strategy == "1d":
            return self.text_positions(0, sinks + (tokens if kept is None else kept.numel()) + text, device)
        zero = torch.tensor(0, device=device)
        ranks = torch.arange(k, device=device)
        if strategy == "layout":
            video = rows(zero, sinks, tokens, 0, fps, rank=ranks)
        elif strategy == "original":
            video = rows(zero, sinks, tokens, 0, fps, rank=blocks.to(device))
        else:  # consecutive_t: ranks as time, whatever the family's time rule
            video = rows(zero, sinks, tokens, 0, fps, rank=ranks, index_as_time=True)
        if kept is not None:  # the kept tokens' own places among the whole blocks'
            video = video.view(3, k, -1).gather(2, kept.to(device)[None].expand(3, -1, -1)).flatten(1)
        after = self.text_positions(sinks + max(layout.grid), text, device)
        return torch.cat([prefix, video, after], dim=1)



class Qwen2_5_VLBackbone(Qwen2VLBackbone):
    """ReKV adapter for ``Qwen2_5_VLForConditionalGeneration``: Qwen2-VL's layout with time
    as absolute seconds -- block ``g`` at ``t = floor(g * tokens_per_second * 2 / fps)`` (the
    installed transformers' float32 arithmetic) -- so a session needs its sampling rate
    (``new_session(fps=...)``)."""

    model_type = "qwen2_5_vl"
    model_class = "Qwen2_5_VLForConditionalGeneration"

    def rotary_function(self):
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

        return apply_rotary_pos_emb

    needs_fps = "Qwen2.5-VL positions encode time"

    def block_time(self, blocks: torch.Tensor, fps: Optional[float]) -> torch.Tensor:
        vision = self.model.config.vision_config
        seconds_per_block = torch.tensor(vision.temporal_patch_size / fps, dtype=torch.float32)
        return (blocks * (vision.tokens_per_second * seconds_per_block)).long()
