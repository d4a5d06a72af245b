"""Frames as lmms-eval's ``qwen2_5_vl`` / ``qwen3_vl`` get them. Both names resolve to chat
classes that read a video through qwen-vl-utils (``fetch_video``: frame sampling and
``smart_resize``) and pass its metadata to the processor. ``qwen2_5_vl``: ``fps`` (when given)
or ``nframes`` = ``min(max_num_frames, frames in the file)`` floored to an even count (the count
probed with decord, as it does), frames within ``min_pixels..max_pixels`` in units of 28;
positions follow the metadata's sampled frame rate. ``qwen3_vl``: ``fps`` with ``max_frames``,
or ``max_frames`` under a ``total_pixels`` clip budget, or ``nframes = max_num_frames``; units of
32; each block's timestamp is its frames' own times (``frames_indices / fps``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from lmms_rekv.integrations.qwen_args import QwenArgs
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


def video_element(path: str, args: QwenArgs) -> Dict[str, object]:
    """The qwen-vl-utils video element lmms-eval's ``args.reference`` model builds for ``path``."""
    element: Dict[str, object] = {"type": "video", "video": path, "min_pixels": args.min_pixels}
    if args.reference == "qwen2_5_vl":
        element["max_pixels"] = args.max_pixels
        element.update({"fps": args.fps} if args.fps is not None else {"nframes": _nframes(path, args.max_num_frames)})
        return element
    if args.fps is not None:  # qwen3_vl's _build_video_kwargs
        element.update(fps=args.fps, max_frames=args.max_num_frames)
    elif args.total_pixels is not None:
        element["max_frames"] = args.max_num_frames
    else:
        element["nframes"] = args.max_num_frames
    element.update({"total_pixels": args.total_pixels} if args.total_pixels is not None else {"max_pixels": args.max_pixels})
    return element


def qwen_vl_utils_frames(path: str, args: QwenArgs) -> Tuple[np.ndarray, List[float], float]:
    """``(frames uint8 (N, H, W, 3), their times in seconds, the sampled frame rate the
    processor derives from the metadata)`` of ``path`` as lmms-eval's ``args.reference`` reads
    them (times: ``frames_indices / fps`` of the metadata, as the Qwen3-VL processor computes them)."""
    try:
        from qwen_vl_utils import fetch_video
        from transformers.video_utils import VideoMetadata
    except ImportError as exc:  # a missing optional dependency, not a bad document
        raise ImportError("lmms-eval's Qwen arguments read video through qwen-vl-utils: pip install qwen-vl-utils decord") from exc
    patch = 16 if args.reference == "qwen3_vl" else 14
    video, meta = fetch_video(video_element(path, args), image_patch_size=patch, return_video_metadata=True)
    frames = video.round().clamp(0, 255).to(dtype=torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    metadata = VideoMetadata(**{k: meta[k] for k in ("total_num_frames", "fps", "frames_indices") if k in meta})
    rate = float(meta.get("fps") or 0) or 1.0
    times = [i / rate for i in (meta.get("frames_indices") or range(len(frames)))]
    return frames, times, float(metadata.sampled_fps)


@dataclass
class QwenSampling(Sampling):
    """``Sampling`` through qwen-vl-utils (see the module docstring); every file is its own
    stream, positioned at the sampled rate of its metadata, its frames at their own times."""

    args: QwenArgs = field(default_factory=QwenArgs)
    rate: Optional[float] = field(default=None, init=False)  # the sampled frame rate of the file read last
    times: Optional[List[float]] = field(default=None, init=False)  # the times of its frames

    def frames(self, path: str, start: float) -> Iterator[Tuple[float, np.ndarray]]:
        if start:
            raise ValueError(f"a start time (#t=START,END) is not supported with lmms-eval's {self.args.reference} frame sampling")

        def read():
            frames, times, rate = qwen_vl_utils_frames(path, self.args)
            self.rate, self.times = rate, times
            yield from zip(times, frames)

        return with_deadline(read, self.doc_timeout, f"reading and encoding {path}")

    def session_args(self, stream_times: List[float]) -> Dict[str, object]:
        return {"fps": self.rate if self.rate is not None else self.fps, "frame_times": self.times}

    def count(self, path: str, start: float) -> Optional[int]:
        return None
