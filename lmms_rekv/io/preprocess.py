"""Frame validation and preprocessing without torchvision.

Frames are resized to the vision tower's square input (bicubic, antialiased, rounded to
uint8 levels as an image library would), scaled by 1/255 and normalized with the
checkpoint's mean/std (read from ``preprocessor_config.json``; llava-hf OV uses 0.5/0.5).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class FrameProcessor:
    size: int
    mean: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: Tuple[float, float, float] = (0.5, 0.5, 0.5)

    @classmethod
    def from_dir(cls, path: str, size: int) -> "FrameProcessor":
        """Mean/std from ``path/preprocessor_config.json`` when present; ``size`` from the model."""
        cfg_path = os.path.join(path, "preprocessor_config.json")
        if not os.path.isfile(cfg_path):
            return cls(size=size)
        with open(cfg_path) as fh:
            cfg = json.load(fh)
        mean = _triple(cfg.get("image_mean", 0.5))
        std = _triple(cfg.get("image_std", 0.5))
        return cls(size=size, mean=mean, std=std)

    def __call__(self, frames, dtype: torch.dtype = torch.float32, device="cpu") -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 frames -> ``(N, 3, size, size)`` normalized pixels."""
        x = as_frames(frames).to(device)
        x = x.permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False, antialias=True)
            x = x.clamp_(0, 255).round_()
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return ((x / 255.0 - mean) / std).to(dtype)


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
