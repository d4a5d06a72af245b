"""Model families, installed as ``lmms_rekv.patches``: one adapter file per family.

Each adapter subclasses :class:`~lmms_rekv.patches.base.Backbone` -- block structure, KV
layers, pre-RoPE capture points, block features, prompt layout, positions and RoPE -- and
routes the text tower's attention to ReKV handlers through transformers' documented
extension points (``AttentionInterface`` and forward hooks); no upstream ``forward`` is
copied. These files are the only places that name a family.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict

FAMILIES: Dict[str, str] = {
    "llava_onevision": "lmms_rekv.patches.llava_onevision:LlavaOnevisionBackbone",
    "qwen2_vl": "lmms_rekv.patches.qwen2_vl:Qwen2VLBackbone",
    "qwen2_5_vl": "lmms_rekv.patches.qwen2_vl:Qwen2_5_VLBackbone",
    "qwen3_vl": "lmms_rekv.patches.qwen3_vl:Qwen3VLBackbone",
    "qwen3_vl_moe": "lmms_rekv.patches.qwen3_vl:Qwen3VLMoeBackbone",
}


_HYBRID = ("3 of every 4 decoder layers are Gated DeltaNet layers whose state is a fixed-size running summary of the "
           "whole stream (no per-frame KV): frames cannot be offloaded, retrieved or re-positioned there, so ReKV's "
           "'answer from the retrieved frames' would hold on the attention layers only")
#: families recognised but refused at load, with the reason
REFUSED: Dict[str, str] = {
    "qwen3_5": _HYBRID, "qwen3_5_moe": _HYBRID,
}


def backbone_class(model_type: str):
    """The adapter class for a checkpoint's ``model_type``."""
    if model_type in REFUSED:
        raise ValueError(f"ReKV does not support model_type={model_type!r}: {REFUSED[model_type]}")
    if model_type not in FAMILIES:
        raise ValueError(f"no ReKV adapter for model_type={model_type!r}; supported: {sorted(FAMILIES)}")
    module_name, cls_name = FAMILIES[model_type].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def backbone_for(model: Any, tokenizer: Any, chat_template: str, processor: Any, **options):
    """The adapter instance for a loaded ``model`` (by ``model.config.model_type``);
    ``options``: adapter settings from ``ReKVConfig`` (``frame_size``)."""
    cls = backbone_class(getattr(model.config, "model_type", None))
    return cls(model, tokenizer, chat_template, processor, **{k: v for k, v in options.items() if v is not None})
