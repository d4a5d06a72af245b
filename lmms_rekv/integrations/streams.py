"""Video streams for the lmms-eval model: decode a file into a session, and recognise when
the next visual is the *same stream* cut later (or earlier), so that it extends (or limits)
the session already encoded instead of encoding from zero.

Benchmarks such as OVO-Bench hand the model one file per moment of a stream (``{id}_0.mp4``,
``{id}_1.mp4``, ... each the source cut at a later time). Two visuals are the same stream when
they start at the same second and the frames sampled from the new one begin with exactly the
frames already encoded (same timestamps; pixels equal, or within ``tolerance`` -- see
``FramePrints``). Then only the new frames are encoded (the session's KV of a frame never
depends on later frames, and its chunk grid does not depend on how frames arrive, so the
answers equal a fresh session's when the frames are equal); a new file that ends earlier
answers with a frame limit. Anything else is a fresh session.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from lmms_rekv.io.deadline import DeadlineExceeded, with_deadline
from lmms_rekv.io.video import VideoError, iter_video_timed, iter_video_uniform, sampled_frame_count

logger = logging.getLogger(__name__)

THUMB = 16  # thumbnails are THUMB x THUMB area means (3 KiB per frame in float32)
TIME_TOLERANCE = 0.01  # seconds: sampled timestamps of one stream in two files agree closer than this


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """``(THUMB, THUMB, 3)`` float32 area means of a ``(H, W, 3)`` uint8 frame."""
    h, w = frame.shape[:2]
    rows = np.linspace(0, h, THUMB + 1).astype(int)[:-1]
    cols = np.linspace(0, w, THUMB + 1).astype(int)[:-1]
    sums = np.add.reduceat(np.add.reduceat(frame.astype(np.float32), rows, axis=0), cols, axis=1)
    counts = np.diff(np.append(rows, h))[:, None, None] * np.diff(np.append(cols, w))[None, :, None]
    return sums / counts


class FramePrints:
    """What is kept of every encoded frame to recognise it in another file: a digest of its
    pixels (exact match) and, when a tolerance is used, its thumbnail. ``tolerance`` is the
    largest mean absolute difference of two thumbnails (pixel levels, 0-255) still taken as
    the same frame: re-encoding a clip changes pixels by a few levels, averaged away in the
    thumbnail, while a different scene changes it by tens."""

    def __init__(self, tolerance: float = 0.0) -> None:
        self.tolerance = float(tolerance)
        self.digests: List[bytes] = []
        self.thumbs: List[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.digests)

    @staticmethod
    def digest(frame: np.ndarray) -> bytes:
        return hashlib.blake2b(np.ascontiguousarray(frame).data, digest_size=16, person=str(frame.shape).encode()[:16]).digest()

    def add(self, frame: np.ndarray) -> None:
        self.digests.append(self.digest(frame))
        if self.tolerance > 0:
            self.thumbs.append(thumbnail(frame))

    def matches(self, index: int, frame: np.ndarray) -> bool:
        """Whether ``frame`` is the ``index``-th frame kept here."""
        if self.digest(frame) == self.digests[index]:
            return True
        if self.tolerance <= 0:
            return False
        return float(np.abs(thumbnail(frame) - self.thumbs[index]).mean()) <= self.tolerance


@dataclass
class Stream:
    """A session holding the frames of ``path`` sampled from ``start`` (times in seconds).
    ``prints`` is None for a session reopened from a cache (computed when first needed)."""

    session: object
    path: str
    start: float
    times: List[float]
    prints: Optional[FramePrints] = None
    covered: Dict[str, int] = field(default_factory=dict)  # file -> how many of the frames it holds
    shape: Optional[Tuple[int, int]] = None  # (height, width) of its first frame

    def limit(self, end: Optional[float]) -> Optional[int]:
        """The frame limit of a question asked at ``end`` seconds (None: every frame)."""
        return None if end is None else bisect.bisect_right(self.times, end + 1e-6)


@dataclass(frozen=True)
class UniformFrames:
    """lmms-eval ``llava_onevision``'s sampling: ``count`` frames at ``np.linspace`` over the
    frame count that its ``backend`` reader sees (``lmms_rekv.io.video.uniform_indices``)."""

    count: int
    backend: str = "decord"


@dataclass
class Sampling:
    """How the model samples a file and feeds a session."""

    new_session: Callable[..., object]  # new_session(fps=...)
    fps: float
    max_frames: Optional[int]
    chunk_frames: int
    doc_timeout: Optional[float]
    tolerance: float = 0.0
    #: (height, width, frame count or None) -> the frame size a stream gets, for families whose
    #: processor budgets pixels per clip (Qwen3-VL); None: the size does not depend on the count
    size_for: Optional[Callable[[int, int, Optional[int]], Tuple[int, int]]] = None
    keep_prints: bool = True  # fingerprint frames while encoding (only reuse needs them: ~3 ms per 720p frame)
    uniform: Optional[UniformFrames] = None  # llava_onevision's index rule instead of the time grid

    def count(self, path: str, start: float) -> Optional[int]:
        """How many frames will be sampled from ``path`` (only when the size depends on it)."""
        return None if self.size_for is None else sampled_frame_count(path, self.fps, self.max_frames, start)

    def frames(self, path: str, start: float) -> Iterator[Tuple[float, np.ndarray]]:
        """``(seconds, frame)`` of ``path`` within ``doc_timeout`` (a hanging decoder fails
        this document, not the run)."""
        if self.uniform is not None:
            if start:
                raise ValueError("a start time (#t=START,END) is not supported with llava_onevision's frame sampling "
                                 "(max_frames_num); give fps= for a time grid")
            read = lambda: iter_video_uniform(path, self.uniform.count, self.uniform.backend)  # noqa: E731
        else:
            read = lambda: iter_video_timed(path, self.fps, self.max_frames, start_time=start)  # noqa: E731
        return with_deadline(read, self.doc_timeout, f"reading and encoding {path}")

    def session_args(self, stream_times: List[float]) -> Dict[str, object]:
        """``new_session`` arguments for a stream whose first frames were taken at ``stream_times``."""
        return {"fps": self.sampled_fps(stream_times)}

    def sampled_fps(self, times: List[float]) -> float:
        """The rate frames were actually sampled at (``max_frames`` makes sampling uniform over
        the video): from the first frames' timestamps, else the requested rate."""
        if len(times) >= 2 and times[-1] > times[0]:
            return (len(times) - 1) / (times[-1] - times[0])
        return self.fps


class Feeder:
    """Hands decoded frames to a session one chunk of the session's grid at a time (frames
    ``[k*C, (k+1)*C)``, so no provisional tail is built between chunks); the session is
    created on the first chunk, at the rate the frames were sampled at."""

    def __init__(self, sampling: Sampling, stream: Optional[Stream] = None, frames: Optional[int] = None) -> None:
        self.sampling, self.stream, self.batch, self.frames = sampling, stream, [], frames

    def add(self, stream_times: List[float], t: float, frame: np.ndarray) -> None:
        """Collect frame ``t`` (``stream_times``: every frame of the stream so far)."""
        stream_times.append(t)
        self.batch.append(frame)
        if len(stream_times) % self.sampling.chunk_frames == 0:
            self.push(stream_times)

    def push(self, stream_times: List[float]) -> object:
        """Add the collected frames; returns the session."""
        session = self.stream.session if self.stream is not None else None
        if session is None:
            count = {} if self.frames is None else {"frames": self.frames}  # the stream's length, when its size depends on it
            session = self.sampling.new_session(**self.sampling.session_args(stream_times), **count)
            self.stream = Stream(session, "", 0.0, stream_times, shape=tuple(self.batch[0].shape[:2]))
        if self.batch:
            session.add_frames(np.stack(self.batch))
            self.batch = []
        return session


def encode(sampling: Sampling, path: str, start: float) -> Stream:
    """Decode ``path`` from ``start`` and encode every sampled frame into a new session."""
    prints, times = FramePrints(sampling.tolerance) if sampling.keep_prints else None, []
    feeder = Feeder(sampling, frames=sampling.count(path, start))
    try:
        for t, frame in sampling.frames(path, start):
            if prints is not None:
                prints.add(frame)
            feeder.add(times, t, frame)
        if not times:
            raise VideoError(f"no frames decoded from {path}")
        feeder.push(times)
    except BaseException as exc:
        if feeder.stream is not None:
            feeder.stream.session.close()
        if isinstance(exc, DeadlineExceeded):
            raise VideoError(f"{exc} (model arg doc_timeout)") from None
        raise
    stream = feeder.stream
    stream.path, stream.start, stream.times, stream.prints, stream.covered = path, start, times, prints, {path: len(times)}
    return stream


def prints_of(sampling: Sampling, stream: Stream) -> FramePrints:
    """The stream's frame prints, decoding its file once when it was reopened from a cache."""
    if stream.prints is None:
        prints = FramePrints(sampling.tolerance)
        for _, frame in sampling.frames(stream.path, stream.start):
            prints.add(frame)
            stream.shape = stream.shape or tuple(frame.shape[:2])
        stream.prints = prints
    return stream.prints


def continue_stream(sampling: Sampling, stream: Stream, path: str) -> Optional[Tuple[int, int]]:
    """Take ``path`` as ``stream`` cut at another time: when its sampled frames begin with the
    stream's frames (timestamps and prints), encode only the frames past them. Returns
    ``(frames of path, frames newly encoded)``, or None when ``path`` is another stream (the
    session is then unchanged)."""
    prints = prints_of(sampling, stream)
    if sampling.size_for is not None:  # the processor sizes a clip by its frame count: is the size unchanged?
        if sampling.size_for(*stream.shape, sampling.count(path, stream.start)) != stream.session.layout.frame_size:
            return None
    known, times, new = len(stream.times), list(stream.times), 0
    feeder = Feeder(sampling, stream)
    seen = 0
    try:
        for t, frame in sampling.frames(path, stream.start):
            if seen < known:
                if abs(t - stream.times[seen]) > TIME_TOLERANCE or not prints.matches(seen, frame):
                    return None
            else:
                prints.add(frame)
                feeder.add(times, t, frame)
                new += 1
            seen += 1
        feeder.push(times)
    except DeadlineExceeded as exc:
        raise VideoError(f"{exc} (model arg doc_timeout)") from None
    finally:
        del prints.digests[known + new:], prints.thumbs[known + new:]  # frames not encoded are forgotten
    stream.times = times
    if new:
        stream.path = path
    stream.covered[path] = seen
    return seen, new


class Streams:
    """The stream the model is answering about, reused across questions, rounds and documents
    while the visuals continue it (``reuse``), else replaced by a fresh one (``open``: a
    callable ``(path, start) -> Stream`` that may read a cache). Counts what it did."""

    def __init__(self, sampling: Sampling, open_fresh: Callable[[str, float], Stream], reuse: bool = True) -> None:
        self.sampling, self.open_fresh, self.reuse = sampling, open_fresh, reuse
        self.current: Optional[Stream] = None
        self.fresh = self.extended = self.limited = 0
        self.frames_encoded = 0  # frames encoded by extensions (fresh encodes count their own)

    def visit(self, path: str, start: float, end: Optional[float]) -> Tuple[object, Optional[int]]:
        """``(session, frame limit)`` for a question about ``path`` from ``start`` as of ``end``."""
        stream = self.current
        if stream is not None and stream.start == start and path in stream.covered:
            return stream.session, self._limit(stream, end, stream.covered[path])
        if stream is not None and self.reuse and stream.start == start:
            try:
                found = continue_stream(self.sampling, stream, path)
            except BaseException:  # the session may hold part of the new frames: not reusable
                self.close()
                raise
            if found is not None:
                seen, new = found
                self.extended += bool(new)
                self.limited += not new and seen < len(stream.times)
                self.frames_encoded += new
                return stream.session, self._limit(stream, end, seen)
        self.close()
        self.current = self.open_fresh(path, start)
        self.fresh += 1
        return self.current.session, self._limit(self.current, end, None)

    @staticmethod
    def _limit(stream: Stream, end: Optional[float], frames: Optional[int]) -> Optional[int]:
        """The frame limit for a question as of ``end`` on a file holding ``frames`` frames of
        the stream (None: all of it)."""
        limits = [x for x in (stream.limit(end), frames) if x is not None and x < len(stream.times)]
        limit = min(limits) if limits else None
        if limit == 0:
            raise ValueError(f"no frame of {stream.path} is sampled by t={end}s")
        return limit

    def close(self) -> None:
        if self.current is not None:
            self.current.session.close()
            self.current = None
