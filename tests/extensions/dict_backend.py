"""A toy storage backend: one tensor per (layer, block, field) in a dict -- only the required
methods; the optional ones come from ``Backend``."""

import torch

from lmms_rekv.registry import BACKENDS
from lmms_rekv.storage.backends import Backend


class DictBackend(Backend):
    def __init__(self, layers, fields):
        self.layers, self.fields, self.blocks, self.reserved = layers, fields, {}, 0
        self.committed = 0

    @property
    def frames(self):
        return self.committed

    def reserve(self, n):
        first, self.reserved = self.committed, self.committed + n
        return first

    def write(self, layer, first, data):
        for name, rows in data.items():
            for i, row in enumerate(rows):
                self.blocks[layer, first + i, name] = row.detach().clone()

    def commit(self, n):
        self.committed += n

    def read(self, layer, frames):
        return {name: torch.stack([self.blocks[layer, int(i), name] for i in frames]) for name in self.fields}

    def close(self):
        self.blocks.clear()

    @property
    def used_bytes(self):
        return sum(t.numel() * t.element_size() for (_, block, _), t in self.blocks.items() if block < self.committed)


def register() -> None:
    BACKENDS.register("dict", lambda layers, fields, config, storage_device, pin, capacity: DictBackend(layers, fields))
