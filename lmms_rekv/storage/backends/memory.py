"""In-memory backend: one growing arena per field, ``(layers, capacity, *shape)``, on the
CPU (pinned when a GPU is used) or on the model's device. Capacity doubles when full, so a
chunk costs one copy per layer and field, never an allocation per frame."""

from __future__ import annotations

import logging
from typing import Dict, Optional

import torch

from lmms_rekv.storage.quant import Fields

from .base import Backend

logger = logging.getLogger(__name__)


class MemoryBackend(Backend):
    """Growing arenas ``(layers, capacity, *shape)`` per field (see the module docstring)."""

    blocks = 0  # blocks committed (an instance attribute from __init__ on)

    def __init__(self, layers: int, fields: Fields, device: torch.device, pin: bool = False, capacity: int = 64) -> None:
        self.layers, self.fields, self.device, self.pin = layers, fields, torch.device(device), pin
        self.blocks = 0
        self._arenas: Dict[str, torch.Tensor] = {}
        self._copy_stream: Optional["torch.cuda.Stream"] = None
        self._pending_copy = None
        self._grow(max(1, capacity))

    @property
    def capacity(self) -> int:
        return next(iter(self._arenas.values())).shape[1]

    def _grow(self, capacity: int) -> None:
        self.sync()
        arenas = {}
        for name, (shape, dtype) in self.fields.items():
            arena = torch.empty((self.layers, capacity, *shape), dtype=dtype, device=self.device, pin_memory=self.pin)
            if name in self._arenas:
                arena[:, : self.blocks].copy_(self._arenas[name][:, : self.blocks])
            arenas[name] = arena
        self._arenas = arenas
        logger.debug("memory backend capacity -> %d frames", capacity)

    def reserve(self, n: int) -> int:
        need = self.blocks + n
        if need > self.capacity:
            capacity = self.capacity
            while capacity < need:
                capacity *= 2
            self._grow(capacity)
        return self.blocks

    def write(self, layer: int, first: int, data: Dict[str, torch.Tensor]) -> None:
        """Copy ``(n, *shape)`` tensors into frames ``first..first+n`` of ``layer``.

        From a CUDA device into pinned memory the copies run on a side stream, overlapping
        the next layers' compute; readers wait for them (``sync``)."""
        source = next(iter(data.values()))
        if self.pin and source.is_cuda:
            stream = self._copy_stream = self._copy_stream or torch.cuda.Stream(device=source.device)
            stream.wait_stream(torch.cuda.current_stream(source.device))
            with torch.cuda.stream(stream):
                for name, tensor in data.items():
                    self._arenas[name][layer, first : first + tensor.shape[0]].copy_(tensor, non_blocking=True)
                    tensor.record_stream(stream)
            self._pending_copy = stream.record_event()
            return
        for name, tensor in data.items():
            self._arenas[name][layer, first : first + tensor.shape[0]].copy_(tensor)

    def commit(self, n: int) -> None:
        self.blocks += n

    def sync(self) -> None:
        if self._pending_copy is not None:
            self._pending_copy.synchronize()
            self._pending_copy = None

    def read(self, layer: int, blocks: torch.Tensor) -> Dict[str, torch.Tensor]:
        self.sync()
        index = blocks.to(self.device)
        return {name: arena[layer].index_select(0, index) for name, arena in self._arenas.items()}

    def read_all(self, blocks: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``read`` for every layer: ``{name: (layers, k, *shape)}`` in one index per field."""
        self.sync()
        index = blocks.to(self.device)
        return {name: arena.index_select(1, index) for name, arena in self._arenas.items()}

    def block(self, layer: int, index: int) -> Dict[str, torch.Tensor]:
        self.sync()
        return {name: arena[layer, index] for name, arena in self._arenas.items()}

    def rows(self, first: int, last: int) -> Dict[str, torch.Tensor]:
        """All layers of frames ``first..last-1``: ``{name: (layers, n, *shape)}`` views."""
        self.sync()
        return {name: arena[:, first:last] for name, arena in self._arenas.items()}

    def drop_front(self, n: int) -> None:
        """Forget the first ``n`` frames (moved elsewhere); later frames shift down."""
        self.sync()
        keep = self.blocks - n
        for arena in self._arenas.values():
            arena[:, :keep] = arena[:, n : self.blocks].clone()
        self.blocks = keep

    @property
    def frame_bytes(self) -> int:
        return self.layers * sum(torch.Size(s).numel() * torch.empty((), dtype=d).element_size() for s, d in self.fields.values())

    @property
    def used_bytes(self) -> int:
        return self.blocks * self.frame_bytes

    @property
    def reserved_bytes(self) -> int:
        return self.capacity * self.frame_bytes

    def close(self) -> None:
        self._arenas = {}


def memory_backend(layers: int, fields: Fields, config, storage_device: torch.device, pin: bool, capacity: int) -> MemoryBackend:
    """The ``cpu`` and ``device`` tiers (``lmms_rekv.registry.BACKENDS``)."""
    return MemoryBackend(layers, fields, storage_device, pin, capacity)
