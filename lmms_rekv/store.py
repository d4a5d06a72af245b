"""Block store: every frame's per-layer pre-RoPE keys and values, in growing arenas.

One block = one frame = ``frame_tokens`` tokens. Keys and values live in two arenas of shape
``(layers, capacity, frame_tokens, kv_heads, head_dim)`` on the storage tier's device (CPU,
pinned when the model runs on CUDA; or the model's device). Capacity doubles when full, so
appending a chunk costs one copy per layer, never one allocation per frame. Per-layer block
summaries (mean pre-RoPE key of each frame, fp32, ``(layers, capacity, kv_heads, head_dim)``)
stay on the model's device for scoring.
"""

from __future__ import annotations

import logging
from typing import Tuple

import torch

logger = logging.getLogger(__name__)


class BlockStore:
    """Append-only store of frame KV blocks; readers never mutate it."""

    def __init__(
        self,
        layers: int,
        frame_tokens: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        storage_device: torch.device,
        summary_device: torch.device,
        initial_capacity: int = 64,
    ) -> None:
        self.layers, self.frame_tokens = layers, frame_tokens
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.dtype = dtype
        self.storage_device = torch.device(storage_device)
        self.summary_device = torch.device(summary_device)
        self.pin = self.storage_device.type == "cpu" and torch.cuda.is_available() and self.summary_device.type == "cuda"
        self.frames = 0
        self._keys = self._values = self._summaries = None
        self._allocate(max(1, initial_capacity))

    # -- capacity -------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self._keys.shape[1]

    def _arena(self, capacity: int) -> torch.Tensor:
        shape = (self.layers, capacity, self.frame_tokens, self.kv_heads, self.head_dim)
        return torch.empty(shape, dtype=self.dtype, device=self.storage_device, pin_memory=self.pin)

    def _allocate(self, capacity: int) -> None:
        keys, values = self._arena(capacity), self._arena(capacity)
        summaries = torch.empty(
            (self.layers, capacity, self.kv_heads, self.head_dim), dtype=torch.float32, device=self.summary_device
        )
        if self._keys is not None:
            n = self.frames
            keys[:, :n].copy_(self._keys[:, :n])
            values[:, :n].copy_(self._values[:, :n])
            summaries[:, :n].copy_(self._summaries[:, :n])
        self._keys, self._values, self._summaries = keys, values, summaries
        logger.debug("block store capacity -> %d frames", capacity)

    def reserve(self, n_frames: int) -> int:
        """Make room for ``n_frames`` more frames; returns the index of the first one.

        The frames count as stored once every layer has been written with ``write``."""
        if n_frames < 1:
            raise ValueError("reserve needs at least one frame")
        need = self.frames + n_frames
        if need > self.capacity:
            capacity = self.capacity
            while capacity < need:
                capacity *= 2
            self._allocate(capacity)
        return self.frames

    def commit(self, n_frames: int) -> None:
        """Mark ``n_frames`` reserved frames as written on every layer."""
        self.frames += n_frames

    # -- write / read ---------------------------------------------------------------------
    def write(self, layer: int, first: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store frames ``first..first+n`` of ``layer``.

        keys, values: ``(n * frame_tokens, kv_heads, head_dim)`` pre-RoPE, any device."""
        n = keys.shape[0] // self.frame_tokens
        shape = (n, self.frame_tokens, self.kv_heads, self.head_dim)
        keys, values = keys.reshape(shape), values.reshape(shape)
        self._summaries[layer, first : first + n].copy_(keys.float().mean(dim=1))
        non_blocking = self.pin
        self._keys[layer, first : first + n].copy_(keys, non_blocking=non_blocking)
        self._values[layer, first : first + n].copy_(values, non_blocking=non_blocking)

    def _sync(self) -> None:
        if self.pin:
            torch.cuda.current_stream().synchronize()

    def summaries(self, layer: int) -> torch.Tensor:
        """Mean pre-RoPE key per frame, ``(frames, kv_heads, head_dim)`` fp32 on the model device."""
        return self._summaries[layer, : self.frames]

    def all_summaries(self) -> torch.Tensor:
        """``(layers, frames, kv_heads, head_dim)`` fp32."""
        return self._summaries[:, : self.frames]

    def gather(self, layer: int, frames: torch.Tensor, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``frames`` (1-D index, any order) on ``layer``, in one batched copy.

        Returns two ``(len(frames) * frame_tokens, kv_heads, head_dim)`` tensors on ``device``."""
        self._sync()
        index = frames.to(self.storage_device)
        flat = (-1, self.kv_heads, self.head_dim)
        keys = self._keys[layer].index_select(0, index).reshape(flat)
        values = self._values[layer].index_select(0, index).reshape(flat)
        return keys.to(device, non_blocking=True), values.to(device, non_blocking=True)

    def frame(self, layer: int, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """One stored block (a view; do not modify): two ``(frame_tokens, kv_heads, head_dim)``."""
        if not 0 <= index < self.frames:
            raise IndexError(f"frame {index} not stored (have {self.frames})")
        self._sync()
        return self._keys[layer, index], self._values[layer, index]

    # -- accounting -----------------------------------------------------------------------
    @property
    def bytes_per_frame(self) -> int:
        """KV bytes of one frame over all layers: layers * 2 * kv_heads * head_dim * itemsize * tokens."""
        item = torch.empty((), dtype=self.dtype).element_size()
        return self.layers * 2 * self.kv_heads * self.head_dim * item * self.frame_tokens

    @property
    def used_bytes(self) -> int:
        return self.frames * self.bytes_per_frame

    @property
    def reserved_bytes(self) -> int:
        return self.capacity * self.bytes_per_frame

    @property
    def summary_bytes(self) -> int:
        return self.frames * self.layers * self.kv_heads * self.head_dim * 4


class GrowingRows:
    """Rows appended in batches to one preallocated tensor whose capacity doubles."""

    def __init__(self, width: int, device: torch.device, dtype: torch.dtype = torch.float32, capacity: int = 64) -> None:
        self._data = torch.empty((capacity, width), dtype=dtype, device=device)
        self.rows = 0

    def append(self, rows: torch.Tensor) -> None:
        need = self.rows + rows.shape[0]
        if need > self._data.shape[0]:
            capacity = self._data.shape[0]
            while capacity < need:
                capacity *= 2
            grown = self._data.new_empty((capacity, self._data.shape[1]))
            grown[: self.rows] = self._data[: self.rows]
            self._data = grown
        self._data[self.rows : need] = rows.to(self._data)
        self.rows = need

    def view(self) -> torch.Tensor:
        return self._data[: self.rows]

    @property
    def nbytes(self) -> int:
        return self.rows * self._data.shape[1] * self._data.element_size()
