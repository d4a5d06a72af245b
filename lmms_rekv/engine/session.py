"""`ReKVSession`: one video stream -- add frames as they arrive, ask questions any time.

A session is composed of parts that own their state: a `StreamWriter` (frames in, the chunk
grid, the provisional tail, the stored KV), a `Feeder` (the background encoder feeding the
writer) and an `Answerer` (questions, from a read-only view of the writer's stream);
``stats`` is a function of the writer. The session holds them together, orders the calls
(questions wait for the frames added before them) and keeps the public API."""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from typing import TYPE_CHECKING, Any, Dict, Iterator, Optional, Protocol, Sequence, Tuple

import torch

from ..io.preprocess import as_frames
from ..layout import StreamLayout
from .answering import Answer, Answerer  # noqa: F401  (Answer: part of this module's API)
from .encoder import StreamState
from .feeding import Feeder
from .generation import GenerationSettings
from .statistics import StreamStats, stream_stats
from .writer import StreamWriter

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


class StreamBackboneAlias:
    """What the deprecated ``ReKVSession.backbone`` gives: the family adapter, read through, with
    this stream's ``frame_size``, ``grid`` and ``block_tokens`` (its ``StreamLayout``'s)."""

    def __init__(self, family, layout: StreamLayout) -> None:
        self.family, self.layout = family, layout

    def __getattr__(self, name: str):
        return getattr(self.layout if name in ("frame_size", "grid", "block_tokens") else self.family, name)


def settled(method):
    """Run ``method`` once the background encoder (if any) has added every frame submitted
    before the call, then under the stream's lock."""

    @functools.wraps(method)
    def settled(self, *args, **kwargs):
        self.wait()
        with self.writer.lock:
            return method(self, *args, **kwargs)

    return settled


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
        self.engine, self.config = engine, engine.config
        self.expected_frames = frames  # how many frames the stream will have, when known (Qwen3-VL's clip budget)
        layout = engine.backbone.layout(frame_size=frame_size, fps=fps, frame_times=frame_times)
        engine.backbone.check_stream(layout, self.config.position_strategy)
        self.writer = StreamWriter(engine, layout, frames)
        self.feeder = Feeder(self.writer, max_queued_frames=4 * self.config.chunk_frames)
        self.answerer = Answerer(engine, self.writer.view, lambda: self.frames)
        self.saved_meta: dict = {}  # what ``save`` stored beside the stream (reopened sessions)

    # -- the stream -----------------------------------------------------------------------
    @property
    def layout(self) -> StreamLayout:
        """This stream's frame size, token grid, fps and frame times (``lmms_rekv.layout.StreamLayout``;
        Qwen families fix the size at the first frame)."""
        return self.writer.layout

    @property
    def fps(self) -> Optional[float]:
        """The rate the stream's frames were sampled at (None: not given)."""
        return self.layout.fps

    @property
    def frame_times(self) -> Optional[Tuple[float, ...]]:
        """The seconds each frame was taken at, when given."""
        return self.layout.frame_times

    @property
    def family(self):
        """The loaded model's family adapter (``patches.base.Backbone``; the same for every stream)."""
        return self.writer.family

    @property
    def backbone(self) -> "StreamBackboneAlias":
        """Deprecated: the family adapter is ``family``, this stream's frame size ``layout``."""
        warnings.warn("ReKVSession.backbone is deprecated: the family adapter is session.family and this stream's "
                      "frame size, grid, fps and frame times are session.layout", DeprecationWarning, stacklevel=2)
        return StreamBackboneAlias(self.family, self.layout)

    @property
    def state(self) -> StreamState:
        """The committed stream: sinks, window and block store (read it; the writer owns it)."""
        return self.writer.state

    @property
    def frames(self) -> int:
        """Frames added so far (committed, in the incomplete last chunk, or still queued for
        the background encoder)."""
        return self.writer.held_frames + self.feeder.queued_frames

    @property
    def embeddings(self) -> Optional[torch.Tensor]:
        """``(frames, E)`` normalised frame embeddings (external/hybrid retrieval), else None."""
        return self.writer.embeddings

    def add_frames(self, frames, block: bool = True) -> None:
        """Append frames (uint8 ``(N, H, W, 3)``, numpy or torch, time order) to the stream.

        Complete chunks of ``chunk_frames`` are committed at once; with ``eager`` the rest
        is encoded into the provisional tail before the call returns, so a question right
        after a burst encodes nothing. ``block=False`` hands the frames to the session's
        background encoder (started on first use, see ``start``) and returns at once; so
        does every call while it runs, in order. Frames are checked in the caller's thread."""
        frames = as_frames(frames)
        if not self.feeder.running and block:
            self.writer.add([frames])
        else:
            self.feeder.submit(frames, block)

    @settled
    def flush(self) -> None:
        """Commit the incomplete last chunk (its whole blocks) now, e.g. at the end of a
        video; see ``StreamWriter.flush``."""
        self.writer.flush()

    # -- background encoding --------------------------------------------------------------
    def start(self) -> "ReKVSession":
        """Start the background encoder: from now on ``add_frames`` queues frames and a
        thread encodes them while the caller keeps feeding (``add_frames(block=True)``
        still waits for its own frames). Questions wait for every frame added before them.
        At most ``4 * chunk_frames`` frames wait in its queue: beyond that ``add_frames``
        blocks until there is room (a source faster than the encoder is slowed down).
        Returns the session (``with session.start(): ...`` stops and closes it at the end)."""
        self.feeder.start()
        return self

    def wait(self) -> None:
        """Block until the background encoder (if running) has added every frame submitted
        so far; raises a failure it met."""
        self.feeder.wait()

    def stop(self) -> None:
        """Encode what is queued and end the background encoder; raises a failure it met."""
        self.feeder.stop()

    # -- questions ------------------------------------------------------------------------
    def ask(self, question: str, max_new_tokens: int = 16, frame_limit: Optional[int] = None, **generation) -> str:
        """Answer ``question`` about the frames so far; greedy unless told otherwise.

        ``frame_limit=n`` answers as of the ``n``-th frame: only frames ``0..n-1`` can be
        retrieved (their KV never depends on later frames: encoding is causal).
        ``generation`` takes the fields of ``GenerationSettings`` (do_sample, temperature,
        top_p, stop, eos_token_ids, seed). Returns the answer text without surrounding
        whitespace (``answer(...).text`` is the decoded text as is)."""
        return self.answer(question, max_new_tokens=max_new_tokens, frame_limit=frame_limit, **generation).text.strip()

    @settled
    def answer(self, question: str, max_new_tokens: int = 16, return_logits: bool = False,
               frame_limit: Optional[int] = None, **generation) -> Answer:
        """Like ``ask`` but returns the tokens, the per-layer selected frames and optionally
        the logits of every step."""
        return self.answerer.answer(question, max_new_tokens, return_logits, frame_limit, **generation)

    @settled
    def loglikelihood(self, question: str, continuation: str, frame_limit: Optional[int] = None) -> Tuple[float, bool]:
        """Log-probability of ``continuation`` as the answer to ``question`` (frames retrieved
        with the question alone), and whether greedy decoding would produce it."""
        return self.answerer.loglikelihood(question, continuation, frame_limit)

    @contextlib.contextmanager
    def question_settings(self, **changes) -> Iterator["ReKVSession"]:
        """Question-time settings (``topk_frames``, ``score``, ``retrieval``, ...) changed for the
        questions asked inside the ``with`` block, restored after it; the stream is untouched::

            with session.question_settings(topk_frames=8, recent_frames=0):
                session.ask("...")
        """
        saved = self.answerer.config
        self.answerer.config = saved.replace(**changes)
        try:
            yield self
        finally:
            self.answerer.config = saved

    # -- sizes, saving, lifetime ----------------------------------------------------------
    def stats(self) -> StreamStats:
        """Sizes of this stream: frames, tokens and bytes per tier (every field is described
        in ``lmms_rekv.engine.statistics.stream_stats``)."""
        return stream_stats(self.writer, self.frames)

    @settled
    def save(self, folder: str, **meta) -> None:
        """Persist the encoded stream to ``folder``, replacing it atomically (``storage.persist``):
        the committed stream as stored and the frames of its incomplete last chunk as pixels.
        Saving changes nothing: a reopened session (``ReKV.open_session``) goes on exactly as
        this one would; ``flush`` first to store them encoded, e.g. at the end of a video.
        ``meta`` (JSON) comes back as ``saved_meta``."""
        from lmms_rekv.storage.persist import write_entry

        info = {"stream_tokens": self.state.stream_tokens, "kv_quant": self.config.kv_quant, "fps": self.fps, "meta": meta,
                "frame_size": list(self.layout.frame_size or []) or None,
                "frame_times": None if self.frame_times is None else list(self.frame_times)}
        write_entry(folder, self.state.store, self.export_state(), info)

    def export_state(self) -> Dict[str, torch.Tensor]:
        """Everything but the stored blocks, as CPU tensors (see ``StreamWriter.export_state``)."""
        return self.writer.export_state()

    def restore_state(self, tensors: Dict[str, torch.Tensor], stream_tokens: int) -> None:
        """Take back what ``export_state`` gave (see ``StreamWriter.restore_state``)."""
        self.writer.restore_state(tensors, stream_tokens)

    def close(self) -> None:
        """Stop the background encoder (adding what it was given) and release the stores
        (the disk tier removes its files)."""
        try:
            self.stop()
        finally:
            self.writer.close()

    def __enter__(self) -> "ReKVSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
