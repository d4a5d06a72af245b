"""Segment files: many frames of every layer and field in one file, written atomically
(temporary file + rename) with a CRC-32 per file, listed in a JSON manifest.

Layout of a segment of ``n`` frames: for each field in manifest order, the bytes of a
``(layers, n, *shape)`` array. A truncated or altered segment fails its size or checksum
check and raises ``CorruptSegmentError``; it is never read silently."""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import asdict, dataclass
from typing import Dict, List

import torch

from ..quant import Fields

MANIFEST = "manifest.json"


class CorruptSegmentError(RuntimeError):
    """A stored segment is missing, truncated or fails its checksum."""


@dataclass
class Segment:
    file: str
    first: int
    count: int
    crc32: int
    bytes: int


def field_bytes(shape, dtype) -> int:
    return torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()


def _raw(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.contiguous().view(torch.uint8).numpy()).cast("B")


def atomic_write(path: str, chunks) -> int:
    """Write ``chunks`` (buffers) to ``path`` through a temporary file; returns the CRC-32."""
    tmp = f"{path}.tmp{os.getpid()}"
    crc = 0
    with open(tmp, "wb") as fh:
        for chunk in chunks:
            fh.write(chunk)
            crc = zlib.crc32(chunk, crc)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return crc


def write_segment(folder: str, index: int, first: int, rows: Dict[str, torch.Tensor]) -> Segment:
    """Write ``rows`` (``{field: (layers, n, *shape)}``, CPU) as segment ``index``."""
    name = f"seg_{index:06d}.bin"
    buffers = [_raw(rows[field].cpu()) for field in rows]
    crc = atomic_write(os.path.join(folder, name), buffers)
    count = next(iter(rows.values())).shape[1]
    return Segment(name, first, count, crc, sum(b.nbytes for b in buffers))


def file_crc(path: str, block: int = 1 << 24) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            crc = zlib.crc32(chunk, crc)
    return crc


def verify(folder: str, segment: Segment, checksum: bool = True) -> None:
    path = os.path.join(folder, segment.file)
    if not os.path.isfile(path):
        raise CorruptSegmentError(f"segment {path} is missing")
    size = os.path.getsize(path)
    if size != segment.bytes:
        raise CorruptSegmentError(f"segment {path} has {size} bytes, expected {segment.bytes} (partially written?)")
    if checksum and file_crc(path) != segment.crc32:
        raise CorruptSegmentError(f"segment {path} fails its checksum")


def write_manifest(folder: str, layers: int, fields: Fields, segments: List[Segment], extra: Dict = None) -> None:
    body = {
        "version": 1,
        "layers": layers,
        "fields": {k: {"shape": list(s), "dtype": str(d).replace("torch.", "")} for k, (s, d) in fields.items()},
        "segments": [asdict(s) for s in segments],
        **(extra or {}),
    }
    atomic_write(os.path.join(folder, MANIFEST), [json.dumps(body, indent=1).encode()])


def read_manifest(folder: str) -> Dict:
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise CorruptSegmentError(f"no manifest in {folder}")
    with open(path) as fh:
        body = json.load(fh)
    body["segments"] = [Segment(**s) for s in body["segments"]]
    return body


class SegmentReader:
    """Batched reads of frame rows from segment files (one ``preadv`` per run of
    consecutive frames, straight into the output tensor)."""

    def __init__(self, folder: str, layers: int, fields: Fields) -> None:
        self.folder, self.layers, self.fields = folder, layers, fields
        self._fds: Dict[str, int] = {}
        self._checked: set = set()

    def _fd(self, segment: Segment) -> int:
        if segment.file not in self._fds:
            path = os.path.join(self.folder, segment.file)
            verify(self.folder, segment, checksum=False)
            self._fds[segment.file] = os.open(path, os.O_RDONLY)
        return self._fds[segment.file]

    def read_into(self, segment: Segment, layer: int, frames: List[int], out: Dict[str, torch.Tensor], rows: List[int]) -> None:
        """Copy ``frames`` (sorted, inside ``segment``) of ``layer`` into ``out[field][rows]``."""
        fd = self._fd(segment)
        offset = 0
        for name, (shape, dtype) in self.fields.items():
            fb = field_bytes(shape, dtype)
            base = offset + layer * segment.count * fb
            start = 0
            while start < len(frames):
                end = start + 1
                while end < len(frames) and frames[end] == frames[end - 1] + 1 and rows[end] == rows[end - 1] + 1:
                    end += 1
                target = out[name][rows[start] : rows[start] + (end - start)]
                got = os.preadv(fd, [_raw_out(target)], base + (frames[start] - segment.first) * fb)
                if got != (end - start) * fb:
                    raise CorruptSegmentError(f"short read from {segment.file}")
                start = end
            offset += self.layers * segment.count * fb

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _raw_out(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.view(torch.uint8).numpy()).cast("B")
