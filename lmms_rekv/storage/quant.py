"""KV codecs for offloaded blocks: exact, int8 or int4 (KIVI-style).

Keys are quantized per channel (min/max over the frame's tokens for every head and
channel), values per token (min/max over the channels of every token and head), both
asymmetric with round-to-nearest; int4 packs two codes per byte. Scales and minima are
float16. The error of every element is at most half a quantization step,
``(max - min) / (2 * (2**bits - 1))`` of its group, plus float16 rounding of the group's
min and scale. Blocks are dequantized to the model dtype when loaded; the device window
and sinks stay in the model dtype.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

Fields = Dict[str, Tuple[tuple, torch.dtype]]


class Codec:
    """Converts a batch of frames' keys/values ``(n, T, H, D)`` to stored fields and back."""

    bits: Optional[int] = None

    def __init__(self, frame_tokens: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> None:
        self.t, self.h, self.d, self.dtype = frame_tokens, kv_heads, head_dim, dtype

    def fields(self) -> Fields:
        """Per-frame shape and dtype of every stored field."""
        return {"k": ((self.t, self.h, self.d), self.dtype), "v": ((self.t, self.h, self.d), self.dtype)}

    def encode(self, keys: torch.Tensor, values: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"k": keys, "v": values}

    def decode(self, fields: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        return fields["k"], fields["v"]

    def bytes_per_block(self, layers: int) -> int:
        """Stored bytes of one block over ``layers`` layers."""
        per_layer = sum(torch.Size(shape).numel() * torch.empty((), dtype=dt).element_size() for shape, dt in self.fields().values())
        return layers * per_layer


class QuantCodec(Codec):
    """Asymmetric ``bits``-bit codes: keys per channel, values per token."""

    def __init__(self, frame_tokens: int, kv_heads: int, head_dim: int, dtype: torch.dtype, bits: int) -> None:
        super().__init__(frame_tokens, kv_heads, head_dim, dtype)
        if bits not in (4, 8) or (bits == 4 and head_dim % 2):
            raise ValueError(f"unsupported quantization: {bits} bits with head_dim {head_dim}")
        self.bits, self.levels = bits, 2**bits - 1
        self.width = head_dim if bits == 8 else head_dim // 2

    def fields(self) -> Fields:
        t, h, d, half = self.t, self.h, self.d, torch.float16
        return {
            "k": ((t, h, self.width), torch.uint8), "k_min": ((h, d), half), "k_scale": ((h, d), half),
            "v": ((t, h, self.width), torch.uint8), "v_min": ((t, h), half), "v_scale": ((t, h), half),
        }

    def encode(self, keys, values):
        k_codes, k_min, k_scale = self._quantize(keys, dim=1)  # per channel: over tokens
        v_codes, v_min, v_scale = self._quantize(values, dim=3)  # per token: over channels
        return {"k": k_codes, "k_min": k_min, "k_scale": k_scale, "v": v_codes, "v_min": v_min, "v_scale": v_scale}

    def decode(self, fields):
        """Fields of ``(..., blocks)`` stored blocks (any leading dims, e.g. layers) -> keys and
        values ``(..., blocks, t, h, d)``: key ranges broadcast over tokens, value ranges over channels."""
        keys = self._dequantize(fields["k"], fields["k_min"].unsqueeze(-3), fields["k_scale"].unsqueeze(-3))
        values = self._dequantize(fields["v"], fields["v_min"].unsqueeze(-1), fields["v_scale"].unsqueeze(-1))
        return keys, values

    def _quantize(self, x: torch.Tensor, dim: int):
        x = x.float()
        low = x.amin(dim=dim, keepdim=True).half().float()
        scale = ((x.amax(dim=dim, keepdim=True) - low) / self.levels).half().float()
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        codes = ((x - low) / safe).round_().clamp_(0, self.levels).to(torch.uint8)
        if self.bits == 4:
            codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
        return codes, low.squeeze(dim).half(), scale.squeeze(dim).half()

    def _dequantize(self, codes: torch.Tensor, low: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        if self.bits == 4:
            codes = torch.stack([codes & 0xF, codes >> 4], dim=-1).flatten(-2)
        return (codes.float() * scale.float() + low.float()).to(self.dtype)


def make_codec(kind: Optional[str], frame_tokens: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> Codec:
    if kind is None:
        return Codec(frame_tokens, kv_heads, head_dim, dtype)
    bits = {"int8": 8, "int4": 4}.get(kind)
    if bits is None:
        raise ValueError(f"kv_quant must be None, 'int8' or 'int4', got {kind!r}")
    return QuantCodec(frame_tokens, kv_heads, head_dim, dtype, bits)
