"""`StreamWriter`: the part of a session that owns the stream -- frames in, committed on the
chunk grid, the incomplete last chunk encoded eagerly into a provisional tail, the per-frame
external embeddings, and the device state (sinks, window, block store).

Everything else reads it through ``view`` (a read-only `StreamView` for one question),
``export_state`` and the byte counters; nothing outside calls its underscore names."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

import torch

from ..layout import StreamLayout
from ..retrieval.embedder import block_embeddings
from ..storage.store import BlockStore, GrowingRows, make_store
from .encoder import StreamState, encode_blocks, encode_sinks
from .pending import PendingFrames, ProvisionalTail

if TYPE_CHECKING:
    from ..config import ReKVConfig

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class StreamView:
    """What one question reads of the stream: the state to answer from (the committed stream,
    or a fork with the provisional tail / a padded last block), how many of its blocks may be
    retrieved, the family adapter and the stream's layout (a padded last block included)."""

    state: StreamState
    blocks: int
    family: Any  # lmms_rekv.patches.base.Backbone: the loaded model's family adapter
    layout: StreamLayout  # this stream's, ``padded`` as ``state``'s
    block_embeddings: Callable[[int], torch.Tensor]  # blocks -> (blocks, E) external embeddings


class StreamStores:
    """Makes the block stores of one stream: its tier, block layout and index device; a fork's
    small store of its own (``fork``)."""

    def __init__(self, engine, layout: StreamLayout) -> None:
        self.engine, self.layout, self.config = engine, layout, engine.config

    @property
    def index_device(self) -> torch.device:
        """Where the retrieval index (summaries, embeddings) lives: the model's device with
        ``summary_tier="device"``, else host RAM."""
        return self.engine.device if self.config.summary_tier == "device" else torch.device("cpu")

    def new(self, offload: Optional[str] = None, capacity: int = 64, reducer=None) -> BlockStore:
        """An empty block store on the ``offload`` tier (default: the configured one) with this
        stream's block layout (``reducer``: the token reducer to continue, for a fork)."""
        layout, engine = self.layout, self.engine
        return make_store(self.config.storage_settings, offload or self.config.offload, engine.backbone.kv_shape(),
                          layout.block_tokens, engine.dtype, engine.device, self.index_device, capacity=capacity,
                          summary_tokens=layout.summary_tokens, reducer=reducer, keep_slots=engine.backbone.positions_by_slot)

    def fork(self, state: StreamState) -> StreamState:
        """``state`` followed by a small store of its own (``StreamState.fork``; the disk tier's
        fork stays in RAM)."""
        tier = "cpu" if self.config.offload == "disk" else self.config.offload
        reducer = state.store.reducer
        return state.fork(self.new(tier, 1, reducer=None if reducer is None else reducer.fork()))


class StreamWriter:
    """Frames in, KV out: owns the stream state, the pending frames, the tail and the chunk grid.

    Call its mutating methods holding ``lock`` (the session does)."""

    def __init__(self, engine, layout: StreamLayout, expected_frames: Optional[int]) -> None:
        self.engine, self.family, self.layout = engine, engine.backbone, layout
        self.config: "ReKVConfig" = engine.config
        self.expected_frames = expected_frames
        self.lock = threading.RLock()
        self.stores = StreamStores(engine, layout)
        self.state = StreamState(store=self.stores.new(), window=self.config.window_tokens)
        self.embedding_rows: Optional[GrowingRows] = None  # external embeddings (read them; the writer appends)
        self._pending = PendingFrames()
        self._tail = ProvisionalTail()
        self._prefix_done = False

    # -- counts ---------------------------------------------------------------------------
    @property
    def held_frames(self) -> int:
        """Frames in the stream: stored blocks' frames plus the pending ones."""
        return self.state.store.blocks * self.family.frames_per_block + self._pending.count

    @property
    def embeddings(self) -> Optional[torch.Tensor]:
        """``(frames, E)`` normalised frame embeddings (external/hybrid retrieval), else None."""
        return None if self.embedding_rows is None else self.embedding_rows.view()

    @property
    def pending(self) -> PendingFrames:
        """The preprocessed frames not committed yet (read them; for sizes)."""
        return self._pending

    @property
    def tail(self) -> ProvisionalTail:
        """The provisional tail (read it; questions use it through ``view``)."""
        return self._tail

    # -- frames in ------------------------------------------------------------------------
    def add(self, batches: Sequence[torch.Tensor], more_waiting: Callable[[], bool] = lambda: False) -> None:
        """Preprocess ``batches`` of checked uint8 ``(N, H, W, 3)`` frames (``as_frames``), commit
        complete chunks and (``eager``, when no more frames wait) extend the provisional tail."""
        with self.lock:
            self._add(list(batches), more_waiting)

    def _add(self, batches: List[torch.Tensor], more_waiting) -> None:
        frames = torch.cat(batches) if len(batches) > 1 else batches[0]
        if self.layout.from_frames:
            self._size_from(frames)
        pixels = self.family.preprocess(frames, self.layout)
        if self.config.uses_embeddings:
            self._append_embeddings(self.engine.embedder.embed_frames(frames))
        self._pending.append(pixels)
        try:
            self.encode_pending(more_waiting)
        except Exception as exc:  # e.g. a full disk: nothing committed, the frames wait
            exc.add_note(f"lmms-rekv: the session is unchanged and {self._pending.count} added frames wait to be "
                         "encoded by the next add_frames, flush or question")
            raise

    def _size_from(self, frames: torch.Tensor) -> None:
        """Fix the stream's frame size from its first frames (``(N, H, W, 3)``): the size the
        family's processor gives this video. Later frames of any size are resized to it."""
        height, width = int(frames.shape[1]), int(frames.shape[2])
        layout = self.family.fit(self.layout, height, width, self.expected_frames)
        if layout != self.layout:  # nothing is stored yet: the store is made again at this size
            self.state.store.close()
            self.layout, self.stores = layout, StreamStores(self.engine, layout)
            self.state = StreamState(store=self.stores.new(), window=self.config.window_tokens)
        logger.debug("stream frames %dx%d -> %s", height, width, layout.frame_size)

    def _append_embeddings(self, embeddings: torch.Tensor) -> None:
        if self.embedding_rows is None:
            self.embedding_rows = GrowingRows(embeddings.shape[1], self.stores.index_device)
        self.embedding_rows.append(embeddings)

    def encode_pending(self, more_waiting: Callable[[], bool] = lambda: False, tail: Optional[bool] = None) -> None:
        """Commit the complete chunks among the pending frames, then (``tail``, default
        ``eager``; when no more frames are waiting) extend the provisional tail. A chunk
        leaves the pending frames only once it is stored, so a failure (full disk, out of
        memory) loses nothing."""
        per_block = self.family.frames_per_block
        chunk = -(-self.config.chunk_frames // per_block) * per_block  # whole blocks
        while self._pending.count >= chunk:
            self.encode(self._pending.range(0, chunk))
            self._drop_pending(chunk)  # the tail covered frames of this chunk: dropped too
        if (self.config.eager if tail is None else tail) and not more_waiting():
            self._extend_tail()

    @torch.inference_mode()  # adopting the tail writes into stores made while encoding
    def flush(self) -> None:
        """Commit the incomplete last chunk (its whole blocks) now, e.g. at the end of a
        video; the grid of later chunks starts after it. When the tail was encoded in one
        forward it is adopted as it is (bit-identical to encoding it now), else re-encoded."""
        whole = self._pending.count - self._pending.count % self.family.frames_per_block
        if not whole:
            return
        if self._tail.adoptable(whole):
            tail = self._tail.state
            self.state.store.extend_from(tail.store.extra)
            self.state.win_k, self.state.win_v = tail.win_k, tail.win_v
            self.state.stream_tokens = tail.stream_tokens
            self._drop_pending(whole)
        else:
            self._tail.drop()
            self.encode(self._pending.range(0, whole))
            self._drop_pending(whole)

    def _drop_pending(self, n: int) -> None:
        """Forget the first ``n`` pending frames (now stored) and the tail that covered them."""
        self._pending.drop(n)
        self._tail.drop()

    def _extend_tail(self) -> None:
        """Encode the pending whole blocks the provisional tail does not cover yet."""
        whole = self._pending.count - self._pending.count % self.family.frames_per_block
        if whole <= self._tail.frames:
            return
        self._encode_prefix()
        fork = self._tail.state or self.stores.fork(self.state)
        try:
            self.encode(self._pending.range(self._tail.frames, whole), fork)
        except BaseException:
            if fork is not self._tail.state:  # a new fork: nothing of it is kept
                fork.store.close()
            raise
        self._tail.extended(fork, whole)

    # -- encoding -------------------------------------------------------------------------
    def encode(self, pixels: torch.Tensor, state: Optional[StreamState] = None) -> None:
        """Encode whole blocks of preprocessed ``pixels`` ``(N, 3, S, S)`` into ``state`` (default:
        the stream; ``encoder.encode_blocks``), the sink tokens first when not done yet."""
        self._encode_prefix()
        encode_blocks(self.engine, self.layout, pixels, state or self.state, self.config.query_block_tokens)

    def _encode_prefix(self) -> None:
        if not self._prefix_done:
            encode_sinks(self.engine, self.state)
            self._prefix_done = True

    # -- a question's view ----------------------------------------------------------------
    def view(self, frame_limit: Optional[int] = None) -> StreamView:
        """The stream as one question sees it: the tail encoded (chunks too, where an earlier
        encode failed), then the complete blocks before ``frame_limit`` or every block with an
        incomplete last one padded for this question. Leaves the stream unchanged."""
        per_block = self.family.frames_per_block
        self.encode_pending(tail=True)
        state = self._tail.state or self.state
        if frame_limit is not None and frame_limit < self.held_frames:  # the complete blocks before the limit
            blocks = min(frame_limit // per_block, state.store.blocks)
        else:  # every block, an incomplete last one padded for this question
            if self._pending.count > self._tail.frames:
                state = self._padded_state(state)
            blocks = state.store.blocks
        rows = self.embeddings
        return StreamView(state=state, blocks=blocks, family=self.family, layout=self.layout.with_padding(state.padded_block),
                          block_embeddings=lambda n: block_embeddings(rows, per_block, n))

    def _padded_state(self, state: StreamState) -> StreamState:
        """``state`` plus the incomplete last block (frames past the tail), padded by
        repeating the last frame (as the vanilla processor pads), encoded into a fork for
        one question: the waiting frames still wait for their partners."""
        self._encode_prefix()
        partial = self._pending.range(self._tail.frames, self._pending.count)
        missing = self.family.frames_per_block - partial.shape[0]
        pixels = torch.cat([partial, partial[-1:].expand(missing, *partial.shape[1:])])
        fork = self.stores.fork(state)
        fork.padded_block = fork.store.blocks
        self.encode(pixels, fork)
        return fork

    # -- export / restore -----------------------------------------------------------------
    def export_state(self) -> Dict[str, torch.Tensor]:
        """CPU tensors of everything but the stored blocks (``StreamState.export``), the external
        ``embeddings`` ``(frames, E)`` and the incomplete last chunk's preprocessed ``pending`` pixels."""
        tensors = self.state.export()
        if self.embeddings is not None:
            tensors["embeddings"] = self.embeddings.contiguous().cpu()
        if len(self._pending):
            tensors["pending"] = self._pending.all().contiguous().cpu()
        return tensors

    def restore_state(self, tensors: Dict[str, torch.Tensor], stream_tokens: int) -> None:
        """Take back what ``export_state`` gave (the blocks are already in the store) and the
        stream's token count: the stream goes on exactly as the saved one would."""
        self.state.restore(tensors, stream_tokens)
        if "embeddings" in tensors:
            self._append_embeddings(tensors["embeddings"])
        if "pending" in tensors:
            self._pending = PendingFrames(tensors["pending"])
        self._prefix_done = True

    def close(self) -> None:
        """Release the tail and the block store (the disk tier removes its files)."""
        with self.lock:
            self._tail.drop()
            self.state.store.close()
