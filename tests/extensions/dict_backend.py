"""A toy storage backend: one tensor per (layer, block, field) in a dict -- only the required
methods; the optional ones come from ``Backend``."""

import torch

from lmms_rekv.registry import BACKENDS
from lmms_rekv.storage.backends import Backend


class DictBackend(Backend):
    def __init__(self, layers, fields):
        self.layers, self.fields, self.rows, self.reserved = layers, fields, {}, 0
        self.committed = 0

    @property
    def blocks(self):
        return self.committed

    def reserve(self, n):
        first, self.reserved = self.committed, self.committed + n
        return first

    def write(self, layer, first, data):
        for name, rows in data.items():
            for i, row in enumerate(rows):
                self.rows[layer, first + i, name] = row.detach().clone()

    def commit(self, n):
        self.committed += n

    def read(self, layer, blocks):
        return {name: torch.stack([self.rows[layer, int(i), name] for i in blocks]) for name in self.fields}

    def close(self):
        self.rows.clear()

    @property
    def used_bytes(self):
        return sum(t.numel() * t.element_size() for (_, block, _), t in self.rows.items() if block < self.committed)


def register() -> None:
    BACKENDS.register("dict", lambda layers, fields, config, storage_device, pin, capacity: DictBackend(layers, fields))
