"""Video I/O with PyAV: decode at a target frame rate, and write synthetic clips for demos.

Frames are returned as uint8 ``(N, H, W, 3)`` RGB arrays, ready for ``session.add_frames``.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from typing import Iterator, List, Optional, Tuple

import numpy as np

logger = logging.getLogger(__name__)


class VideoError(RuntimeError):
    """A video that cannot be used: missing, unreadable or without frames."""


def video_duration(path: str) -> Optional[float]:
    """Duration in seconds from the container's metadata (None when unknown)."""
    import av

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / 1_000_000
    except Exception:
        return None
    return None


def _decoded(source: str) -> Iterator:
    """PyAV frames of ``source``'s first video stream; failures raise ``VideoError``."""
    import av

    try:
        container = av.open(source)
    except Exception as exc:
        raise VideoError(f"cannot open video {source}: {exc}") from exc
    try:
        if not container.streams.video:
            raise VideoError(f"no video stream in {source}")
        yield from container.decode(video=0)
    except VideoError:
        raise
    except Exception as exc:
        raise VideoError(f"cannot decode video {source}: {exc}") from exc
    finally:
        container.close()


def _rgb(frame, source: str) -> np.ndarray:
    """The frame as ``(H, W, 3)`` uint8 RGB, turned upright when the container says it is
    displayed rotated (a phone's portrait video: display matrix / ``tkhd`` rotation)."""
    try:
        array = frame.to_ndarray(format="rgb24")
    except Exception as exc:
        raise VideoError(f"cannot decode video {source}: {exc}") from exc
    turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4  # counter-clockwise quarter turns
    return np.ascontiguousarray(np.rot90(array, k=turns)) if turns else array


class _Sampler:
    """The sampling rule: keep the first frame at or after each ``start_time + k / fps``,
    never past ``end_time``, at most ``max_frames``."""

    def __init__(self, fps: float, start_time: float, end_time: Optional[float], max_frames: Optional[int]) -> None:
        self.fps, self.start, self.end, self.max_frames = fps, start_time, end_time, max_frames
        self.count, self.next_time = 0, start_time

    def offer(self, t: float) -> Optional[bool]:
        """True: keep the frame at ``t``; False: skip it; None: stop (nothing more is kept)."""
        if self.end is not None and t > self.end + 1e-6:
            return None
        if t + 1e-6 < self.next_time:
            return False
        self.count += 1
        self.next_time = self.start + self.count / self.fps
        return True

    @property
    def full(self) -> bool:
        return self.max_frames is not None and self.count >= self.max_frames


def _sampling_rate(path: str, fps: float, max_frames: Optional[int], start_time: float, end_time: Optional[float]) -> float:
    """``fps``, lowered so that ``max_frames`` frames cover the whole span when the duration is known."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if max_frames is not None:
        duration = video_duration(path)
        span = None if duration is None else (min(duration, end_time) if end_time is not None else duration) - start_time
        if span is not None and span > 0 and span * fps > max_frames:
            return max_frames / span
    return fps


def iter_video_timed(
    path: str,
    fps: float = 0.5,
    max_frames: Optional[int] = None,
    start_time: float = 0.0,
    end_time: Optional[float] = None,
) -> Iterator[Tuple[float, np.ndarray]]:
    """Yield ``(seconds, rgb frame)`` sampled at ``fps`` (the first frame at or after each
    ``start_time + k / fps``), never past ``end_time``. With ``max_frames`` and a known
    duration the rate is lowered so that at most ``max_frames`` frames cover the whole span
    (uniform sampling); the count is capped in any case."""
    if not os.path.isfile(path):
        raise VideoError(f"video not found: {path}")
    sampler = _Sampler(_sampling_rate(path, fps, max_frames, start_time, end_time), start_time, end_time, max_frames)
    for frame in _decoded(path):
        t = float(frame.time) if frame.time is not None else sampler.next_time
        keep = sampler.offer(t)
        if keep is None:
            break
        if keep:
            yield t, _rgb(frame, path)
            if sampler.full:
                break
    if sampler.count == 0:
        raise VideoError(f"no frames decoded from {path}")


def uniform_indices(path: str, count: int, backend: str = "decord") -> List[int]:
    """The frame indices lmms-eval's ``llava_onevision`` reads for ``max_frames_num=count``:
    ``np.linspace(0, total - 1, count, dtype=int)`` (first and last frame included; an index
    repeats when ``count`` exceeds the frames). ``decord``: ``total`` is the frame count its
    reader indexes (the stream's packets, counted without decoding). ``pyav``: ``total`` is the
    container's frame count, the count capped at it; every frame when that is unknown or the
    file is webm/mkv (what its reader falls back to)."""
    import av

    if not os.path.isfile(path):
        raise VideoError(f"video not found: {path}")
    if count < 1:
        raise ValueError(f"max_frames_num must be >= 1, got {count}")
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            if backend == "pyav":
                total = -1 if ("webm" in path or "mkv" in path) else int(stream.frames or 0)
            else:
                total = sum(1 for p in container.demux(stream) if p.size)
    except Exception as exc:
        raise VideoError(f"cannot read video {path}: {exc}") from exc
    if backend == "pyav" and total <= 0:
        return []  # every frame
    if total <= 0:
        raise VideoError(f"no frames in {path}")
    count = min(total, count) if backend == "pyav" else count
    return [int(i) for i in np.linspace(0, total - 1, count, dtype=int)]


def iter_video_uniform(path: str, count: int, backend: str = "decord") -> Iterator[Tuple[float, np.ndarray]]:
    """``(seconds, rgb frame)`` at ``uniform_indices(path, count, backend)`` (a repeated
    index yields its frame again), decoded with PyAV in one pass."""
    indices = uniform_indices(path, count, backend)
    wanted = Counter(indices)
    last = max(indices) if indices else None
    found = 0
    for i, frame in enumerate(_decoded(path)):
        if last is not None and i > last:
            break
        if last is None or i in wanted:
            t = float(frame.time) if frame.time is not None else float(i)
            array = _rgb(frame, path)
            for _ in range(wanted.get(i, 1)):
                found += 1
                yield t, array
    if not found:
        raise VideoError(f"no frames decoded from {path}")


def sampled_frame_count(path: str, fps: float = 0.5, max_frames: Optional[int] = None, start_time: float = 0.0,
                        end_time: Optional[float] = None) -> int:
    """How many frames ``iter_video_timed`` yields with these arguments, from the container's
    packet timestamps (demuxed, not decoded: cheap). A family whose processor budgets pixels
    per clip (Qwen3-VL) needs it before the first frame is encoded."""
    import av

    if not os.path.isfile(path):
        raise VideoError(f"video not found: {path}")
    sampler = _Sampler(_sampling_rate(path, fps, max_frames, start_time, end_time), start_time, end_time, max_frames)
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            times = sorted(float(p.pts * stream.time_base) for p in container.demux(stream) if p.pts is not None and p.size)
    except Exception as exc:
        raise VideoError(f"cannot read video {path}: {exc}") from exc
    for t in times:
        if sampler.offer(t) is None or sampler.full:
            break
    return sampler.count


def iter_video(path: str, fps: float = 0.5, max_frames: Optional[int] = None, end_time: Optional[float] = None) -> Iterator[np.ndarray]:
    """RGB frames of ``path`` sampled at ``fps`` (see ``iter_video_timed``)."""
    for _, frame in iter_video_timed(path, fps, max_frames, end_time=end_time):
        yield frame


def read_video(path: str, fps: float = 0.5, max_frames: Optional[int] = None, end_time: Optional[float] = None) -> np.ndarray:
    """All sampled frames of ``path`` as one ``(N, H, W, 3)`` uint8 array (see ``iter_video``)."""
    return np.stack(list(iter_video(path, fps, max_frames, end_time)))


def synthetic_frames(seconds: float, fps: int = 4, size: int = 96, seed: int = 0) -> np.ndarray:
    """A generated clip: a coloured square moving over a gradient that changes colour every
    few seconds. ``(seconds * fps, size, size, 3)`` uint8."""
    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * fps)))
    yy, xx = np.mgrid[0:size, 0:size]
    palette = rng.integers(40, 255, (8, 3))
    frames = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        scene = palette[(i // (3 * fps)) % len(palette)]
        base = (scene[None, None, :] * (0.5 + 0.5 * xx[..., None] / size)).astype(np.uint8)
        x0 = int((i * 3) % (size - 16))
        y0 = int((size - 16) * (0.5 + 0.4 * np.sin(i / 5)))
        base[y0 : y0 + 16, x0 : x0 + 16] = palette[(i // fps + 3) % len(palette)]
        frames[i] = base
    return frames


def write_video(path: str, frames: np.ndarray, fps: int = 4, lossless: bool = False) -> str:
    """Encode ``(N, H, W, 3)`` uint8 frames to ``path`` (H.264/mp4 when available, else MPEG-4).
    ``lossless``: decoded frames equal ``frames`` exactly (RGB H.264 at qp 0 in .mp4/.mkv;
    raw ``bgr24`` in .avi), so two files cut from one stream decode to identical frames."""
    import av

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp{os.path.splitext(path)[1]}"
    codec, pix_fmt, options = ("libx264" if "libx264" in av.codecs_available else "mpeg4"), "yuv420p", {}
    if lossless:
        raw = path.lower().endswith(".avi")
        codec, pix_fmt, options = ("rawvideo", "bgr24", {}) if raw else ("libx264rgb", "rgb24", {"qp": "0"})
    with av.open(tmp, mode="w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return path


def iter_live(source: str, fps: float, realtime: bool = False, clock=time.monotonic, sleep=time.sleep) -> Iterator[Tuple[float, np.ndarray]]:
    """Yield ``(seconds, rgb frame)`` from a live source sampled at ``fps``: a file, a named
    pipe (FIFO) or anything PyAV opens (``rtsp://``, ``http://``, ``udp://`` ...), as frames
    arrive; seconds count from the first frame. ``realtime``: pace a file at its own speed
    (the frame at ``t`` not before ``t`` seconds after the first) -- a recorded video played
    as if live."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if "://" not in source and not os.path.exists(source):
        raise VideoError(f"video source not found: {source}")
    count, origin, start = 0, None, clock()
    for frame in _decoded(source):
        t = float(frame.time) if frame.time is not None else count / fps
        origin = t if origin is None else origin
        t -= origin
        if count and t + 1e-6 < count / fps:
            continue
        if realtime:
            sleep(max(0.0, start + t - clock()))
        yield t, _rgb(frame, source)
        count += 1
    if count == 0:
        raise VideoError(f"no frames decoded from {source}")
