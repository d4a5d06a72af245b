"""Storage backends for offloaded KV blocks; one backend per module, each a ``base.Backend``::

    first = backend.reserve(n)                    # room for n more blocks
    backend.write(layer, first, {name: (n, ...)}) # every layer, then
    backend.commit(n)
    backend.read(layer, blocks) -> {name: (k, ...)}  # batched; any order
    backend.blocks, backend.used_bytes, backend.close()  # + optional ones with defaults

``lmms_rekv.registry.BACKENDS`` maps the ``offload`` tiers to their factories
(``memory_backend``: cpu and device; ``disk_backend``: disk).
"""

from .base import Backend
from .disk import DiskBackend, disk_backend
from .memory import MemoryBackend, memory_backend
from .segments import CorruptSegmentError

__all__ = ["Backend", "CorruptSegmentError", "DiskBackend", "MemoryBackend", "disk_backend", "memory_backend"]
