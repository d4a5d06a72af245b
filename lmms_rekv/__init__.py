"""lmms-rekv: ReKV streaming video question answering for LLaVA-OneVision and the Qwen-VL families.

    from lmms_rekv import ReKV, ReKVConfig
    rekv = ReKV.from_pretrained(path_or_id, config=ReKVConfig(...))    # "miniature": the shipped one
    session = rekv.new_session(fps=1); session.add_frames(frames); session.ask("...")

Imports are lazy: importing the package loads neither torch nor transformers.
"""

from __future__ import annotations

__version__ = "0.2.0"  # the one place the version is written (pyproject reads it)

_EXPORTS = {
    "ReKV": "lmms_rekv.model",
    "ReKVConfig": "lmms_rekv.config",
    "ReKVLlavaOneVision": "lmms_rekv.model",
    "ReKVSession": "lmms_rekv.engine.session",
    "Answer": "lmms_rekv.engine.session",
    "GenerationSettings": "lmms_rekv.engine.generation",
    "BlockStore": "lmms_rekv.storage.store",
    "StreamStats": "lmms_rekv.engine.statistics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lmms_rekv' has no attribute {name!r}")
