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

from lmms_rekv.storage.quant import Fields

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
    try:
        with open(tmp, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
                crc = zlib.crc32(chunk, crc)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # disk full, file-size limit, permission denied: name the file
        if os.path.exists(tmp):
            os.remove(tmp)
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from exc
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
        """Copy ``frames`` (sorted, inside ``segment``) of ``layer`` into ``out[field][rows]``.

        Frames less than ``READ_AHEAD + 1`` apart are fetched in one read of the whole span
        (the gap is read too and dropped): few large reads instead of many small ones."""
        fd = self._fd(segment)
        offset = 0
        for name, (shape, dtype) in self.fields.items():
            fb = field_bytes(shape, dtype)
            base = offset + layer * segment.count * fb
            for lo, hi in _spans(frames, READ_AHEAD):
                span = frames[hi - 1] - frames[lo] + 1
                position = base + (frames[lo] - segment.first) * fb
                direct = span == hi - lo and rows[hi - 1] - rows[lo] == hi - lo - 1
                target = out[name][rows[lo] : rows[lo] + span] if direct else torch.empty((span, *shape), dtype=dtype)
                if os.preadv(fd, [_raw_out(target)], position) != span * fb:
                    raise CorruptSegmentError(f"short read from {segment.file}")
                if not direct:
                    picked = torch.tensor(frames[lo:hi]) - frames[lo]
                    out[name][torch.tensor(rows[lo:hi])] = target[picked]
            offset += self.layers * segment.count * fb

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


READ_AHEAD = 4  # frames of gap read through rather than split into two reads


def _spans(frames: List[int], gap: int):
    """``(lo, hi)`` index ranges of ``frames`` (sorted) whose neighbours are at most ``gap + 1`` apart."""
    lo = 0
    for i in range(1, len(frames) + 1):
        if i == len(frames) or frames[i] - frames[i - 1] > gap + 1:
            yield lo, i
            lo = i


def _raw_out(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.view(torch.uint8).numpy()).cast("B")
