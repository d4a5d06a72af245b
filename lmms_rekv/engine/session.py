"""`ReKVSession`: one video stream -- add frames as they arrive, ask questions any time."""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, List, Optional, Protocol, Sequence, Tuple

import torch

from ..io.preprocess import as_frames
from ..retrieval.scoring import frame_scores
from ..retrieval.selection import fuse, select
from ..storage.store import BlockStore, GrowingRows, OverlayStore
from .background import BackgroundEncoder
from .encoder import ChunkStep, PrefixStep, StreamState
from .generation import GenerationSettings, cut_at_stop, next_token
from .qa import QAStep

if TYPE_CHECKING:
    from ..config import ReKVConfig

logger = logging.getLogger(__name__)


def _settled(method):
    """Run ``method`` once the background encoder (if any) has added every frame submitted
    before the call, then under the session's lock."""

    @functools.wraps(method)
    def settled(self, *args, **kwargs):
        self.wait()
        with self._lock:
            return method(self, *args, **kwargs)

    return settled


@dataclass
class Answer:
    """One answer. ``selected[l]`` holds the frames layer ``l`` attended to (time order);
    ``logits`` the fp32 next-token logits ``(V,)`` of every decoding step."""

    text: str
    token_ids: List[int]
    selected: List[torch.Tensor]
    logits: List[torch.Tensor] = field(default_factory=list)
    context_tokens: int = 0
    first_token_seconds: float = 0.0  # question start -> first token chosen (prefill + retrieval)
    seconds: float = 0.0  # question start -> last token


class Engine(Protocol):
    """What a session needs from the loaded model (``lmms_rekv.ReKV`` is one): the family
    adapter, the settings and the frame processor."""

    backbone: Any  # lmms_rekv.patches.base.Backbone
    config: "ReKVConfig"
    processor: Any  # uint8 frames -> (N, 3, S, S) pixels
    device: torch.device
    dtype: torch.dtype
    embedder: Any  # external retrieval (open_clip), loaded on first use

    def generation_settings(self, **kwargs) -> GenerationSettings: ...


class ReKVSession:
    """Streaming state of one video: sinks + window on the device, every frame's KV in the
    block store. Questions never modify it, so many can be asked on one encoded stream.

    Frames are committed to the store in chunks of ``chunk_frames`` at fixed places in the
    stream (so the stored KV does not depend on how frames arrive or when questions come);
    the frames of the incomplete last chunk are encoded at once into a provisional *tail*
    (a fork of the window plus a small store of its own) that questions use, and encoded
    again with their chunk once it is complete (``eager``; see ``ReKVConfig``)."""

    def __init__(self, engine: Engine, fps: Optional[float] = None, frames: Optional[int] = None,
                 frame_size: Optional[Tuple[int, int]] = None, frame_times: Optional[Sequence[float]] = None) -> None:
        self.frame_times = None if frame_times is None else tuple(float(t) for t in frame_times)
        self.engine, self.backbone = engine, engine.backbone.sized(frame_size).timed(self.frame_times)
        self.config = engine.config
        self.fps = None if fps is None else float(fps)
        self.expected_frames = frames  # how many frames the stream will have, when known (Qwen3-VL's clip budget)
        self._sized = not self.backbone.sizes_per_stream  # else: sized from the first frame (``_size_from``)
        self.backbone.check_stream(self.fps, self.config.position_strategy)
        self._lock = threading.RLock()
        self.state = StreamState(store=self._new_store(self.config.offload), window=self.config.window_tokens)
        self._embeddings: Optional[GrowingRows] = None
        self._pending: List[torch.Tensor] = []
        self._pending_frames = 0
        self._tail: Optional[StreamState] = None  # provisional encoding of pending whole blocks
        self._tail_frames = 0  # pending frames the tail covers
        self._tail_forwards = 0  # forwards that built it (1: identical to committing them now)
        self._worker: Optional[BackgroundEncoder] = None
        self._prefix_done = False
        self.saved_meta: dict = {}  # what ``save`` stored beside the stream (reopened sessions)

    def _new_store(self, offload: str, capacity: int = 64) -> BlockStore:
        """An empty block store on the ``offload`` tier with this stream's block layout."""
        engine, cfg = self.engine, self.config
        layers, kv_heads, head_dim = self.backbone.kv_shape()
        storage = engine.device if offload == "device" else torch.device("cpu")
        factory = None
        if offload == "disk":
            from ..storage.backends import DiskBackend

            factory = lambda fields: DiskBackend(layers, fields, cfg.offload_dir, cfg.ram_budget_bytes)  # noqa: E731
        return BlockStore(
            layers, self.backbone.block_tokens, kv_heads, head_dim, engine.dtype, storage, engine.device,
            initial_capacity=capacity, kv_quant=cfg.kv_quant, backend_factory=factory, summary_device=self._index_device,
            summary_tokens=self.backbone.summary_tokens,
        )

    @property
    def _index_on_device(self) -> bool:
        """Whether the per-frame retrieval index (summaries, embeddings) is on the model's
        device (``summary_tier="device"``) rather than in host RAM."""
        return self.config.summary_tier == "device"

    @property
    def _index_device(self) -> torch.device:
        return self.engine.device if self._index_on_device else torch.device("cpu")

    # -- frames ---------------------------------------------------------------------------
    @property
    def frames(self) -> int:
        """Frames added so far (committed, in the incomplete last chunk, or still queued for
        the background encoder)."""
        queued = self._worker.queued_frames if self._worker is not None else 0
        return self._held_frames() + queued

    def add_frames(self, frames, block: bool = True) -> None:
        """Append frames (uint8 ``(N, H, W, 3)``, numpy or torch, time order) to the stream.

        Complete chunks of ``chunk_frames`` are committed at once; with ``eager`` the rest
        is encoded into the provisional tail before the call returns, so a question right
        after a burst encodes nothing. ``block=False`` hands the frames to the session's
        background encoder (started on first use, see ``start``) and returns at once; so
        does every call while it runs, in order. Frames are checked in the caller's thread."""
        frames = as_frames(frames)
        if self._worker is None and block:
            with self._lock:
                self._add([frames], lambda: False)
            return
        worker = self._background()
        ticket = worker.submit(frames)
        if block:
            worker.wait(ticket)

    def _add(self, batches: List[torch.Tensor], more_waiting) -> None:
        """Preprocess ``batches`` of frames, commit complete chunks and (``eager``, when no
        more frames are waiting) extend the provisional tail. Call holding the lock."""
        frames = torch.cat(batches) if len(batches) > 1 else batches[0]
        if not self._sized:
            self._size_from(frames)
        pixels = self.backbone.preprocess(frames)
        if self.config.uses_embeddings:
            self._embed(frames)
        self._pending.append(pixels)
        self._pending_frames += pixels.shape[0]
        try:
            self._encode_pending(more_waiting)
        except Exception as exc:  # e.g. a full disk: nothing committed, the frames wait
            exc.add_note(f"lmms-rekv: the session is unchanged and {self._pending_frames} added frames wait to be "
                         "encoded by the next add_frames, flush or question")
            raise

    def _size_from(self, frames: torch.Tensor) -> None:
        """Fix the stream's frame size from its first frames (``(N, H, W, 3)``): the size the
        family's processor gives this video. Later frames of any size are resized to it."""
        height, width = int(frames.shape[1]), int(frames.shape[2])
        backbone = self.engine.backbone.for_stream(height, width, self.expected_frames).timed(self.frame_times)
        if backbone is not self.backbone:  # nothing is stored yet: the store is made again at this size
            self.state.store.close()
            self.backbone = backbone
            self.state = StreamState(store=self._new_store(self.config.offload), window=self.config.window_tokens)
        self._sized = True
        logger.debug("stream frames %dx%d -> %s", height, width, getattr(backbone, "frame_size", None))

    def _encode_pending(self, more_waiting, tail: Optional[bool] = None) -> None:
        """Commit the complete chunks among the pending frames, then (``tail``, default
        ``eager``; when no more frames are waiting) extend the provisional tail. A chunk
        leaves the pending frames only once it is stored, so a failure (full disk, out of
        memory) loses nothing."""
        per_block = self.backbone.frames_per_block
        chunk = -(-self.config.chunk_frames // per_block) * per_block  # whole blocks
        while self._pending_frames >= chunk:
            self._encode(self._pending_range(0, chunk))
            self._drop_pending(chunk)  # the tail covered frames of this chunk: dropped too
        if (self.config.eager if tail is None else tail) and not more_waiting():
            self._extend_tail()

    def _held_frames(self) -> int:
        return self.state.store.blocks * self.backbone.frames_per_block + self._pending_frames

    def _add_locked(self, batches: List[torch.Tensor], more_waiting) -> None:
        with self._lock:
            self._add(batches, more_waiting)

    # -- background encoding --------------------------------------------------------------
    def start(self) -> "ReKVSession":
        """Start the background encoder: from now on ``add_frames`` queues frames and a
        thread encodes them while the caller keeps feeding (``add_frames(block=True)``
        still waits for its own frames). Questions wait for every frame added before them.
        At most ``4 * chunk_frames`` frames wait in its queue: beyond that ``add_frames``
        blocks until there is room (a source faster than the encoder is slowed down).
        Returns the session (``with session.start(): ...`` stops and closes it at the end)."""
        self._background()
        return self

    def wait(self) -> None:
        """Block until the background encoder (if running) has added every frame submitted
        so far; raises a failure it met."""
        if self._worker is not None:
            self._worker.wait()

    def stop(self) -> None:
        """Encode what is queued and end the background encoder; raises a failure it met."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()

    def _background(self) -> BackgroundEncoder:
        worker = self._worker
        if worker is not None and not worker.alive:  # ended by a failure: report it once
            self._worker = None
            worker.stop()
        if self._worker is None:
            self._worker = BackgroundEncoder(self._add_locked, max_queued_frames=4 * self.config.chunk_frames,
                                             accepted=self._held_frames)
        return self._worker

    def _embed(self, frames: torch.Tensor) -> None:
        """External-retrieval embeddings of new frames (once per frame, in batches)."""
        self._embed_rows(self.engine.embedder.embed_frames(frames))

    def _embed_rows(self, embeddings: torch.Tensor) -> None:
        if self._embeddings is None:
            self._embeddings = GrowingRows(embeddings.shape[1], self._index_device)
        self._embeddings.append(embeddings)

    @property
    def embeddings(self) -> Optional[torch.Tensor]:
        """``(frames, E)`` normalised frame embeddings (external/hybrid retrieval), else None."""
        return None if self._embeddings is None else self._embeddings.view()

    @_settled
    def flush(self) -> None:
        """Commit the incomplete last chunk (its whole blocks) now, e.g. at the end of a
        video; see ``_flush``."""
        self._flush()

    @torch.inference_mode()  # adopting the tail writes into stores made while encoding
    def _flush(self) -> None:
        """Commit the incomplete last chunk (its whole blocks) now, e.g. at the end of a
        video; the grid of later chunks starts after it. When the tail was encoded in one
        forward it is adopted as it is (bit-identical to encoding it now), else re-encoded."""
        whole = self._pending_frames - self._pending_frames % self.backbone.frames_per_block
        if not whole:
            return
        if self._tail is not None and self._tail_frames == whole and self._tail_forwards == 1:
            tail = self._tail
            self.state.store.extend_from(tail.store.extra)
            self.state.win_k, self.state.win_v = tail.win_k, tail.win_v
            self.state.stream_tokens = tail.stream_tokens
            self._drop_pending(whole)
        else:
            self._drop_tail()
            self._encode(self._pending_range(0, whole))
            self._drop_pending(whole)

    def _pending_range(self, first: int, last: int) -> torch.Tensor:
        """Pending frames ``first..last-1`` (a view when they lie in one added batch: a frame
        trickling in is not copied with the whole backlog)."""
        pieces, start = [], 0
        for batch in self._pending:
            lo, hi = max(first, start), min(last, start + batch.shape[0])
            if lo < hi:
                pieces.append(batch[lo - start : hi - start])
            start += batch.shape[0]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def _drop_pending(self, n: int) -> None:
        """Forget the first ``n`` pending frames (now stored) and the tail that covered them;
        whole batches are dropped, the one cut is sliced (no copy of the backlog)."""
        rest, left = [], n
        for batch in self._pending:
            if left >= batch.shape[0]:
                left -= batch.shape[0]
                continue
            rest.append(batch[left:])
            left = 0
        self._pending, self._pending_frames = rest, self._pending_frames - n
        self._drop_tail()

    def _fork(self, state: StreamState) -> StreamState:
        """``state`` followed by a small store of its own; encoding into the fork leaves
        ``state`` (store, window, counters) untouched."""
        tier = "cpu" if self.config.offload == "disk" else self.config.offload
        return StreamState(store=OverlayStore(state.store, self._new_store(tier, 1)), window=state.window,
                           sink_k=state.sink_k, sink_v=state.sink_v, win_k=list(state.win_k), win_v=list(state.win_v),
                           stream_tokens=state.stream_tokens)

    def _extend_tail(self) -> None:
        """Encode the pending whole blocks the provisional tail does not cover yet."""
        whole = self._pending_frames - self._pending_frames % self.backbone.frames_per_block
        if whole <= self._tail_frames:
            return
        if not self._prefix_done:
            self._encode_prefix()
        if self._tail is None:
            self._tail = self._fork(self.state)
        self._encode(self._pending_range(self._tail_frames, whole), self._tail)
        self._tail_frames, self._tail_forwards = whole, self._tail_forwards + 1

    def _drop_tail(self) -> None:
        if self._tail is not None:
            self._tail.store.close()
        self._tail, self._tail_frames, self._tail_forwards = None, 0, 0

    @torch.inference_mode()
    def _encode(self, pixels: torch.Tensor, state: Optional[StreamState] = None) -> None:
        bb, st, device = self.backbone, state or self.state, self.engine.device
        if not self._prefix_done:
            self._encode_prefix()
        n = pixels.shape[0] // bb.frames_per_block  # blocks
        inputs = bb.chunk_inputs(pixels, st.store.blocks, fps=self.fps, padded=st.padded_block)
        features = inputs.embeds  # (1, L, hidden)
        first = st.store.reserve(n)
        length = features.shape[1]
        block = self.config.query_block_tokens or (2048 if device.type == "cuda" else 128)
        window_keys, chunk, seen = bb.encode_positions(st.sinks, st.window_len, length, st.stream_tokens, st.window, device,
                                                       fps=self.fps, padded=st.padded_block)
        step = ChunkStep(st, bb.rope, first, block, window_keys, seen, features, slots=inputs.slots,
                         slot_count=n * bb.block_tokens)
        window = list(st.win_k), list(st.win_v)  # the handler replaces (never mutates) them per layer
        try:
            with bb.routed(step):
                bb.text_model(inputs_embeds=features, position_ids=bb.position_ids(chunk), use_cache=False, **inputs.lm_kwargs)
        except BaseException:  # the reserved frames stay uncommitted: restore the window too
            st.win_k[:], st.win_v[:] = window
            raise
        st.store.commit(n)
        st.stream_tokens += length
        logger.debug("encoded %d blocks (stream: %d blocks)", n, st.store.blocks)

    def _encode_prefix(self) -> None:
        engine, bb = self.engine, self.backbone
        ids = bb.prefix_ids()
        if ids:
            ids_t = torch.tensor([ids], device=engine.device)
            positions = bb.text_positions(0, len(ids), engine.device)
            try:
                with bb.routed(PrefixStep(self.state)):
                    bb.text_model(input_ids=ids_t, position_ids=bb.position_ids(positions), use_cache=False)
            except BaseException:
                for lst in (self.state.sink_k, self.state.sink_v, self.state.win_k, self.state.win_v):
                    lst.clear()
                raise
        else:
            layers = self.state.store.layers
            empty = torch.empty((self.state.store.kv_heads, 0, self.state.store.head_dim), dtype=engine.dtype, device=engine.device)
            for lst in (self.state.sink_k, self.state.sink_v, self.state.win_k, self.state.win_v):
                lst.extend([empty] * layers)
        self._prefix_done = True

    # -- questions ------------------------------------------------------------------------
    def ask(self, question: str, max_new_tokens: int = 16, frame_limit: Optional[int] = None, **generation) -> str:
        """Answer ``question`` about the frames so far; greedy unless told otherwise.

        ``frame_limit=n`` answers as of the ``n``-th frame: only frames ``0..n-1`` can be
        retrieved (their KV never depends on later frames: encoding is causal).
        ``generation`` takes the fields of ``GenerationSettings`` (do_sample, temperature,
        top_p, stop, eos_token_ids, seed). Returns the answer text without surrounding
        whitespace (``answer(...).text`` is the decoded text as is)."""
        return self.answer(question, max_new_tokens=max_new_tokens, frame_limit=frame_limit, **generation).text.strip()

    @_settled
    @torch.inference_mode()
    def answer(
        self, question: str, max_new_tokens: int = 16, return_logits: bool = False, frame_limit: Optional[int] = None, **generation
    ) -> Answer:
        """Like ``ask`` but returns the tokens, the per-layer selected frames and optionally
        the logits of every step."""
        start = time.perf_counter()
        settings = self.engine.generation_settings(max_new_tokens=max_new_tokens, **generation)
        step, embeds, position = self._prepare(question, settings.max_new_tokens, frame_limit=frame_limit)
        answer = self._decode(step, embeds, position, settings, return_logits, start)
        answer.seconds = time.perf_counter() - start
        return answer

    @_settled
    @torch.inference_mode()
    def loglikelihood(self, question: str, continuation: str, frame_limit: Optional[int] = None) -> Tuple[float, bool]:
        """Log-probability of ``continuation`` as the answer to ``question`` (frames retrieved
        with the question alone), and whether greedy decoding would produce it."""
        bb = self.backbone
        cont = bb.tokenize(continuation)
        if not cont:
            raise ValueError("continuation must not be empty")
        step, embeds, position = self._prepare(question, len(cont), scored=len(cont), frame_limit=frame_limit)
        embeds = torch.cat([embeds, bb.embed(cont)], dim=1)
        first = embeds.shape[1] - len(cont) - 1  # position predicting the first continuation token
        with bb.routed(step):
            hidden = self._forward(step, embeds, position)
        logits = bb.model.lm_head(hidden[0, first:-1]).float()
        logprobs = torch.log_softmax(logits, dim=-1)
        target = torch.tensor(cont, device=logits.device)
        total = float(logprobs.gather(1, target[:, None]).sum())
        return total, bool((logits.argmax(dim=-1) == target).all())

    def _prepare(self, question: str, new_tokens: int, scored: int = 0, frame_limit: Optional[int] = None):
        """Validate, encode what the tail lacks, and build the QA handler, the prefill embeddings
        (``Backbone.suffix_embeds``: the text after the video) and the first prefill position."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        if self.frames == 0:
            raise RuntimeError("no frames in this session yet: call add_frames() before ask()")
        if frame_limit is not None and frame_limit < 1:
            raise ValueError(f"frame_limit must be >= 1, got {frame_limit}")
        bb = self.backbone
        self._encode_pending(lambda: False, tail=True)  # the tail (chunks only where an earlier encode failed)
        state = self._tail or self.state
        if frame_limit is not None and frame_limit < self.frames:  # the complete blocks before the limit
            blocks = min(frame_limit // bb.frames_per_block, state.store.blocks)
        else:  # every block, an incomplete last one padded for this question
            if self._pending_frames > self._tail_frames:
                state = self._padded_state(state)
            blocks = state.store.blocks
        if blocks < 1:
            raise RuntimeError(f"no complete block of {bb.frames_per_block} frames before frame_limit={frame_limit}")
        suffix = bb.suffix_ids(question)
        embeds = bb.suffix_embeds(suffix)  # (1, offset + len(suffix), hidden)
        offset = bb.suffix_offset()
        context = state.sinks + self.config.policy().budget(blocks) * bb.block_tokens
        prefill = embeds.shape[1] + scored
        self._check_budget(context + prefill + new_tokens)
        selector = self._selector(question, blocks, state.store)
        start, end = bb.question_span(question) if self.config.query_span == "question" else (0, len(suffix))
        padded, strategy = state.padded_block, self.config.position_strategy
        step = QAStep(
            state, bb.rope, lambda *a: bb.context_positions(*a, fps=self.fps, strategy=strategy, padded=padded),
            selector, new_tokens, question_offset=offset + start, question_end=offset + end,
            fixed=getattr(selector, "fixed", None), by_index=bb.positions_use_indices(strategy),
            rows=lambda blocks, device: bb.block_rows(blocks, device, fps=self.fps, padded=padded),
        )
        return step, embeds, context

    def _padded_state(self, state: StreamState) -> StreamState:
        """``state`` plus the incomplete last block (frames past the tail), padded by
        repeating the last frame (as the vanilla processor pads), encoded into a fork for
        one question: the waiting frames still wait for their partners."""
        if not self._prefix_done:
            self._encode_prefix()
        partial = self._pending_range(self._tail_frames, self._pending_frames)
        missing = self.backbone.frames_per_block - partial.shape[0]
        pixels = torch.cat([partial, partial[-1:].expand(missing, *partial.shape[1:])])
        fork = self._fork(state)
        fork.padded_block = fork.store.blocks
        self._encode(pixels, fork)
        return fork

    def _block_embeddings(self, blocks: int) -> torch.Tensor:
        """``(blocks, E)`` external embeddings per block (frames of a block averaged and
        re-normalised; an incomplete last block padded by repeating its last frame)."""
        per_block = self.backbone.frames_per_block
        rows = self.embeddings
        if per_block == 1:
            return rows[:blocks]
        need = blocks * per_block
        if rows.shape[0] < need:
            rows = torch.cat([rows, rows[-1:].expand(need - rows.shape[0], -1)])
        pooled = rows[:need].view(blocks, per_block, -1).mean(dim=1)
        return pooled / pooled.norm(dim=-1, keepdim=True)

    def _selector(self, question: str, blocks: int, store):
        """(layer, question queries (Hq, T, D)) -> indices among the first ``blocks`` blocks."""
        cfg = self.config
        policy = cfg.policy()

        def internal(layer: int, queries: torch.Tensor) -> torch.Tensor:
            summaries = store.summaries(layer)[:blocks]
            return frame_scores(queries.to(summaries.device), summaries, cfg.score, cfg.query_pool)

        def external_scores() -> torch.Tensor:
            rows = self._block_embeddings(blocks)
            return rows @ self.engine.embedder.embed_text(question).to(rows.device)

        if cfg.retrieval == "external":
            chosen = select(external_scores(), policy)

            def same_for_all(layer: int, queries: torch.Tensor) -> torch.Tensor:
                return chosen

            same_for_all.fixed = chosen  # every layer's blocks fetched in one batched read
            return same_for_all
        if cfg.retrieval == "internal":
            def per_layer(layer: int, queries: torch.Tensor) -> torch.Tensor:
                return select(internal(layer, queries), policy)
        else:
            external = external_scores()

            def per_layer(layer: int, queries: torch.Tensor) -> torch.Tensor:
                return select(fuse(internal(layer, queries), external, cfg.hybrid_rule, cfg.hybrid_alpha), policy)
        if cfg.layer_frames == "own":
            return per_layer
        first: List[torch.Tensor] = []

        def from_first_layer(layer: int, queries: torch.Tensor) -> torch.Tensor:
            if not first:  # the first layer's prefill runs first
                first.append(per_layer(layer, queries))
            return first[0]

        return from_first_layer

    def _check_budget(self, tokens: int) -> None:
        budget = self.config.qa_budget_tokens
        if budget is not None and tokens > budget:
            raise ValueError(f"question needs {tokens} context tokens, over the QA budget of {budget}")

    def _forward(self, step: QAStep, embeds: torch.Tensor, position: int) -> torch.Tensor:
        """``(1, T, hidden)`` last hidden states of ``embeds`` (call inside ``routed(step)``).
        The positions passed to the model are nominal: the QA handler rotates pre-RoPE
        queries and keys at each layer's own context positions."""
        bb = self.backbone
        positions = bb.text_positions(position, embeds.shape[1], embeds.device)
        return bb.text_model(inputs_embeds=embeds, position_ids=bb.position_ids(positions), use_cache=False).last_hidden_state

    def _decode(self, step: QAStep, embeds, position: int, settings: GenerationSettings, return_logits: bool, start: float) -> Answer:
        bb = self.backbone
        generator = None
        if settings.do_sample and settings.seed is not None:
            generator = torch.Generator().manual_seed(settings.seed)
        tokens: List[int] = []
        all_logits: List[torch.Tensor] = []
        text = ""
        with bb.routed(step):
            for i in range(settings.max_new_tokens):
                hidden = self._forward(step, embeds, position)
                logits = bb.model.lm_head(hidden[:, -1]).float()[0]
                if return_logits:
                    all_logits.append(logits.cpu())
                token = next_token(logits, settings, generator)
                if i == 0:
                    first = time.perf_counter() - start
                if token in settings.eos_token_ids:
                    break
                tokens.append(token)
                if settings.stop:
                    text, stopped = cut_at_stop(bb.tokenizer.decode(tokens, skip_special_tokens=True), settings.stop)
                    if stopped:
                        break
                position += embeds.shape[1]
                step.decoding = True
                embeds = bb.embed([token])
        if not settings.stop:
            text = bb.tokenizer.decode(tokens, skip_special_tokens=True)
        return Answer(
            text=text, token_ids=tokens, selected=step.selected, logits=all_logits, context_tokens=position,
            first_token_seconds=first,
        )

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the background encoder (adding what it was given) and release the stores
        (the disk tier removes its files)."""
        try:
            self.stop()
        finally:
            with self._lock:
                self._drop_tail()
                self.state.store.close()

    def __enter__(self) -> "ReKVSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @_settled
    def save(self, folder: str, **meta) -> None:
        """Persist the encoded stream to ``folder`` (atomic; see ``lmms_rekv.storage.persist``)."""
        from lmms_rekv.storage.persist import save_session

        save_session(self, folder, **meta)

    # -- accounting -----------------------------------------------------------------------
    def stats(self) -> dict:
        """Sizes of this stream: frames, tokens and bytes per tier.

        Frames received (``frames``) = ``encoded_frames`` (committed to the block store) +
        ``provisional_frames`` (encoded into the provisional tail, which questions use; encoded
        again with their chunk once it is complete) + ``waiting_frames`` (not encoded yet: an
        odd frame waiting for its block partner, or frames queued for the background encoder).
        ``pending_frames`` = provisional + those waiting in the session (not yet committed).

        ``device_bytes`` is every byte the session holds on the model's device (allocated):
        ``device_kv_bytes`` (KV in use: sinks + window, plus the stored frames on the
        ``device`` tier; bounded once the window is full on the other tiers) + the arenas'
        spare capacity on the ``device`` tier + ``summary_device_bytes`` (the fp32 per-block retrieval
        summaries, ``summary_bytes_per_block`` each, growing with the stream in doubling
        steps) + ``pending_device_bytes`` (preprocessed frames waiting for a chunk) +
        ``tail_device_bytes`` (the provisional tail: its window copy, summaries and, on the
        ``device`` tier, its blocks; at most one window + one chunk) +
        ``embedding_device_bytes`` (external retrieval). With ``summary_tier="cpu"`` the
        summaries and embeddings are in host RAM instead (``index_host_bytes``) and
        ``device_bytes`` stays flat however long the stream. Bytes are counted by tier (on a
        CPU-only machine the "device" is the CPU too). ``blocks`` count stored blocks (a block
        is ``frames_per_block`` frames: 1 on LLaVA-OV, 2 on Qwen); ``kv_bytes_per_block`` is
        one block's KV and ``kv_bytes_per_frame`` a frame's share of it (KV per hour =
        ``kv_bytes_per_frame`` x frames per second x 3600); likewise ``summary_bytes_per_*``."""
        st, store = self.state, self.state.store
        backend = store.backend
        device = self.engine.device
        on_device = self.config.offload == "device"
        ram = getattr(backend, "ram_bytes", 0 if on_device else store.used_bytes)
        kv_device = st.device_bytes() + (store.used_bytes if on_device else 0)
        arena_slack = store.reserved_bytes - store.used_bytes if on_device else 0
        pending = sum(p.numel() * p.element_size() for p in self._pending if p.device == device)
        index_on_device = self._index_on_device
        emb = self._embeddings
        emb_bytes = 0 if emb is None else emb.allocated_bytes
        emb_device = emb_bytes if index_on_device else 0
        summaries = store.summary_allocated_bytes if index_on_device else 0
        tail = self._tail_device_bytes()
        per_block = self.backbone.frames_per_block  # frames per stored block (2 on Qwen: a temporal patch)
        frames, encoded = self.frames, store.blocks * per_block
        return {
            "frames": frames,
            "encoded_frames": encoded,
            "provisional_frames": self._tail_frames,
            "waiting_frames": frames - encoded - self._tail_frames,
            "blocks": store.blocks,
            "pending_frames": self._pending_frames,
            "tokens": st.stream_tokens,
            "sink_tokens": st.sinks,
            "window_tokens": st.window_len,
            "device_bytes": kv_device + arena_slack + summaries + pending + tail + emb_device,
            "device_kv_bytes": kv_device,
            "summary_device_bytes": summaries,
            "index_host_bytes": 0 if index_on_device else store.summary_allocated_bytes + emb_bytes,
            "summary_bytes_per_block": store.summary_bytes_per_frame,
            "summary_bytes_per_frame": store.summary_bytes_per_frame // per_block,
            "pending_device_bytes": pending,
            "tail_frames": self._tail_frames,
            "tail_device_bytes": tail,
            "embedding_device_bytes": emb_device,
            "cpu_bytes": ram,
            "cpu_reserved_bytes": 0 if on_device else store.reserved_bytes,
            "summary_bytes": store.summary_bytes,
            "disk_bytes": getattr(backend, "disk_bytes", 0),
            "embedding_bytes": 0 if self._embeddings is None else self._embeddings.nbytes,
            "kv_bytes_per_block": store.bytes_per_frame,
            "kv_bytes_per_frame": store.bytes_per_frame // per_block,  # a frame's share (K and V: always even); GiB/h = this x fps x 3600
        }

    def _tail_device_bytes(self) -> int:
        tail = self._tail
        if tail is None:
            return 0
        extra = tail.store.extra
        window = sum(t.numel() * t.element_size() for t in (*tail.win_k, *tail.win_v) if t.device == self.engine.device)
        blocks = extra.reserved_bytes if self.config.offload == "device" else 0
        return window + blocks + (extra.summary_allocated_bytes if self._index_on_device else 0)
