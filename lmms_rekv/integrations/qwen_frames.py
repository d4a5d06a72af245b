"""Frames as lmms-eval's ``qwen2_5_vl`` gets them. ``--model qwen2_5_vl`` resolves to its chat
class (``lmms_eval/models/chat/qwen2_5_vl.py``), which reads a video through qwen-vl-utils
(``fetch_video``: frame sampling and ``smart_resize`` within the pixel bounds) with either
``fps`` (when given) or ``nframes`` = ``min(max_num_frames, frames in the file)`` floored to an
even count (the count probed with decord, as it does), and passes the video metadata to the
processor: positions follow the metadata's sampled frame rate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch

from lmms_rekv.integrations.streams import Sampling
from lmms_rekv.io.deadline import with_deadline


def _nframes(path: str, max_num_frames: int) -> int:
    """lmms-eval's frame count for a video: ``max_num_frames`` capped by the file's frames
    (decord's count), floored to an even number, at least 2."""
    try:
        import decord

        total = len(decord.VideoReader(path))
    except Exception:  # lmms-eval falls back to max_num_frames when the probe fails
        return max_num_frames
    return max(2, (min(max_num_frames, total) // 2) * 2)


def qwen_vl_utils_frames(path: str, min_pixels: int, max_pixels: int, max_num_frames: int,
                         fps: Optional[float] = None) -> Tuple[np.ndarray, List[float], float]:
    """``(frames uint8 (N, H, W, 3), their times in seconds, the sampled frame rate the
    processor derives from the metadata)`` of ``path`` as lmms-eval's ``qwen2_5_vl`` reads them."""
    try:
        from qwen_vl_utils import fetch_video
        from transformers.video_utils import VideoMetadata
    except ImportError as exc:  # a missing optional dependency, not a bad document
        raise ImportError("lmms-eval's qwen2_5_vl arguments read video through qwen-vl-utils: pip install qwen-vl-utils decord") from exc
    element = {"type": "video", "video": path, "max_pixels": max_pixels, "min_pixels": min_pixels}
    element.update({"fps": fps} if fps is not None else {"nframes": _nframes(path, max_num_frames)})
    video, meta = fetch_video(element, image_patch_size=14, return_video_metadata=True)
    frames = video.round().clamp(0, 255).to(dtype=torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    metadata = VideoMetadata(**{k: meta[k] for k in ("total_num_frames", "fps", "frames_indices") if k in meta})
    rate = float(meta.get("fps") or 0) or 1.0
    times = [float(i) / rate for i in (meta.get("frames_indices") or range(len(frames)))]
    return frames, times, float(metadata.sampled_fps)


@dataclass
class QwenSampling(Sampling):
    """``Sampling`` through qwen-vl-utils (see the module docstring); every file is its own
    stream, positioned at the sampled rate of its metadata."""

    min_pixels: int = 0
    max_pixels: int = 0
    max_num_frames: int = 32
    qwen_fps: Optional[float] = None  # lmms-eval's ``fps`` model arg (None: ``nframes``)
    rate: Optional[float] = field(default=None, init=False)  # the sampled frame rate of the file read last

    def frames(self, path: str, start: float) -> Iterator[Tuple[float, np.ndarray]]:
        if start:
            raise ValueError("a start time (#t=START,END) is not supported with lmms-eval's qwen2_5_vl frame sampling")

        def read():
            frames, times, rate = qwen_vl_utils_frames(path, self.min_pixels, self.max_pixels, self.max_num_frames, self.qwen_fps)
            self.rate = rate
            yield from zip(times, frames)

        return with_deadline(read, self.doc_timeout, f"reading and encoding {path}")

    def sampled_fps(self, times: List[float]) -> float:
        return self.rate if self.rate is not None else self.fps

    def count(self, path: str, start: float) -> Optional[int]:
        return None
