"""Disk backend: the most recent frames in RAM (at most ``ram_budget_bytes``), older ones
spilled to segment files of many frames each (see ``segments``).

Writes are atomic and checksummed; reads are batched per segment and run of consecutive
frames. The list of segments is kept in memory only (a session's folder is scratch: what is
persisted is written by ``lmms_rekv.storage.persist`` with its own manifest), so a spill costs
the same at the first segment and the thousandth. Each session writes into its own folder ``rekv-<pid>-<random>`` under
``offload_dir`` (or the system's temporary folder), removed on ``close`` or garbage
collection; the folders of killed processes are removed by the next disk-tier session
created in the same place."""

from __future__ import annotations

import bisect
import glob
import logging
import os
import shutil
import tempfile
import weakref
from typing import Dict, List, Optional

import torch

from lmms_rekv.storage.leftovers import remove_dead
from lmms_rekv.storage.quant import Fields

from .base import Backend
from .memory import MemoryBackend
from .segments import Segment, SegmentReader, write_segment

logger = logging.getLogger(__name__)

SCRATCH = r"^rekv-(\d+)-"  # a session's folder: rekv-<pid>-<random>, removed by a later session once <pid> is gone


class DiskBackend(Backend):
    """RAM up to a budget, older blocks in segment files (see the module docstring)."""

    def __init__(self, layers: int, fields: Fields, offload_dir: Optional[str], ram_budget_bytes: int) -> None:
        self.layers, self.fields, self.device = layers, fields, torch.device("cpu")
        parent = offload_dir or tempfile.gettempdir()
        try:
            os.makedirs(parent, exist_ok=True)
            remove_dead(glob.glob(os.path.join(glob.escape(parent), "rekv-*-*")), SCRATCH)  # of killed sessions
            self.folder = tempfile.mkdtemp(prefix=f"rekv-{os.getpid()}-", dir=parent)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot create the disk tier's folder in {parent}: {exc.strerror or exc}") from exc
        probe = MemoryBackend(layers, fields, "cpu", capacity=1)
        self.frame_bytes = probe.frame_bytes
        self.ram_frames = max(2, ram_budget_bytes // self.frame_bytes)
        self.segment_frames = max(1, self.ram_frames // 2)
        self.tail = MemoryBackend(layers, fields, "cpu", capacity=self.ram_frames)
        self.segments: List[Segment] = []
        self._firsts: List[int] = []
        self.disk_frames = 0
        self._disk_bytes = 0
        self.reader = SegmentReader(self.folder, layers, fields)
        self._cleanup = weakref.finalize(self, _remove, self.folder, self.reader)
        logger.debug("disk backend in %s: %d frames in RAM, segments of %d", self.folder, self.ram_frames, self.segment_frames)

    @property
    def blocks(self) -> int:
        return self.disk_frames + self.tail.blocks

    def reserve(self, n: int) -> int:
        while self.tail.blocks and self.tail.blocks + n > self.ram_frames:
            self._spill(min(self.segment_frames, self.tail.blocks))
        if n > self.ram_frames:
            logger.warning("a chunk of %d frames exceeds the RAM budget of %d frames", n, self.ram_frames)
        return self.disk_frames + self.tail.reserve(n)

    def write(self, layer: int, first: int, data: Dict[str, torch.Tensor]) -> None:
        self.tail.write(layer, first - self.disk_frames, data)

    def commit(self, n: int) -> None:
        self.tail.commit(n)

    def _spill(self, n: int) -> None:
        """Move the oldest ``n`` RAM frames into a new segment file."""
        segment = write_segment(self.folder, len(self.segments), self.disk_frames, self.tail.rows(0, n))
        self.segments.append(segment)
        self._firsts.append(segment.first)
        with torch.inference_mode():  # the RAM arena was made while encoding (inference tensors)
            self.tail.drop_front(n)
        self.disk_frames += n
        self._disk_bytes += segment.bytes

    def files(self):
        """Every block spilled to its segment file, then ``(folder, segments)``."""
        self.flush()
        return self.folder, list(self.segments)

    def flush(self) -> None:
        """Spill every RAM frame (before persisting)."""
        if self.tail.blocks:
            self._spill(self.tail.blocks)

    def read(self, layer: int, blocks: torch.Tensor) -> Dict[str, torch.Tensor]:
        index = blocks.tolist()
        out = {name: torch.empty((len(index), *shape), dtype=dtype) for name, (shape, dtype) in self.fields.items()}
        on_disk = sorted((f, row) for row, f in enumerate(index) if f < self.disk_frames)
        by_segment: Dict[int, List] = {}
        for f, row in on_disk:
            by_segment.setdefault(bisect.bisect_right(self._firsts, f) - 1, []).append((f, row))
        for seg, pairs in by_segment.items():
            self.reader.read_into(self.segments[seg], layer, [p[0] for p in pairs], out, [p[1] for p in pairs])
        in_ram = [(row, f - self.disk_frames) for row, f in enumerate(index) if f >= self.disk_frames]
        if in_ram:
            rows = torch.tensor([r for r, _ in in_ram])
            got = self.tail.read(layer, torch.tensor([f for _, f in in_ram]))
            for name in out:
                out[name][rows] = got[name]
        return out

    @property
    def ram_bytes(self) -> int:
        return self.tail.used_bytes

    @property
    def disk_bytes(self) -> int:
        return self._disk_bytes

    @property
    def used_bytes(self) -> int:
        return self.blocks * self.frame_bytes

    @property
    def reserved_bytes(self) -> int:
        return self.tail.reserved_bytes

    def close(self) -> None:
        self._cleanup()


def disk_backend(layers: int, fields: Fields, config, storage_device: torch.device, pin: bool, capacity: int) -> DiskBackend:
    """The ``disk`` tier (``lmms_rekv.registry.BACKENDS``): ``config.offload_dir`` and ``ram_budget_bytes``."""
    return DiskBackend(layers, fields, config.offload_dir, config.ram_budget_bytes)


def _remove(folder: str, reader: SegmentReader) -> None:
    reader.close()
    shutil.rmtree(folder, ignore_errors=True)
