"""Block store: every frame's per-layer pre-RoPE keys and values.

One block = one temporal patch of the family (1 frame on LLaVA-OV, 2 on Qwen) =
``block_tokens`` tokens. A codec (``quant``: exact, int8, int4)
turns a chunk's keys/values into stored fields; a backend (``backends``: growing in-memory
arenas ``(layers, capacity, *field_shape)`` on the CPU -- pinned when the model runs on
CUDA -- or on the device; or RAM + segment files on disk) keeps them, one copy per layer and
chunk, never one allocation per frame. Per-layer block summaries (mean pre-RoPE key of each
frame, fp32, exact whatever the codec) are kept for scoring on the model's device, or in host
RAM (``summary_device``) so that device memory does not grow with the stream.
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch

from .reduce import reduce_span, stored_layout

logger = logging.getLogger(__name__)


class Renamed:
    """A deprecated ``BlockStore`` attribute: reads ``new`` (a method when it ends with ``()``)
    with a ``DeprecationWarning``."""

    def __init__(self, new: str) -> None:
        self.new = new

    def __set_name__(self, owner, name: str) -> None:
        self.old = f"{name}()" if self.new.endswith("()") else name

    def __get__(self, store, owner=None):
        if store is None:
            return self
        warnings.warn(f"BlockStore.{self.old} is deprecated; use {self.new} (a block is 2 frames on Qwen)",
                      DeprecationWarning, stacklevel=2)
        return getattr(store, self.new.removesuffix("()"))


class Gathered(NamedTuple):
    """Blocks read from a store (``BlockStore.read_blocks``)."""

    keys: torch.Tensor
    values: torch.Tensor
    slots: Optional[torch.Tensor]  # the written block slot each stored token stands for (None: one to one)


class BlockStore:
    """Append-only store of frame KV blocks; readers never mutate it.

    A codec (exact or int8/int4) turns each chunk's keys/values into stored fields; a
    backend (memory, or disk with a RAM budget) keeps them. The per-frame mean pre-RoPE key
    of every layer (``summaries``, fp32, exact) is kept on ``summary_device`` (default: the
    model's device) for scoring; ``summary_tokens`` picks the tokens of a block it averages
    (default: all; a family whose blocks hold text or padding slots names its visual ones).
    ``reducer`` (``storage.reduce``): the ``summary_tokens`` of each written block (its
    ``reducer.tokens`` visual tokens) are cut to ``reducer.keep`` before they are stored -- KV
    and summaries -- the other slots kept as they are; with ``keep_slots`` (families that position
    each kept token where it stood: M-RoPE) a ``slots`` field beside the KV says which slot of
    the written block each stored token stands for (``read_blocks``)."""

    def __init__(
        self,
        layers: int,
        block_tokens: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        storage_device: torch.device,
        model_device: torch.device,
        initial_capacity: int = 64,
        kv_quant: Optional[str] = None,
        backend_factory: Optional[Callable] = None,
        summary_device: Optional[torch.device] = None,
        summary_tokens: Optional[slice] = None,
        reducer=None,
        keep_slots: bool = False,
    ) -> None:
        from .backends import MemoryBackend
        from .quant import make_codec

        self.reducer, self.input_tokens = reducer, block_tokens  # tokens per block as written
        self.keep_slots = keep_slots and reducer is not None
        self.span, block_tokens, self.summary_tokens = stored_layout(block_tokens, summary_tokens, reducer)
        self.layers, self.block_tokens = layers, block_tokens
        self.kv_heads, self.head_dim, self.dtype = kv_heads, head_dim, dtype
        model_device = torch.device(model_device)
        self.summary_device = model_device if summary_device is None else torch.device(summary_device)
        self.codec = make_codec(kv_quant, block_tokens, kv_heads, head_dim, dtype)
        storage_device = torch.device(storage_device)
        pin = storage_device.type == "cpu" and model_device.type == "cuda"
        if backend_factory is not None:  # e.g. the disk tier: built for this store's fields
            self.backend = backend_factory(self.fields())
        else:
            self.backend = MemoryBackend(layers, self.fields(), storage_device, pin, initial_capacity)
        self._summaries = GrowingRows(kv_heads * head_dim, self.summary_device, layers=layers, capacity=initial_capacity)

    @property
    def blocks(self) -> int:
        """Blocks stored (a block is one temporal patch: 1 frame on LLaVA-OV, 2 on Qwen)."""
        return self.backend.blocks

    def reserve(self, n_blocks: int) -> int:
        """Make room for ``n_blocks`` more blocks; returns the index of the first one.

        The blocks count as stored once every layer has been written and ``commit`` called."""
        if n_blocks < 1:
            raise ValueError("reserve needs at least one block")
        self._summaries.reserve(n_blocks)
        return self.backend.reserve(n_blocks)

    def commit(self, n_blocks: int) -> None:
        """Mark ``n_blocks`` reserved blocks as written on every layer."""
        self._summaries.rows += n_blocks
        self.backend.commit(n_blocks)

    def fields(self) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
        """What the backend keeps per block and layer: the codec's fields, and with a reducer the
        ``slots`` ``(block_tokens,)`` int16 each stored token stands for."""
        fields = dict(self.codec.fields())
        if self.keep_slots:
            fields["slots"] = ((self.block_tokens,), torch.int16)
        return fields

    def write(self, layer: int, first: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store blocks ``first..first+n`` of ``layer``.

        keys, values: ``(n * input_tokens, kv_heads, head_dim)`` pre-RoPE, any device (their
        ``summary_tokens`` cut by the ``reducer``, if any)."""
        n = keys.shape[0] // self.input_tokens
        shape = (n, self.input_tokens, self.kv_heads, self.head_dim)
        keys, values = keys.reshape(shape), values.reshape(shape)
        slots = None
        if self.reducer is not None:
            keys, values, slots = reduce_span(self.reducer, layer, keys, values, self.span)
        self._summaries.write(layer, first, keys[:, self.summary_tokens].float().mean(dim=1).reshape(n, -1))
        fields = self.codec.encode(keys, values)
        if self.keep_slots:
            fields["slots"] = slots.to(torch.int16)
        self.backend.write(layer, first, fields)

    def extend_from(self, other: "BlockStore") -> None:
        """Append every block of ``other`` (a store with the same layout and codec) as it is
        stored: the fields are copied, not decoded and re-encoded, so the blocks are
        bit-identical to writing the same keys and values here."""
        n = other.blocks
        if not n:
            return
        first = self.reserve(n)
        index = torch.arange(n)
        for layer in range(self.layers):
            self.backend.write(layer, first, other.backend.read(layer, index))
            self._summaries.write(layer, first, other._summaries.view(layer))
        self.commit(n)
        if self.reducer is not None and other.reducer is not None:
            self.reducer.adopt(other.reducer)  # its blocks come last now

    def load_summaries(self, summaries: torch.Tensor) -> None:
        """Restore ``(layers, blocks, kv_heads, head_dim)`` summaries of stored blocks (reopened
        sessions; none when the stream was saved before its first chunk was committed)."""
        if summaries.shape[1] == 0:
            return
        for layer in range(self.layers):
            self._summaries.write(layer, 0, summaries[layer].reshape(summaries.shape[1], -1))

    def summaries(self, layer: int) -> torch.Tensor:
        """Mean pre-RoPE key per frame, ``(frames, kv_heads, head_dim)`` fp32 on ``summary_device``."""
        return self._summaries.view(layer).view(-1, self.kv_heads, self.head_dim)

    def all_summaries(self) -> torch.Tensor:
        """``(layers, frames, kv_heads, head_dim)`` fp32."""
        return self._summaries.view().view(self.layers, -1, self.kv_heads, self.head_dim)

    def read_blocks(self, frames: torch.Tensor, device: torch.device, layer: Optional[int] = None) -> Gathered:
        """Keys, values and slots of blocks ``frames`` (1-D index, any order) on ``layer`` (None:
        every layer, a leading layer dim), in one batched read; the fields move to ``device`` and
        are decoded there. Keys/values ``([layers,] len(frames) * block_tokens, kv_heads,
        head_dim)``; slots ``([layers,] len(frames), block_tokens)`` long, None unless ``keep_slots``."""
        rows = self.backend.read_all(frames) if layer is None else self.backend.read(layer, frames)
        fields = {k: v.to(device, non_blocking=True) for k, v in rows.items()}
        slots = fields.pop("slots", None)
        keys, values = self.codec.decode(fields)
        flat = (-1, self.kv_heads, self.head_dim) if layer is not None else (self.layers, -1, self.kv_heads, self.head_dim)
        return Gathered(keys.reshape(flat), values.reshape(flat), None if slots is None else slots.long())

    def gather(self, layer: int, frames: torch.Tensor, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``frames`` on ``layer`` (``read_blocks``): two
        ``(len(frames) * block_tokens, kv_heads, head_dim)`` tensors on ``device``."""
        return self.read_blocks(frames, device, layer)[:2]

    def gather_all(self, frames: torch.Tensor, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """``gather`` for every layer at once (one batched read and copy when the same frames
        serve all layers): two ``(layers, len(frames) * block_tokens, kv_heads, head_dim)``."""
        return self.read_blocks(frames, device)[:2]

    def block(self, layer: int, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """One stored block, decoded: two ``(block_tokens, kv_heads, head_dim)`` tensors."""
        if not 0 <= index < self.blocks:
            raise IndexError(f"block {index} not stored (have {self.blocks})")
        keys, values = self.gather(layer, torch.tensor([index]), self.backend_device)
        return keys.view(self.block_tokens, self.kv_heads, self.head_dim), values.view(self.block_tokens, self.kv_heads, self.head_dim)

    @property
    def backend_device(self) -> torch.device:
        return self.backend.device

    # -- accounting -----------------------------------------------------------------------
    @property
    def bytes_per_block(self) -> int:
        """Stored bytes of one block over all layers (exact: layers * 2 * kv_heads * head_dim
        * itemsize * block_tokens; less with int8/int4; with ``keep_slots`` + layers * 2 *
        block_tokens for the slots)."""
        slots = self.layers * 2 * self.block_tokens if self.keep_slots else 0
        return self.codec.bytes_per_block(self.layers) + slots

    @property
    def used_bytes(self) -> int:
        return self.blocks * self.bytes_per_block

    @property
    def reserved_bytes(self) -> int:
        return self.backend.reserved_bytes

    @property
    def summary_bytes(self) -> int:
        """Bytes of the per-frame retrieval summaries in use (on ``summary_device``)."""
        return self._summaries.nbytes

    @property
    def summary_allocated_bytes(self) -> int:
        return self._summaries.allocated_bytes

    @property
    def summary_bytes_per_block(self) -> int:
        """layers * kv_heads * head_dim * 4 (fp32 mean key per layer)."""
        return self.layers * self.kv_heads * self.head_dim * 4

    def close(self) -> None:
        self.backend.close()

    # -- the names from one-frame blocks (deprecated) ------------------------------------------
    frames = Renamed("blocks")
    frame = Renamed("block()")
    bytes_per_frame = Renamed("bytes_per_block")
    summary_bytes_per_frame = Renamed("summary_bytes_per_block")


class GrowingRows:
    """Rows appended in batches to preallocated ``(layers, capacity, width)`` storage whose
    capacity doubles (``layers=None``: one ``(capacity, width)`` table)."""

    def __init__(self, width: int, device: torch.device, dtype: torch.dtype = torch.float32, capacity: int = 64,
                 layers: Optional[int] = None) -> None:
        self._flat = layers is None
        self._data = torch.empty((1 if self._flat else layers, capacity, width), dtype=dtype, device=device)
        self.rows = 0

    def reserve(self, n: int) -> None:
        need = self.rows + n
        if need > self._data.shape[1]:
            capacity = self._data.shape[1]
            while capacity < need:
                capacity *= 2
            grown = self._data.new_empty((self._data.shape[0], capacity, self._data.shape[2]))
            grown[:, : self.rows] = self._data[:, : self.rows]
            self._data = grown

    def write(self, layer: int, first: int, rows: torch.Tensor) -> None:
        self._data[layer, first : first + rows.shape[0]] = rows.to(self._data)

    def append(self, rows: torch.Tensor) -> None:
        """Flat tables: add rows at the end."""
        self.reserve(rows.shape[0])
        self.write(0, self.rows, rows)
        self.rows += rows.shape[0]

    def view(self, layer: Optional[int] = None) -> torch.Tensor:
        if layer is None:
            return self._data[0, : self.rows] if self._flat else self._data[:, : self.rows]
        return self._data[layer, : self.rows]

    @property
    def nbytes(self) -> int:
        """Bytes of the rows in use."""
        return self._data.shape[0] * self.rows * self._data.shape[2] * self._data.element_size()

    @property
    def allocated_bytes(self) -> int:
        """Bytes allocated (capacity doubles as rows are added)."""
        return self._data.numel() * self._data.element_size()

    @property
    def device(self) -> torch.device:
        return self._data.device


class OverlayStore:
    """A read view of ``base`` followed by the blocks of ``extra`` (a small store of its own):
    blocks that exist for one question only (an incomplete last block padded as the vanilla
    processor pads it) without touching the stream's store. Block ``i >= base.blocks`` is
    ``extra``'s block ``i - base.blocks``; writes go to ``extra``."""

    def __init__(self, base: BlockStore, extra: BlockStore) -> None:
        self.base, self.extra = base, extra
        self.layers, self.block_tokens = base.layers, base.block_tokens
        self.kv_heads, self.head_dim = base.kv_heads, base.head_dim

    @property
    def blocks(self) -> int:
        return self.base.blocks + self.extra.blocks

    @property
    def reducer(self):
        """The token reducer writes continue with (the extra store's: it follows the base)."""
        return self.extra.reducer

    def reserve(self, n_frames: int) -> int:
        return self.base.blocks + self.extra.reserve(n_frames)

    def commit(self, n_frames: int) -> None:
        self.extra.commit(n_frames)

    def write(self, layer: int, first: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.extra.write(layer, first - self.base.blocks, keys, values)

    def summaries(self, layer: int) -> torch.Tensor:
        return torch.cat([self.base.summaries(layer), self.extra.summaries(layer)])

    def _split(self, frames: torch.Tensor):
        """``frames`` (time order) as (indices into base, indices into extra)."""
        cut = int((frames < self.base.blocks).sum())
        return frames[:cut], frames[cut:] - self.base.blocks

    def read_blocks(self, frames: torch.Tensor, device: torch.device, layer: Optional[int] = None) -> Gathered:
        """``BlockStore.read_blocks`` over both stores."""
        mine, theirs = self._split(frames)
        parts = [store.read_blocks(idx, device, layer) for store, idx in ((self.base, mine), (self.extra, theirs)) if len(idx)]
        dim = 0 if layer is not None else 1  # after the layer dim, when there is one
        slots = None if parts[0].slots is None else torch.cat([p.slots for p in parts], dim=dim)
        return Gathered(torch.cat([p.keys for p in parts], dim=dim), torch.cat([p.values for p in parts], dim=dim), slots)

    def gather(self, layer: int, frames: torch.Tensor, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.read_blocks(frames, device, layer)[:2]

    def gather_all(self, frames: torch.Tensor, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.read_blocks(frames, device)[:2]

    def close(self) -> None:
        self.extra.close()


def make_store(config, tier: str, kv_shape: Tuple[int, int, int], block_tokens: int, dtype: torch.dtype,
               model_device: torch.device, summary_device: torch.device, capacity: int = 64,
               summary_tokens: Optional[slice] = None, reducer=None, keep_slots: bool = False) -> BlockStore:
    """An empty block store on ``tier`` (``cpu``, ``device`` or ``disk``) for blocks of
    ``block_tokens`` tokens of ``kv_shape`` ``(layers, kv_heads, head_dim)``, with the storage
    settings ``config`` (``lmms_rekv.settings.StorageSettings``: ``kv_quant``,
    ``token_reduction``/``token_keep``, the disk tier's ``offload_dir`` and ``ram_budget_bytes``);
    the backend is the one registered for ``tier`` (``lmms_rekv.registry.BACKENDS``). ``reducer``: a token reducer to
    continue (a fork's); default a new one when ``token_reduction`` is set, cutting the
    ``summary_tokens`` (the visual ones); ``keep_slots``: store which slot each kept token
    stands for (``BlockStore``)."""
    from .reduce import make_reducer

    if reducer is None and config.token_reduction is not None:  # the summary tokens (the visual ones) are cut
        visual = len(range(block_tokens)[summary_tokens or slice(None)])
        reducer = make_reducer(config.token_reduction, visual, config.stored_tokens(visual))
    from lmms_rekv.registry import BACKENDS

    layers, kv_heads, head_dim = kv_shape
    storage = torch.device(model_device) if tier == "device" else torch.device("cpu")
    pin = storage.type == "cpu" and torch.device(model_device).type == "cuda"
    backend = BACKENDS.get(tier)
    factory = lambda fields: backend(layers, fields, config, storage, pin, capacity)  # noqa: E731
    return BlockStore(layers, block_tokens, kv_heads, head_dim, dtype, storage, model_device, initial_capacity=capacity,
                      kv_quant=config.kv_quant, backend_factory=factory, summary_device=summary_device,
                      summary_tokens=summary_tokens, reducer=reducer, keep_slots=keep_slots)
