"""``stats()`` of a session: frames, tokens and bytes per tier, as a typed, JSON-serialisable
dictionary -- a function of the session's `StreamWriter` (it reads, never writes)."""

from __future__ import annotations

import logging
from typing import TypedDict

from .writer import StreamWriter

logger = logging.getLogger(__name__)


class StreamStats(TypedDict):
    """What ``ReKVSession.stats()`` returns: a plain ``dict`` at run time (JSON-serialisable),
    typed for readers and checkers. Counts are frames, blocks or tokens; sizes are bytes."""

    frames: int  # received = encoded_frames + provisional_frames + waiting_frames
    encoded_frames: int  # committed to the block store
    provisional_frames: int  # encoded into the provisional tail (encoded again with their chunk)
    waiting_frames: int  # not encoded yet (an odd frame waiting for its partner, or queued)
    blocks: int  # stored blocks (a block: 1 frame on LLaVA-OV, 2 on Qwen)
    stored_block_tokens: int  # tokens stored per block (fewer than encoded with token_reduction)
    pending_frames: int  # not committed: provisional + waiting in the session
    tokens: int  # stream tokens encoded
    sink_tokens: int
    window_tokens: int  # tokens in the sliding window now
    device_bytes: int  # every byte the session holds on the model's device
    device_kv_bytes: int
    summary_device_bytes: int
    index_host_bytes: int
    summary_bytes_per_block: int
    summary_bytes_per_frame: int
    pending_device_bytes: int
    tail_frames: int  # = provisional_frames (the name before 0.2)
    tail_device_bytes: int
    embedding_device_bytes: int
    cpu_bytes: int  # host RAM holding offloaded KV
    cpu_reserved_bytes: int
    summary_bytes: int
    disk_bytes: int
    embedding_bytes: int
    kv_bytes_per_block: int
    kv_bytes_per_frame: int  # a frame's share: KV per hour = this x fps x 3600


def stream_stats(writer: StreamWriter, frames: int) -> StreamStats:
    """Sizes of the stream ``writer`` holds (``frames``: the frames the session received, queued
    ones included): frames, tokens and bytes per tier.

    Frames received (``frames``) = ``encoded_frames`` (committed to the block store) +
    ``provisional_frames`` (encoded into the provisional tail, which questions use; encoded
    again with their chunk once it is complete) + ``waiting_frames`` (not encoded yet: an
    odd frame waiting for its block partner, or frames queued for the background encoder).
    ``pending_frames`` = provisional + those waiting in the session (not yet committed).

    ``device_bytes`` is every byte the session holds on the model's device (allocated):
    ``device_kv_bytes`` (KV in use: sinks + window, plus the stored frames on the
    ``device`` tier; bounded once the window is full on the other tiers) + the arenas'
    spare capacity on the ``device`` tier + ``summary_device_bytes`` (the fp32 per-block retrieval
    summaries, ``summary_bytes_per_block`` each, growing with the stream in doubling
    steps) + ``pending_device_bytes`` (preprocessed frames waiting for a chunk) +
    ``tail_device_bytes`` (the provisional tail: its window copy, summaries and, on the
    ``device`` tier, its blocks; at most one window + one chunk) +
    ``embedding_device_bytes`` (external retrieval). With ``summary_tier="cpu"`` the
    summaries and embeddings are in host RAM instead (``index_host_bytes``) and
    ``device_bytes`` stays flat however long the stream. Bytes are counted by tier (on a
    CPU-only machine the "device" is the CPU too). ``blocks`` count stored blocks (a block
    is ``frames_per_block`` frames: 1 on LLaVA-OV, 2 on Qwen); ``kv_bytes_per_block`` is
    one block's KV and ``kv_bytes_per_frame`` a frame's share of it (KV per hour =
    ``kv_bytes_per_frame`` x frames per second x 3600); likewise ``summary_bytes_per_*``."""
    st, store = writer.state, writer.state.store
    backend, config, device = store.backend, writer.config, writer.engine.device
    on_device = config.offload == "device"
    ram = 0 if on_device else backend.ram_bytes
    kv_device = st.device_bytes() + (store.used_bytes if on_device else 0)
    arena_slack = store.reserved_bytes - store.used_bytes if on_device else 0
    index_on_device = config.summary_tier == "device"
    rows = writer.embedding_rows
    emb_bytes, emb_used = (0, 0) if rows is None else (rows.allocated_bytes, rows.nbytes)
    emb_device = emb_bytes if index_on_device else 0
    summaries = store.summary_allocated_bytes if index_on_device else 0
    tail = _tail_device_bytes(writer, device)
    pending = writer.pending.device_bytes(device)
    per_block = writer.family.frames_per_block  # frames per stored block (2 on Qwen: a temporal patch)
    encoded = store.blocks * per_block
    return StreamStats(**{
        "frames": frames,
        "encoded_frames": encoded,
        "provisional_frames": writer.tail.frames,
        "waiting_frames": frames - encoded - writer.tail.frames,
        "blocks": store.blocks,
        "stored_block_tokens": store.block_tokens,
        "pending_frames": writer.pending.count,
        "tokens": st.stream_tokens,
        "sink_tokens": st.sinks,
        "window_tokens": st.window_len,
        "device_bytes": kv_device + arena_slack + summaries + pending + tail + emb_device,
        "device_kv_bytes": kv_device,
        "summary_device_bytes": summaries,
        "index_host_bytes": 0 if index_on_device else store.summary_allocated_bytes + emb_bytes,
        "summary_bytes_per_block": store.summary_bytes_per_block,
        "summary_bytes_per_frame": store.summary_bytes_per_block // per_block,
        "pending_device_bytes": pending,
        "tail_frames": writer.tail.frames,
        "tail_device_bytes": tail,
        "embedding_device_bytes": emb_device,
        "cpu_bytes": ram,
        "cpu_reserved_bytes": 0 if on_device else store.reserved_bytes,
        "summary_bytes": store.summary_bytes,
        "disk_bytes": backend.disk_bytes,
        "embedding_bytes": emb_used,
        "kv_bytes_per_block": store.bytes_per_block,
        "kv_bytes_per_frame": store.bytes_per_block // per_block,  # a frame's share (K and V: always even); GiB/h = this x fps x 3600
    })


def _tail_device_bytes(writer: StreamWriter, device) -> int:
    """Bytes the provisional tail holds on the model's device: its window copy, its summaries
    (``summary_tier="device"``) and, on the ``device`` tier, its blocks."""
    tail = writer.tail.state
    if tail is None:
        return 0
    extra, config = tail.store.extra, writer.config
    window = sum(t.numel() * t.element_size() for t in (*tail.win_k, *tail.win_v) if t.device == device)
    blocks = extra.reserved_bytes if config.offload == "device" else 0
    return window + blocks + (extra.summary_allocated_bytes if config.summary_tier == "device" else 0)
