"""Storage backends for offloaded KV blocks; one backend per module.

A backend stores, for every layer and frame, the fields a codec produces (``Fields``:
name -> per-frame shape and dtype). Interface::

    first = backend.reserve(n)                    # room for n more frames
    backend.write(layer, first, {name: (n, ...)}) # every layer, then
    backend.commit(n)
    backend.read(layer, frames) -> {name: (k, ...)}  # batched; any frame order
    backend.frames, backend.used_bytes, backend.ram_bytes, backend.disk_bytes, backend.close()
"""

from .disk import DiskBackend
from .memory import MemoryBackend
from .segments import CorruptSegmentError

__all__ = ["CorruptSegmentError", "DiskBackend", "MemoryBackend"]
