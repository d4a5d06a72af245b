"""Per-model attention patches, installed as ``lmms_rekv.patches``.

Each patch is a reversible context manager that routes a model's text-tower attention to a
ReKV handler through transformers' documented extension points (``AttentionInterface`` and
forward hooks); no upstream ``forward`` is copied. ``patch_for(model)`` picks the patch by
model type.
"""

from __future__ import annotations

from typing import Any

PATCHES = {"llava_onevision": "lmms_rekv.patches.llava_onevision:LlavaOnevisionPatch"}


def patch_for(model: Any):
    """The patch class for ``model`` (by ``model.config.model_type``)."""
    import importlib

    model_type = getattr(model.config, "model_type", None)
    if model_type not in PATCHES:
        raise ValueError(f"no ReKV patch for model_type={model_type!r}; supported: {sorted(PATCHES)}")
    module_name, cls_name = PATCHES[model_type].split(":")
    return getattr(importlib.import_module(module_name), cls_name)(model)
