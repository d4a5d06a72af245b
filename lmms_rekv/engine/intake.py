"""Frame intake of a session: frames in, committed on the chunk grid, the incomplete last chunk
encoded eagerly into a provisional tail (a mixin of ``ReKVSession``: it uses the session's
``engine``, ``backbone``, ``config``, ``state`` and lock)."""

from __future__ import annotations

import logging
from typing import List, Optional

import torch

from ..io.preprocess import as_frames
from ..storage.store import GrowingRows, OverlayStore
from .encoder import ChunkStep, PrefixStep, StreamState
from .feeding import settled

logger = logging.getLogger(__name__)


class FrameIntake:
    """Frames in: the chunk grid, the provisional tail, the stream prefix, external embeddings."""

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

    @settled
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
        reducer = getattr(state.store, "reducer", None)
        extra = self._new_store(tier, 1, reducer=None if reducer is None else reducer.fork())
        return StreamState(store=OverlayStore(state.store, extra), window=state.window,
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
