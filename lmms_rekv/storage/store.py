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
from typing import Callable, Optional, Tuple

import torch

logger = logging.getLogger(__name__)


class BlockStore:
    """Append-only store of frame KV blocks; readers never mutate it.

    A codec (exact or int8/int4) turns each chunk's keys/values into stored fields; a
    backend (memory, or disk with a RAM budget) keeps them. The per-frame mean pre-RoPE key
    of every layer (``summaries``, fp32, exact) is kept on ``summary_device`` (default: the
    model's device) for scoring; ``summary_tokens`` picks the tokens of a block it averages
    (default: all; a family whose blocks hold text or padding slots names its visual ones).
    ``reducer`` (``storage.reduce``): blocks are written with ``reducer.tokens`` tokens and
    stored -- KV and summaries -- with ``reducer.keep`` (``block_tokens``)."""

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
    ) -> None:
        from .backends import MemoryBackend
        from .quant import make_codec

        self.reducer, self.input_tokens = reducer, block_tokens  # tokens per block as written
        if reducer is not None:
            if summary_tokens is not None or reducer.tokens != block_tokens:
                raise ValueError("token reduction needs blocks whose every slot is a token of the block")
            block_tokens = reducer.keep
        self.layers, self.block_tokens = layers, block_tokens
        self.summary_tokens = slice(None) if summary_tokens is None else summary_tokens
        self.kv_heads, self.head_dim, self.dtype = kv_heads, head_dim, dtype
        model_device = torch.device(model_device)
        self.summary_device = model_device if summary_device is None else torch.device(summary_device)
        self.codec = make_codec(kv_quant, block_tokens, kv_heads, head_dim, dtype)
        storage_device = torch.device(storage_device)
        pin = storage_device.type == "cpu" and model_device.type == "cuda"
        if backend_factory is not None:  # e.g. the disk tier: built for this codec's fields
            self.backend = backend_factory(self.codec.fields())
        else:
            self.backend = MemoryBackend(layers, self.codec.fields(), storage_device, pin, initial_capacity)
        self._summaries = GrowingRows(kv_heads * head_dim, self.summary_device, layers=layers, capacity=initial_capacity)

    @property
    def blocks(self) -> int:
        """Blocks stored (a block is one temporal patch: 1 frame on LLaVA-OV, 2 on Qwen)."""
        return self.backend.blocks

    @property
    def frames(self) -> int:
        """Deprecated name of ``blocks``."""
        import warnings

        warnings.warn("BlockStore.frames is deprecated; use blocks (a block is 2 frames on Qwen)", DeprecationWarning, stacklevel=2)
        return self.blocks

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

    def write(self, layer: int, first: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store frames ``first..first+n`` of ``layer``.

        keys, values: ``(n * input_tokens, kv_heads, head_dim)`` pre-RoPE, any device (cut to
        ``block_tokens`` per block by the ``reducer``, if any)."""
        n = keys.shape[0] // self.input_tokens
        shape = (n, self.input_tokens, self.kv_heads, self.head_dim)
        keys, values = keys.reshape(shape), values.reshape(shape)
        if self.reducer is not None:
            keys, values = self.reducer.reduce(layer, keys, values)
        self._summaries.write(layer, first, keys[:, self.summary_tokens].float().mean(dim=1).reshape(n, -1))
        self.backend.write(layer, first, self.codec.encode(keys, values))

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

    def gather(self, layer: int, frames: torch.Tensor, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``frames`` (1-D index, any order) on ``layer``, in one batched
        read; stored fields move to ``device`` and are decoded there.

        Returns two ``(len(frames) * block_tokens, kv_heads, head_dim)`` tensors on ``device``."""
        fields = {k: v.to(device, non_blocking=True) for k, v in self.backend.read(layer, frames).items()}
        keys, values = self.codec.decode(fields)
        flat = (-1, self.kv_heads, self.head_dim)
        return keys.reshape(flat), values.reshape(flat)

    def gather_all(self, frames: torch.Tensor, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """``gather`` for every layer at once (one batched read and copy when the same frames
        serve all layers): two ``(layers, len(frames) * block_tokens, kv_heads, head_dim)``."""
        fields = {k: v.to(device, non_blocking=True) for k, v in self.backend.read_all(frames).items()}
        keys, values = self.codec.decode(fields)
        flat = (self.layers, -1, self.kv_heads, self.head_dim)
        return keys.reshape(flat), values.reshape(flat)

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
        * itemsize * block_tokens; less with int8/int4)."""
        return self.codec.bytes_per_block(self.layers)

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
    def frame(self, layer: int, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Deprecated name of ``block``."""
        _renamed("frame()", "block()")
        return self.block(layer, index)

    @property
    def bytes_per_frame(self) -> int:
        """Deprecated name of ``bytes_per_block``."""
        _renamed("bytes_per_frame", "bytes_per_block")
        return self.bytes_per_block

    @property
    def summary_bytes_per_frame(self) -> int:
        """Deprecated name of ``summary_bytes_per_block``."""
        _renamed("summary_bytes_per_frame", "summary_bytes_per_block")
        return self.summary_bytes_per_block


def _renamed(old: str, new: str) -> None:
    import warnings

    warnings.warn(f"BlockStore.{old} is deprecated; use {new} (a block is 2 frames on Qwen)", DeprecationWarning, stacklevel=3)


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

    def gather(self, layer: int, frames: torch.Tensor, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        mine, theirs = self._split(frames)
        parts = [store.gather(layer, idx, device) for store, idx in ((self.base, mine), (self.extra, theirs)) if len(idx)]
        return torch.cat([k for k, _ in parts]), torch.cat([v for _, v in parts])

    def gather_all(self, frames: torch.Tensor, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        mine, theirs = self._split(frames)
        parts = [store.gather_all(idx, device) for store, idx in ((self.base, mine), (self.extra, theirs)) if len(idx)]
        return torch.cat([k for k, _ in parts], dim=1), torch.cat([v for _, v in parts], dim=1)

    def close(self) -> None:
        self.extra.close()


def make_store(config, tier: str, kv_shape: Tuple[int, int, int], block_tokens: int, dtype: torch.dtype,
               model_device: torch.device, summary_device: torch.device, capacity: int = 64,
               summary_tokens: Optional[slice] = None, reducer=None) -> BlockStore:
    """An empty block store on ``tier`` (``cpu``, ``device`` or ``disk``) for blocks of
    ``block_tokens`` tokens of ``kv_shape`` ``(layers, kv_heads, head_dim)``, with the storage
    settings ``config`` (``lmms_rekv.settings.StorageSettings``: ``kv_quant``,
    ``token_reduction``/``token_keep``, the disk tier's ``offload_dir`` and ``ram_budget_bytes``);
    the backend is the one registered for ``tier`` (``lmms_rekv.registry.BACKENDS``). ``reducer``: a token reducer to
    continue (a fork's); default a new one when ``token_reduction`` is set."""
    from .reduce import make_reducer

    if reducer is None and config.token_reduction is not None:
        reducer = make_reducer(config.token_reduction, block_tokens, config.stored_tokens(block_tokens))
    from lmms_rekv.registry import BACKENDS

    layers, kv_heads, head_dim = kv_shape
    storage = torch.device(model_device) if tier == "device" else torch.device("cpu")
    pin = storage.type == "cpu" and torch.device(model_device).type == "cuda"
    backend = BACKENDS.get(tier)
    factory = lambda fields: backend(layers, fields, config, storage, pin, capacity)  # noqa: E731
    return BlockStore(layers, block_tokens, kv_heads, head_dim, dtype, storage, model_device, initial_capacity=capacity,
                      kv_quant=config.kv_quant, backend_factory=factory, summary_device=summary_device,
                      summary_tokens=summary_tokens, reducer=reducer)
