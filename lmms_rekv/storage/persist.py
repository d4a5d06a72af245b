"""Persisted encoded videos: a session's whole state saved to a folder and reopened
instead of re-encoding.

Folder layout: ``seg_*.bin`` KV segments (see ``backends.segments``), ``state.safetensors``
(sinks, sliding window, per-frame summaries, external embeddings) and ``manifest.json``,
written last: a folder without a manifest is an unfinished save. Every file carries a
CRC-32 that ``load_session`` checks; a mismatch raises ``CorruptSegmentError``.

Which folder holds which video is the caller's business (lmms-eval: ``integrations.cache``).
"""

from __future__ import annotations

import logging
import os
import shutil

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


def save_session(session, folder: str, **meta) -> None:
    """Write ``session`` to ``folder``, replacing it: the committed stream as stored and the
    frames of its incomplete last chunk as preprocessed pixels (saving changes nothing: a
    reopened session goes on exactly as the saved one would; ``flush`` first to store them
    encoded, e.g. at the end of a video)."""
    store = session.state.store
    _remove_leftovers(folder)
    tmp = f"{folder}.tmp{os.getpid()}"
    try:
        _write_entry(session, store, tmp, meta)
    except OSError as exc:  # disk full, file-size limit, permission denied: nothing half-written stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(exc.errno, f"cannot save the session to {folder}: {exc.strerror or exc}") from exc
    old = f"{folder}.old{os.getpid()}"
    if os.path.exists(folder):  # moved aside, not removed in place: a kill never leaves a half-deleted entry
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    logger.info("saved %d frames to %s", store.blocks, folder)


def _write_entry(session, store, tmp: str, meta: dict) -> None:
    """Segments, state tensors and manifest of ``session`` into the new folder ``tmp``."""
    from safetensors.torch import save_file

    os.makedirs(tmp)
    segments = []
    backend = store.backend
    files = backend.files()
    if files is not None:  # e.g. the disk tier: its segments are already on disk
        folder, on_disk = files
        for segment in on_disk:
            shutil.copyfile(os.path.join(folder, segment.file), os.path.join(tmp, segment.file))
            segments.append(segment)
    else:
        for index, first in enumerate(range(0, store.blocks, SEGMENT_FRAMES)):
            last = min(store.blocks, first + SEGMENT_FRAMES)
            segments.append(write_segment(tmp, index, first, backend.rows(first, last)))
    save_file(session.export_state(), os.path.join(tmp, STATE))
    extra = {
        "frames": store.blocks, "stream_tokens": session.state.stream_tokens, "state_crc32": file_crc(os.path.join(tmp, STATE)),
        "kv_quant": session.config.kv_quant, "fps": session.fps, "meta": meta,
        "frame_size": list(session.backbone.frame_size or []) or None,
        "frame_times": None if session.frame_times is None else list(session.frame_times),
    }
    write_manifest(tmp, store.layers, store.codec.fields(), segments, extra)


def _remove_leftovers(folder: str) -> None:
    """Remove ``folder.tmp<pid>`` / ``folder.old<pid>`` left by a writer that was killed
    (a live writer's are kept)."""
    import glob

    from .leftovers import remove_dead

    remove_dead(glob.glob(f"{glob.escape(folder)}.tmp*") + glob.glob(f"{glob.escape(folder)}.old*"), r"\.(?:tmp|old)(\d+)$", own_are_stale=True)


def load_session(engine, folder: str):
    """A new session of ``engine`` holding the stream saved in ``folder``.

    Raises ``FileNotFoundError`` when ``folder`` does not exist, ``CorruptSegmentError`` when
    a file of it is missing, truncated or altered, and ``ValueError`` when the entry was
    written with other settings."""
    from safetensors.torch import load_file

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no saved session at {folder} (no such folder)")

    manifest = read_manifest(folder)
    size = manifest.get("frame_size")
    session = engine.new_session(fps=manifest.get("fps"), frame_size=tuple(size) if size else None,
                                 frame_times=manifest.get("frame_times"))
    store = session.state.store
    fields = store.codec.fields()
    expected = {k: {"shape": list(s), "dtype": str(d).replace("torch.", "")} for k, (s, d) in fields.items()}
    if manifest["fields"] != expected or manifest["layers"] != store.layers:
        raise ValueError(f"{folder} holds KV of another layout (kv_quant={manifest.get('kv_quant')!r})")
    for segment in manifest["segments"]:
        verify(folder, segment)
    state_path = os.path.join(folder, STATE)
    if not os.path.isfile(state_path) or file_crc(state_path) != manifest["state_crc32"]:
        raise CorruptSegmentError(f"{state_path} is missing or fails its checksum")
    state = load_file(state_path, device=str(engine.device))
    for segment in manifest["segments"]:
        _load_segment(store, folder, segment, fields)
    session.restore_state(state, manifest["stream_tokens"])
    session.saved_meta = manifest.get("meta", {})
    return session


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
