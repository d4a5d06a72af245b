"""Frames -> pixel values, by the rule the checkpoint was made with.

- ``CheckpointFrames``: the video processor that ships with a transformers checkpoint
  (``AutoVideoProcessor``: the class and settings its ``video_preprocessor_config.json`` /
  ``preprocessor_config.json`` name -- LLaVA-OneVision's resizes, rescales and normalizes a
  whole batch of frames at once, on the model's device). The Python API's frames get exactly
  the pixels ``LlavaOnevisionProcessor`` would give them.
- ``LlavaNextFrames``: LLaVA-NeXT's SigLIP image processor, which lmms-lab checkpoints are
  trained and evaluated with (lmms-eval's ``llava_onevision``): each frame resized by the image
  library (Pillow, bicubic, to uint8), then ``x * (1/255)`` in float64 cast to float32 and
  ``(x - mean) / std`` in float32 -- bit for bit what LLaVA-NeXT computes, without importing it.

``frame_processor(path, size)`` picks the rule a checkpoint folder asks for: ``LlavaNextFrames``
when ``lmms_rekv_frames.json`` (written by the lmms-lab conversion) says ``llava_next``, else the
checkpoint's own video processor.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence, Tuple, Union

import numpy as np
import torch

#: written beside a converted lmms-lab checkpoint: which preprocessing rule it was made with
RULE_FILE = "lmms_rekv_frames.json"
PROCESSOR_FILES = ("processor_config.json", "video_preprocessor_config.json", "preprocessor_config.json")


class CheckpointFrames:
    """The checkpoint's own transformers video processor on uint8 frames.

    ``processor``: a ``BaseVideoProcessor`` (e.g. ``LlavaOnevisionVideoProcessor``)."""

    rule = "checkpoint"

    def __init__(self, processor) -> None:
        self.processor = processor

    @classmethod
    def from_dir(cls, path: str) -> "CheckpointFrames":
        """``AutoVideoProcessor`` of a checkpoint folder; ValueError (one line) when it has no
        processor config."""
        if not any(os.path.isfile(os.path.join(path, name)) for name in PROCESSOR_FILES):
            raise ValueError(f"{path} has no {' or '.join(PROCESSOR_FILES)}: the checkpoint's processor is needed to "
                             "turn frames into pixel values")
        from transformers import AutoVideoProcessor

        return cls(AutoVideoProcessor.from_pretrained(path))

    @classmethod
    def square(cls, size: int, mean: Sequence[float] = (0.5,) * 3, std: Sequence[float] = (0.5,) * 3) -> "CheckpointFrames":
        """LLaVA-OneVision's video processor at ``size x size`` with ``mean``/``std`` (what a
        checkpoint saved with those settings loads); for models built in code (training, benchmarks)."""
        from transformers import LlavaOnevisionVideoProcessor

        return cls(LlavaOnevisionVideoProcessor(size={"height": size, "width": size}, image_mean=list(mean), image_std=list(std)))

    @property
    def size(self) -> Tuple[int, int]:
        """``(height, width)`` of the pixel values."""
        return int(self.processor.size.height), int(self.processor.size.width)

    def __call__(self, frames, dtype: torch.dtype = torch.float32, device: Union[str, torch.device] = "cpu") -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 frames -> ``(N, 3, h, w)`` pixel values (one batched call)."""
        x = as_frames(frames)
        out = self.processor(videos=[x], do_sample_frames=False, return_tensors="pt", device=str(torch.device(device)))
        return out["pixel_values_videos"][0].to(device=device, dtype=dtype)


class LlavaNextFrames:
    """LLaVA-NeXT's SigLIP preprocessing (lmms-lab checkpoints), reproduced bit for bit."""

    rule = "llava_next"

    def __init__(self, size: Tuple[int, int] = (384, 384), mean: Sequence[float] = (0.5,) * 3,
                 std: Sequence[float] = (0.5,) * 3, threads: int = 4) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.mean = np.asarray(_triple(mean), dtype=np.float32)
        self.std = np.asarray(_triple(std), dtype=np.float32)
        self.threads = threads

    @classmethod
    def from_rule(cls, rule: dict) -> "LlavaNextFrames":
        size = rule.get("size", [384, 384])
        return cls(tuple(size), rule.get("image_mean", (0.5,) * 3), rule.get("image_std", (0.5,) * 3))

    def resized(self, frames: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 -> ``(N, h, w, 3)`` uint8 through Pillow's bicubic resize
        (frames resized in parallel threads: Pillow releases the GIL while resizing)."""
        from PIL import Image

        h, w = self.size
        if frames.shape[1:3] == (h, w):
            return frames

        def one(frame: np.ndarray) -> np.ndarray:
            return np.asarray(Image.fromarray(frame).resize((w, h), resample=Image.BICUBIC, reducing_gap=None))

        if len(frames) == 1 or self.threads <= 1:
            return np.stack([one(f) for f in frames])
        with ThreadPoolExecutor(min(self.threads, len(frames))) as pool:
            return np.stack(list(pool.map(one, frames)))

    def __call__(self, frames, dtype: torch.dtype = torch.float32, device: Union[str, torch.device] = "cpu") -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 frames -> ``(N, 3, h, w)`` pixel values."""
        x = self.resized(as_frames(frames).cpu().numpy())
        x = (x.astype(np.float64) * (1 / 255)).astype(np.float32)
        x = (x - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device=device, dtype=dtype)


def frame_processor(path: str) -> Union[CheckpointFrames, LlavaNextFrames]:
    """The preprocessing rule of the LLaVA-OneVision checkpoint folder ``path``."""
    rule_path = os.path.join(path, RULE_FILE)
    if os.path.isfile(rule_path):
        with open(rule_path) as fh:
            rule = json.load(fh)
        if rule.get("rule") != LlavaNextFrames.rule:
            raise ValueError(f"{rule_path}: unknown preprocessing rule {rule.get('rule')!r}")
        return LlavaNextFrames.from_rule(rule)
    return CheckpointFrames.from_dir(path)


def as_frames(frames) -> torch.Tensor:
    """Validate a batch of frames and return it as a uint8 torch tensor ``(N, H, W, 3)``.

    Raises TypeError for a wrong type or dtype and ValueError for a wrong shape or no frames."""
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8:
            raise TypeError(f"frames must be uint8, got numpy dtype {frames.dtype}")
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    elif isinstance(frames, torch.Tensor):
        if frames.dtype != torch.uint8:
            raise TypeError(f"frames must be uint8, got torch dtype {frames.dtype}")
    else:
        raise TypeError(f"frames must be a uint8 numpy array or torch tensor, got {type(frames).__name__}")
    if frames.ndim == 3 and frames.shape[-1] == 3:
        raise ValueError("frames must be a batch (N, H, W, 3); wrap a single frame as frames[None]")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (N, H, W, 3), got {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        raise ValueError("no frames given (N == 0)")
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"frames have an empty spatial size {tuple(frames.shape[1:3])}")
    return frames


def _triple(value) -> Tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    seq: Sequence[float] = value
    if len(seq) != 3:
        raise ValueError(f"expected 3 channel values, got {value!r}")
    return tuple(float(v) for v in seq)
