"""Qwen3-VL (M-RoPE, interleaved; time as text): the family adapter.

A block is one temporal patch (2 frames) laid out as the processor lays out each group of a
video: ``<{t:.1f} seconds><|vision_start|>`` + ``H' x W'`` pads + ``<|vision_end|>``, where
``t`` is the mean time of the block's two frames (``2g / fps`` and ``(2g + 1) / fps``, or the
frames' own times when the stream gives them -- ``new_session(frame_times=...)``, what the
processor computes from a video's metadata ``frames_indices / fps``; an incomplete last
block repeats its frame, as the processor pads it). The chat template's own
``<|vision_start|>``/``<|vision_end|>`` around the whole video stay (the prefix ends with one,
the text after the video starts with the other) when the installed processor keeps them
(transformers <= 5.24) and go when it collapses them (5.25): read from the processor at load
(``keeps_outer_wrapper``), so the prompt ids are the installed processor's. Deepstack
features (rows of the visual tokens from intermediate vision layers) are added after the
first decoder layers of each chunk, as the model adds them.

The timestamp text varies in length (``<9.5 seconds>`` / ``<10.5 seconds>``), so blocks are
stored in fixed *slots*: ``header_slots`` for the timestamp (left-padded, unused slots zero
and never attended), then ``<|vision_start|>``, the pads and ``<|vision_end|>``. Every
attention (encoding window, question context) sees the tokens only; ``window_tokens``
counts tokens. The retrieval summary of a block averages its visual tokens.

Positions (``(3, T)``; the installed transformers' rule, checked against its
``get_rope_index``): a text run of ``n`` tokens at counter ``c`` takes ``c..c+n-1`` on
every row; a block's visual run at ``c`` takes ``t = c``, ``h = c + i``, ``w = c + j`` and
moves ``c`` by ``max(H', W')``. Time is only in the text, so a question's context
``[sinks, retrieved blocks, text]`` is that layout re-run over the retrieved blocks (each
with its own timestamp: exactly what the model sees when shown only those frames);
``original`` keeps each block's stream positions. While encoding, every axis is shifted by
one amount so that the oldest window token's time row sits right after the sinks.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy
import torch

from lmms_rekv.layout import StreamLayout

from .base import ChunkInputs
from .qwen2_vl import Qwen2VLBackbone

#: longest stream (seconds) whose timestamps are sized into the header slots
MAX_SECONDS = 999_999.9


def keeps_outer_wrapper(tokenizer, video_processor, chat_template: str, vision_start_id: int, side: int, frames: int) -> bool:
    """Whether the installed Qwen3-VL processor keeps the chat template's ``<|vision_start|>``
    / ``<|vision_end|>`` around the whole video besides each block's own (transformers <=
    5.24) or collapses them (5.25): read from the prompt ids it builds for a one-block video
    of ``frames`` black ``side x side`` frames."""
    import transformers

    full = transformers.Qwen3VLProcessor(image_processor=transformers.Qwen2VLImageProcessor(), tokenizer=tokenizer,
                                         video_processor=video_processor, chat_template=chat_template)
    turn = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "?"}]}]
    text = full.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    video = numpy.zeros((frames, side, side, 3), numpy.uint8)
    meta = [{"fps": 1.0, "frames_indices": list(range(frames)), "total_num_frames": frames}]
    ids = full(text=[text], videos=[video], video_metadata=meta, do_sample_frames=False, return_tensors="pt")["input_ids"]
    starts = int((ids == vision_start_id).sum())
    if starts not in (1, 2):
        raise RuntimeError(f"unexpected Qwen3-VL prompt layout from the installed processor ({starts} vision starts for one block)")
    return starts == 2


def without_outer_wrapper(before: str, after: str, tokenizer, start_id: int, end_id: int) -> Tuple[str, str]:
    """The template's text around the video without the outer vision start/end tokens."""
    start, end = tokenizer.convert_ids_to_tokens(start_id), tokenizer.convert_ids_to_tokens(end_id)
    return before[: -len(start)] if before.endswith(start) else before, after[len(end):] if after.startswith(end) else after


class BlockClock:
    """Qwen3-VL's block timestamps for one stream: each block's ``<{t:.1f} seconds>`` header, from
    the stream's own frame times or ``frame / fps``, and per-fps tables of header lengths and of
    block ends in stream tokens (grown by doubling, shared by threads). ``visual_tokens`` (set
    by the adapter once its frame size is known) is the visual run of a block."""

    def __init__(self, tokenize: Callable[[str], List[int]], frames_per_block: int, visual_tokens: int = 0,
                 frame_times: Optional[Tuple[float, ...]] = None, headers: Optional[Dict[str, List[int]]] = None) -> None:
        self.tokenize, self.frames_per_block, self.visual_tokens = tokenize, frames_per_block, visual_tokens
        self.frame_times = frame_times
        self._headers = {} if headers is None else headers  # text -> ids, shared by every clock of a model
        self._lengths: Dict[float, torch.Tensor] = {}  # fps -> header tokens of blocks 0.. (unpadded)
        self._ends: Dict[float, torch.Tensor] = {}  # fps -> stream token count at the end of blocks 0..
        self._lock = threading.Lock()
        self.header_slots = self._header_bound()

    def for_stream(self, frames_per_block: int, visual_tokens: int, frame_times: Optional[Tuple[float, ...]]) -> "BlockClock":
        """A clock for a stream of blocks of ``frames_per_block`` frames and ``visual_tokens``
        visual tokens whose frames were taken at ``frame_times`` (empty tables, the header
        cache shared)."""
        return BlockClock(self.tokenize, frames_per_block, visual_tokens, frame_times, self._headers)

    def header_ids(self, seconds: float) -> List[int]:
        """Token ids of a block's timestamp text ``<{seconds:.1f} seconds>``."""
        text = f"<{seconds:.1f} seconds>"
        ids = self._headers.get(text)
        if ids is None:
            ids = self._headers[text] = self.tokenize(text)
        return ids

    def _header_bound(self) -> int:
        """Slots for the timestamp text: its byte length for ``MAX_SECONDS`` (a byte-level
        tokenizer never needs more), at least the longest probe's token count."""
        probes = [float(f"{d * k}.{d}") for k in range(1, 7) for d in "0123456789"]
        longest = max(len(self.header_ids(p)) for p in probes)
        return max(longest, len(f"<{MAX_SECONDS:.1f} seconds>".encode()))

    def frame_seconds(self, frame: int, fps: float) -> float:
        """The time of stream frame ``frame``: its own (``frame_times``) or ``frame / fps``."""
        times = self.frame_times
        if times is None:
            return frame / fps
        if frame < len(times):
            return times[frame]
        return times[-1] + (frame - len(times) + 1) / fps

    def block_seconds(self, block: int, fps: float, padded: bool = False) -> float:
        """The processor's timestamp of stream block ``block``: the mean of its first and
        last frames' times (``padded``: an incomplete 2-frame block, its frame repeated)."""
        first = self.frames_per_block * block
        last = first if padded else first + self.frames_per_block - 1
        return (self.frame_seconds(first, fps) + self.frame_seconds(last, fps)) / 2

    def header_lengths(self, blocks: torch.Tensor, fps: float, padded: Optional[int] = None) -> torch.Tensor:
        """``(K,)`` timestamp tokens of stream blocks ``blocks`` (block ``padded``: incomplete)."""
        need = int(blocks.max()) + 1 if len(blocks) else 0
        if need and self.block_seconds(need - 1, fps) > MAX_SECONDS:
            raise ValueError(f"block {need - 1} at {fps} fps is past {MAX_SECONDS} s, the longest stream whose "
                             f"timestamps the {self.header_slots} header slots are sized for")
        table = self._lengths.get(fps)
        if table is None or table.shape[0] < need:
            with self._lock:
                table = self._grow(fps, need)
        lengths = table[blocks.cpu()]
        if padded is not None:
            lengths = torch.where(blocks.cpu() == padded, len(self.header_ids(self.block_seconds(padded, fps, True))), lengths)
        too_long = int(lengths.max()) if len(lengths) else 0
        if too_long > self.header_slots:
            raise ValueError(f"a timestamp of this stream takes {too_long} tokens, more than the {self.header_slots} "
                             f"slots sized for streams up to {MAX_SECONDS} s")
        return lengths

    def _grow(self, fps: float, need: int) -> torch.Tensor:
        """The per-fps table of timestamp lengths, extended (doubling) to ``need`` blocks."""
        table = self._lengths.get(fps, torch.zeros(0, dtype=torch.long))
        if table.shape[0] < need:
            size = max(need, 2 * table.shape[0], 64)
            new = [len(self.header_ids(self.block_seconds(g, fps))) for g in range(table.shape[0], size)]
            table = torch.cat([table, torch.tensor(new, dtype=torch.long)])
            self._ends[fps] = torch.cumsum(table + 2 + self.visual_tokens, 0)
            self._lengths[fps] = table
        return table

    def block_of(self, token: int, fps: float, padded: Optional[int]) -> Tuple[int, int]:
        """(block, its first token) of stream token ``token`` (tokens counted without slots;
        a binary search in the cached block ends: no work that grows with the stream)."""
        blocks = max(64, self._lengths[fps].shape[0] if fps in self._lengths else 0)
        while True:
            self.header_lengths(torch.tensor([blocks - 1]), fps)  # grows the cached table
            ends = self._ends[fps]
            if int(ends[-1]) > token:
                g = int(torch.searchsorted(ends, token, right=True))
                if padded is not None:  # the padded block is a fork's last: its own length never moves a start
                    g = min(g, padded)
                return g, int(ends[g - 1]) if g else 0
            blocks *= 2


def ragged(lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """For runs of ``lengths`` ``(K,)``: each element's run and index inside it."""
    run = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    first = torch.cumsum(lengths, 0) - lengths
    return run, torch.arange(int(lengths.sum())) - first[run]


class TimestampedRows:
    """M-RoPE positions of Qwen3-VL blocks on a ``grid`` ``(H', W')``: each block is its
    timestamp tokens, ``<|vision_start|>``, ``H' x W'`` visual tokens, ``<|vision_end|>``."""

    def __init__(self, grid: Tuple[int, int]) -> None:
        self.grid, self.visual_tokens = grid, grid[0] * grid[1]

    def advance(self, heads: torch.Tensor) -> torch.Tensor:
        """How far each block with ``heads`` timestamp tokens moves the position counter."""
        return heads + 2 + max(self.grid)

    def __call__(self, heads: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """``(3, sum(tokens))`` positions of blocks with ``heads`` timestamp tokens starting
        at counters ``starts`` (both ``(K,)``)."""
        block, o = ragged(heads + 2 + self.visual_tokens)
        h, c = heads[block], starts[block]
        pad = o - h - 1
        is_pad = (pad >= 0) & (pad < self.visual_tokens)
        t = c + h + 1
        rows = torch.stack([torch.where(is_pad, t, c + o),
                            torch.where(is_pad, t + pad.clamp(min=0) // self.grid[1], c + o),
                            torch.where(is_pad, t + pad.clamp(min=0) % self.grid[1], c + o)])
        end = o == h + 1 + self.visual_tokens  # <|vision_end|>: after the visual run's advance
        return torch.where(end, t + max(self.grid), rows)


class StreamTables(NamedTuple):
    """A Qwen3-VL stream's tables (``StreamLayout.tables``): its clock and its rows."""

    clock: BlockClock
    rows: TimestampedRows


class Qwen3VLBackbone(Qwen2VLBackbone):
    """ReKV adapter for ``Qwen3VLForConditionalGeneration``."""

    model_type = "qwen3_vl"
    model_class = "Qwen3VLForConditionalGeneration"
    strategies = ("layout", "original", "1d")
    default_side = 448
    needs_fps = "Qwen3-VL blocks carry their time as text"
    processor_kwargs = {"do_resize": False, "cap_pixels_per_frame": False}  # see _check_budget

    def __init__(self, model, tokenizer, chat_template: str, processor, frame_size: Optional[Tuple[int, int]] = None,
                 **prompt_options: Any) -> None:
        super().__init__(model, tokenizer, chat_template, processor, frame_size, **prompt_options)
        self.clock = BlockClock(self.tokenize, self.frames_per_block)  # the header cache every stream's clock shares
        self.header_slots = self.clock.header_slots
        self.outer_wrapper = self._processor_keeps_outer_wrapper()

    def _processor_keeps_outer_wrapper(self) -> bool:
        cfg = self.model.config
        return keeps_outer_wrapper(self.tokenizer, self.processor, self.chat_template, cfg.vision_start_token_id,
                                   2 * self.unit, self.frames_per_block)

    def split_prompt(self, question: str) -> Tuple[str, str]:
        """The template's text before and after the video, without the outer
        ``<|vision_start|>``/``<|vision_end|>`` when the installed processor drops them."""
        before, after = super().split_prompt(question)
        if not self.outer_wrapper:
            cfg = self.model.config
            before, after = without_outer_wrapper(before, after, self.tokenizer, cfg.vision_start_token_id, cfg.vision_end_token_id)
        return before, after

    # -- structure ------------------------------------------------------------------------
    def pre_rope_modules(self, layer: int) -> Tuple[torch.nn.Module, torch.nn.Module]:
        attn = self.text_model.layers[layer].self_attn
        return attn.q_norm, attn.k_norm  # q/k RMS norms come after the projections, before RoPE

    def rotary_function(self):
        from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb

        return apply_rotary_pos_emb

    # -- a stream's layout: slots and its BlockClock ------------------------------------------
    def sized_layout(self, size: Tuple[int, int], processor_resize: bool, from_frames: bool, fps: Optional[float],
                     frame_times: Optional[Tuple[float, ...]]) -> StreamLayout:
        """Blocks stored in ``header_slots`` timestamp slots, ``<|vision_start|>``, ``H' x W'``
        pads and ``<|vision_end|>``; the stream's clock (timestamps from ``frame_times`` when
        given, frames past them continuing at ``fps``) and rows in ``tables``."""
        grid = (size[0] // self.unit, size[1] // self.unit)
        visual = grid[0] * grid[1]
        tables = StreamTables(self.clock.for_stream(self.frames_per_block, visual, frame_times), TimestampedRows(grid))
        return StreamLayout(block_tokens=self.header_slots + 2 + visual, frame_size=tuple(size), grid=grid,
                            processor_resize=processor_resize, from_frames=from_frames, fps=fps, frame_times=frame_times,
                            summary_span=(self.header_slots + 1, self.header_slots + 1 + visual), tables=tables)

    # -- vision and prompt ------------------------------------------------------------------
    def _default_size(self) -> Tuple[int, int]:
        """The largest square of side <= 448 (a multiple of 32) whose 2-frame block is within
        the video processor's clip budget."""
        budget = (self.processor.size or {}).get("longest_edge")
        side = self.default_side
        while budget and side > self.unit and self.frames_per_block * side * side > budget:
            side -= self.unit
        return side, side

    #: frames assumed for a stream of unknown length (a live stream): one temporal patch
    LIVE_FRAMES = 2

    @property
    def sizes_by_clip(self) -> bool:
        """Whether a stream's frame size depends on its frame count (the processor's clip budget)."""
        return self.sizes_per_stream

    def stream_size(self, height: int, width: int, frames: Optional[int] = None) -> Tuple[int, int]:
        """The size the processor gives a video of ``frames`` frames of ``height x width``:
        its own ``smart_resize`` with the clip budget (``frames`` unknown: ``LIVE_FRAMES``)."""
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

        if getattr(self.processor, "do_resize", True) is False:  # a processor that keeps frames as they are
            return self._check_size((height, width))
        low, high = self.video.bounds()
        count = max(int(frames or self.LIVE_FRAMES), self.frames_per_block)
        return tuple(smart_resize(num_frames=count, height=height, width=width, temporal_factor=self.frames_per_block,
                                  factor=self.unit, min_pixels=low, max_pixels=high))

    def _check_budget(self, merge: int) -> None:
        """Nothing to check: frames reach the processor at the fixed size with resizing off
        (its budget is per clip, so it would otherwise resize each chunk differently)."""

    def _visual(self, frames: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """uint8 ``(2k, h, w, 3)`` -> ``(k * H'W', hidden)`` visual embeddings and the
        deepstack levels, each ``(k * H'W', hidden)``."""
        out = self.video_features(frames)
        deepstack = [torch.cat(list(level), dim=0).to(self.model.dtype) for level in out.deepstack_features]
        return torch.cat(list(out.pooler_output), dim=0).to(self.model.dtype), deepstack

    def block_features(self, frames: torch.Tensor) -> torch.Tensor:
        """``(1, k * H'W', hidden)`` visual embeddings of ``2k`` frames (no timestamps)."""
        return self._visual(frames)[0][None]

    def _block_ids(self, blocks: range, layout: StreamLayout) -> List[int]:
        cfg, clock, visual = self.model.config, layout.tables.clock, layout.tables.rows.visual_tokens
        ids: List[int] = []
        for g in blocks:
            ids += clock.header_ids(clock.block_seconds(g, layout.fps, g == layout.padded))
            ids += [cfg.vision_start_token_id] + [cfg.video_token_id] * visual + [cfg.vision_end_token_id]
        return ids

    def chunk_inputs(self, pixels: torch.Tensor, first_block: int, layout: StreamLayout) -> ChunkInputs:
        """Blocks ``first_block..``: timestamp text, ``<|vision_start|>``, visual embeddings,
        ``<|vision_end|>`` each; the chunk's ``visual_pos_masks`` and deepstack rows; each
        token's slot (timestamps right-aligned in their slots)."""
        visual, deepstack = self._visual(pixels)
        k = pixels.shape[0] // self.frames_per_block
        slots = self.block_rows(torch.arange(first_block, first_block + k), self.model.device, layout)  # refuses an oversized timestamp
        ids = torch.tensor([self._block_ids(range(first_block, first_block + k), layout)], device=self.model.device)
        mask = ids == self.model.config.video_token_id
        embeds = self.text_model.embed_tokens(ids).masked_scatter(mask[..., None], visual)
        return ChunkInputs(embeds, {"visual_pos_masks": mask, "deepstack_visual_embeds": deepstack}, slots)

    def block_rows(self, blocks: torch.Tensor, device: torch.device, layout: StreamLayout,
                   kept: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The stored slots holding tokens: each block's timestamp right-aligned in its header
        slots, then the rest (``kept``: the written slots stored, token reduction -- it cuts
        visual tokens only, so only their number matters here: no read of ``kept``)."""
        heads = layout.tables.clock.header_lengths(blocks, layout.fps, layout.padded)
        stride = layout.block_tokens if kept is None else kept.shape[1]  # stored slots per block
        block, inside = ragged(heads + stride - self.header_slots)  # its timestamp tokens and every slot after them
        return (block * stride + (self.header_slots - heads)[block] + inside).to(device)

    def vanilla_input_ids(self, question: str, frames: int, layout: Optional[StreamLayout] = None) -> torch.Tensor:
        """The processor's prompt ids for ``frames`` frames of a stream of ``layout`` (its fps
        and frame times)."""
        layout = layout or self.default_layout
        if layout.fps is None:
            raise ValueError("Qwen3-VL prompts carry timestamps: give the layout an fps")
        blocks = -(-frames // self.frames_per_block)
        video = self._block_ids(range(blocks), layout.with_padding(blocks - 1 if frames % self.frames_per_block else None))
        return torch.tensor([self.prompt.prefix_ids() + video + self.prompt.suffix_ids(question)], device=self.model.device)

    # -- positions --------------------------------------------------------------------------
    def stream_rows(self, first: int, last: int, layout: StreamLayout) -> torch.Tensor:
        """``(3, tokens)`` positions of stream blocks ``first..last-1`` with block ``first``
        starting at counter 0."""
        clock, rows = layout.tables
        heads = clock.header_lengths(torch.arange(first, last), layout.fps, layout.padded)
        adv = rows.advance(heads)
        return rows(heads, torch.cumsum(adv, 0) - adv)

    def encode_positions(self, sinks: int, window_len: int, chunk: int, stream_tokens: int, window: Optional[int],
                         device: torch.device, layout: StreamLayout) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Window, chunk and each query as seen from the sinks, shifted on every axis so
        that the time row of the oldest token of the window (for the queries: of their own
        window) sits at ``sinks``."""
        clock, oldest = layout.tables.clock, stream_tokens - window_len
        g0, t0 = clock.block_of(oldest, layout.fps, layout.padded)
        g1, _ = clock.block_of(stream_tokens + chunk - 1, layout.fps, layout.padded)
        rows = self.stream_rows(g0, g1 + 1, layout)[:, oldest - t0 : stream_tokens + chunk - t0]
        base = rows[0, 0] - sinks
        window_keys, chunk_pos = rows[:, :window_len] - base, rows[:, window_len:] - base
        token = torch.arange(stream_tokens, stream_tokens + chunk)
        own = torch.zeros_like(token) if window is None else (token - window + 1).clamp(min=0)
        seen = rows[:, window_len:] - rows[0, own - oldest] + sinks
        return window_keys.to(device), chunk_pos.to(device), seen.to(device)

    def positions_use_indices(self, strategy: str) -> bool:
        return True  # block lengths (timestamps) depend on which blocks were retrieved

    def context_positions(self, sinks: int, blocks: torch.Tensor, text: int, device: torch.device, layout: StreamLayout,
                          strategy: str = "layout", stored_tokens: Optional[int] = None,
                          kept: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[sinks, retrieved blocks, text]``: ``layout`` (blocks packed from the sinks on,
        each with its own timestamp), ``original`` (each block's stream positions; the text
        right after the last one) or ``1d`` (every token consecutive). Token reduction: each
        kept token (``kept``: ``(K, S)`` written slots) where its slot stands in that layout."""
        (clock, rows), fps, padded, blocks = layout.tables, layout.fps, layout.padded, blocks.cpu()
        heads = clock.header_lengths(blocks, fps, padded)
        prefix = self.text_positions(0, sinks, torch.device("cpu"))
        lengths = heads + 2 + rows.visual_tokens  # tokens of each whole block
        picked = None if kept is None else self._kept_tokens(heads, lengths, kept.cpu())
        if strategy == "1d":
            return self.text_positions(0, sinks + int(lengths.sum() if picked is None else len(picked)) + text, device)
        adv = rows.advance(heads)
        if strategy == "original":
            every = rows.advance(clock.header_lengths(torch.arange(int(blocks.max()) + 1), fps, padded))
            starts = sinks + (torch.cumsum(every, 0) - every)[blocks]
        else:
            starts = sinks + torch.cumsum(adv, 0) - adv
        after = self.text_positions(int(starts[-1] + adv[-1]), text, torch.device("cpu"))
        video = rows(heads, starts)
        return torch.cat([prefix, video if picked is None else video[:, picked], after], dim=1).to(device)

    def _kept_tokens(self, heads: torch.Tensor, lengths: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """Indices among the whole blocks' tokens (``lengths`` each, ``heads`` timestamp tokens)
        of the tokens the stored slots ``kept`` ``(K, S)`` stand for (unused header slots out)."""
        token = kept - (self.header_slots - heads)[:, None]  # slot -> the block's token
        first = torch.cumsum(lengths, 0) - lengths
        return (first[:, None] + token)[token >= 0]


class Qwen3VLMoeBackbone(Qwen3VLBackbone):
    """ReKV adapter for ``Qwen3VLMoeForConditionalGeneration`` (Qwen3-VL with mixture-of-experts
    MLPs: the attention, positions and vision side are Qwen3-VL's)."""

    model_type = "qwen3_vl_moe"
    model_class = "Qwen3VLMoeForConditionalGeneration"

    def rotary_function(self):
        from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import apply_rotary_pos_emb

        return apply_rotary_pos_emb
