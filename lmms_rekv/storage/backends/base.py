"""`Backend`: where a block store's encoded blocks live (one backend per module; register one with
``lmms_rekv.registry.BACKENDS`` to make it an ``offload`` tier).

A backend keeps, for every layer and block, the fields a codec produces (``Fields``: name ->
per-block shape and dtype). Blocks are appended in three steps -- ``reserve(n)``, ``write`` for
every layer, ``commit(n)`` -- so a failed chunk leaves nothing half-stored, and read in batches
(any order). The required methods are abstract; the optional ones have defaults built on them
(a backend overrides them when it can do better, e.g. one index for every layer)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Dict, List, Optional, Tuple

import torch

from lmms_rekv.storage.quant import Fields


class Backend(ABC):
    """Storage of encoded blocks ``{field: (layers, blocks, *shape)}`` (see the module docstring)."""

    layers: int
    fields: Fields
    device: torch.device = torch.device("cpu")  # where ``read`` returns tensors

    @property
    @abstractmethod
    def blocks(self) -> int:
        """Blocks committed."""

    @abstractmethod
    def reserve(self, n: int) -> int:
        """Room for ``n`` more blocks; returns the index of the first."""

    @abstractmethod
    def write(self, layer: int, first: int, data: Dict[str, torch.Tensor]) -> None:
        """Store ``{field: (n, *shape)}`` of reserved blocks ``first..first+n-1`` on ``layer``."""

    @abstractmethod
    def commit(self, n: int) -> None:
        """The ``n`` reserved blocks are written on every layer: they count from now on."""

    @abstractmethod
    def read(self, layer: int, blocks: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{field: (k, *shape)}`` of blocks ``blocks`` (1-D index, any order) on ``layer``."""

    @abstractmethod
    def close(self) -> None:
        """Release what the backend holds (files included)."""

    @property
    @abstractmethod
    def used_bytes(self) -> int:
        """Bytes of the committed blocks."""

    # -- optional, with defaults --------------------------------------------------------------
    def read_all(self, blocks: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``read`` for every layer: ``{field: (layers, k, *shape)}``."""
        per_layer = [self.read(layer, blocks) for layer in range(self.layers)]
        return {name: torch.stack([rows[name] for rows in per_layer]) for name in per_layer[0]}

    def block(self, layer: int, index: int) -> Dict[str, torch.Tensor]:
        """``{field: shape}`` of one block."""
        return {name: rows[0] for name, rows in self.read(layer, torch.tensor([index])).items()}

    def rows(self, first: int, last: int) -> Dict[str, torch.Tensor]:
        """Every layer of blocks ``first..last-1``: ``{field: (layers, n, *shape)}``."""
        return self.read_all(torch.arange(first, last))

    @property
    def reserved_bytes(self) -> int:
        """Bytes allocated (at least ``used_bytes``)."""
        return self.used_bytes

    @property
    def ram_bytes(self) -> int:
        """Bytes held in host RAM."""
        return self.used_bytes

    @property
    def disk_bytes(self) -> int:
        """Bytes held in files."""
        return 0

    def files(self) -> Optional[Tuple[str, List[object]]]:
        """``(folder, segments)`` when the blocks are already in segment files a saved session can
        copy (``segments.Segment``; everything written first), else None: ``rows`` are written."""
        return None
