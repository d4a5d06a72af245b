"""Persisted encoded videos: a stored stream written to a folder (``write_entry``) and read
back (``read_entry``) instead of re-encoding; the engine decides what goes in (the session's
``export_state`` and the ``info`` it needs to reopen it) -- storage never sees a session.

Folder layout: ``seg_*.bin`` KV segments (see ``backends.segments``), ``state.safetensors``
(sinks, sliding window, per-frame summaries, external embeddings) and ``manifest.json``,
written last: a folder without a manifest is an unfinished save. Every file carries a
CRC-32 that ``read_entry`` / ``Entry`` check; a mismatch raises ``CorruptSegmentError``.

Which folder holds which video is the caller's business (lmms-eval: ``integrations.cache``).
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Dict

import torch

from .backends.segments import (
    CorruptSegmentError,
    Segment,
    file_crc,
    read_manifest,
    verify,
    write_manifest,
    write_segment,
)

logger = logging.getLogger(__name__)

STATE = "state.safetensors"
SEGMENT_FRAMES = 256


def write_entry(folder: str, store, state: Dict[str, torch.Tensor], info: dict) -> None:
    """Write a stored stream to ``folder``, replacing it atomically: the blocks of ``store`` as
    segment files, the ``state`` tensors (``state.safetensors``) and the manifest, which keeps
    ``info`` (JSON; what the caller needs to reopen the stream) beside the layout. A failure
    (disk full, file-size limit, permission) leaves nothing half-written."""
    _remove_leftovers(folder)
    tmp = f"{folder}.tmp{os.getpid()}"
    try:
        _write_files(tmp, store, state, info)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(exc.errno, f"cannot save the session to {folder}: {exc.strerror or exc}") from exc
    old = f"{folder}.old{os.getpid()}"
    if os.path.exists(folder):  # moved aside, not removed in place: a kill never leaves a half-deleted entry
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    logger.info("saved %d blocks to %s", store.blocks, folder)


def _write_files(tmp: str, store, state: Dict[str, torch.Tensor], info: dict) -> None:
    """Segments, state tensors and manifest into the new folder ``tmp``."""
    from safetensors.torch import save_file

    os.makedirs(tmp)
    segments = []
    files = store.backend.files()
    if files is not None:  # e.g. the disk tier: its segments are already on disk
        folder, on_disk = files
        for segment in on_disk:
            shutil.copyfile(os.path.join(folder, segment.file), os.path.join(tmp, segment.file))
            segments.append(segment)
    else:
        for index, first in enumerate(range(0, store.blocks, SEGMENT_FRAMES)):
            last = min(store.blocks, first + SEGMENT_FRAMES)
            segments.append(write_segment(tmp, index, first, store.backend.rows(first, last)))
    save_file(state, os.path.join(tmp, STATE))
    extra = {"frames": store.blocks, "state_crc32": file_crc(os.path.join(tmp, STATE)), **info}
    write_manifest(tmp, store.layers, store.fields(), segments, extra)


def _remove_leftovers(folder: str) -> None:
    """Remove ``folder.tmp<pid>`` / ``folder.old<pid>`` left by a writer that was killed
    (a live writer's are kept)."""
    import glob

    from .leftovers import remove_dead

    remove_dead(glob.glob(f"{glob.escape(folder)}.tmp*") + glob.glob(f"{glob.escape(folder)}.old*"), r"\.(?:tmp|old)(\d+)$", own_are_stale=True)


class Entry:
    """A saved stream in ``folder`` (``read_entry``): its manifest's ``info``, its state tensors
    (``state``) and its blocks (``fill`` a store with them)."""

    def __init__(self, folder: str, manifest: dict) -> None:
        self.folder, self.manifest = folder, manifest

    @property
    def info(self) -> dict:
        """What the writer kept beside the layout (``write_entry``'s ``info``)."""
        return self.manifest

    def state(self, device: torch.device) -> Dict[str, torch.Tensor]:
        """The state tensors, checked against their checksum, on ``device``."""
        from safetensors.torch import load_file

        path = os.path.join(self.folder, STATE)
        if not os.path.isfile(path) or file_crc(path) != self.manifest["state_crc32"]:
            raise CorruptSegmentError(f"{path} is missing or fails its checksum")
        return load_file(path, device=str(device))

    def fill(self, store) -> None:
        """Append the saved blocks to the empty ``store`` (ValueError for another layout,
        ``CorruptSegmentError`` for a missing, truncated or altered file)."""
        fields = store.fields()
        expected = {k: {"shape": list(s), "dtype": str(d).replace("torch.", "")} for k, (s, d) in fields.items()}
        if self.manifest["fields"] != expected or self.manifest["layers"] != store.layers:
            raise ValueError(f"{self.folder} holds KV of another layout (kv_quant={self.manifest.get('kv_quant')!r})")
        for segment in self.manifest["segments"]:
            verify(self.folder, segment)
        for segment in self.manifest["segments"]:
            _load_segment(store, self.folder, segment, fields)


def read_entry(folder: str) -> Entry:
    """The stream saved in ``folder`` (FileNotFoundError when there is none)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no saved session at {folder} (no such folder)")
    return Entry(folder, read_manifest(folder))


def _load_segment(store, folder: str, segment: Segment, fields) -> None:
    from .backends.segments import field_bytes

    raw = torch.from_file(os.path.join(folder, segment.file), shared=False, size=segment.bytes, dtype=torch.uint8)
    first = store.reserve(segment.count)
    if first != segment.first:
        raise CorruptSegmentError(f"{segment.file} starts at frame {segment.first}, expected {first}")
    offset, rows = 0, {}
    for name, (shape, dtype) in fields.items():
        size = store.layers * segment.count * field_bytes(shape, dtype)
        rows[name] = raw[offset : offset + size].view(dtype).view(store.layers, segment.count, *shape)
        offset += size
    for layer in range(store.layers):
        store.backend.write(layer, first, {name: rows[name][layer] for name in rows})
    store.commit(segment.count)
