"""What the lmms-eval model reads from a request: the job it describes, its visual
(a video path with an optional temporal fragment) and the prompt without placeholders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Tuple

PLACEHOLDERS = ("<video>", "<image>")
# errors that say the installation is broken (e.g. a module missing from a wheel): every
# document would fail the same way, so they end the run instead of being recorded per document
FATAL_ERRORS = (ImportError,)


@dataclass
class Job:
    """One request: its position, arguments, video and time span."""

    index: int
    args: tuple
    doc: Any
    path: str
    start: float
    end: Optional[float]


def parse_visual(visual: Any) -> Tuple[str, float, Optional[float]]:
    """``(path, start, end)`` of a visual: a video path with an optional ``#t=[START,]END``."""
    if isinstance(visual, dict):
        return str(visual["video"]), float(visual.get("start") or 0.0), _maybe_float(visual.get("end"))
    if not isinstance(visual, (str, os.PathLike)):
        raise ValueError(f"rekv_llava_ov answers about videos; got a {type(visual).__name__} visual")
    path, _, fragment = str(visual).partition("#t=")
    if not fragment:
        return path, 0.0, None
    start, _, end = fragment.partition(",")
    return (path, 0.0, float(start)) if not end else (path, float(start or 0.0), float(end))


def _maybe_float(value) -> Optional[float]:
    return None if value is None else float(value)


def clean_context(context: str) -> str:
    """The task's prompt without image/video placeholders (the template places the video)."""
    for placeholder in PLACEHOLDERS:
        context = context.replace(placeholder, "")
    return context.strip() or context
