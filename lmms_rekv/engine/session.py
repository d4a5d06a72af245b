"""`ReKVSession`: one video stream -- add frames as they arrive, ask questions any time."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, List, Optional, Protocol, Sequence, Tuple

import torch

from ..storage.reduce import make_reducer
from ..storage.store import BlockStore, GrowingRows
from .answering import Answer, QuestionAnswering  # noqa: F401  (Answer: part of this module's API)
from .background import BackgroundEncoder
from .encoder import StreamState
from .feeding import BackgroundFeeding
from .generation import GenerationSettings
from .intake import FrameIntake
from .persistence import Persistence
from .statistics import Statistics

if TYPE_CHECKING:
    from ..config import ReKVConfig

logger = logging.getLogger(__name__)


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


class ReKVSession(FrameIntake, BackgroundFeeding, QuestionAnswering, Persistence, Statistics):
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

    def _new_store(self, offload: str, capacity: int = 64, reducer=None) -> BlockStore:
        """An empty block store on the ``offload`` tier with this stream's block layout
        (``reducer``: the token reducer to continue, for a fork; default: a new one when
        ``token_reduction`` is set)."""
        engine, cfg = self.engine, self.config
        if reducer is None and cfg.token_reduction is not None:
            tokens = self.backbone.block_tokens
            reducer = make_reducer(cfg.token_reduction, tokens, cfg.stored_tokens(tokens))
        layers, kv_heads, head_dim = self.backbone.kv_shape()
        storage = engine.device if offload == "device" else torch.device("cpu")
        factory = None
        if offload == "disk":
            from ..storage.backends import DiskBackend

            factory = lambda fields: DiskBackend(layers, fields, cfg.offload_dir, cfg.ram_budget_bytes)  # noqa: E731
        return BlockStore(
            layers, self.backbone.block_tokens, kv_heads, head_dim, engine.dtype, storage, engine.device,
            initial_capacity=capacity, kv_quant=cfg.kv_quant, backend_factory=factory, summary_device=self._index_device,
            summary_tokens=self.backbone.summary_tokens, reducer=reducer,
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
