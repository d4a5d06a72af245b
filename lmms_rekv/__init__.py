"""lmms-rekv: ReKV streaming video question answering for LLaVA-OneVision.

    from lmms_rekv import ReKVConfig, ReKVLlavaOneVision
    rekv = ReKVLlavaOneVision.from_pretrained(path, config=ReKVConfig(...))
    session = rekv.new_session(); session.add_frames(frames); session.ask("...")

Imports are lazy: importing the package loads neither torch nor transformers.
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "ReKV": "lmms_rekv.model",
    "ReKVConfig": "lmms_rekv.config",
    "ReKVLlavaOneVision": "lmms_rekv.model",
    "ReKVSession": "lmms_rekv.engine.session",
    "Answer": "lmms_rekv.engine.session",
    "GenerationSettings": "lmms_rekv.engine.generation",
    "BlockStore": "lmms_rekv.storage.store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lmms_rekv' has no attribute {name!r}")
