"""rekv_demo: a small synthetic video QA set that runs offline.

Videos are generated at first use (PyAV) from the specs in the annotations: a background
colour that changes halfway through and a square of a third colour moving across. They are
written under ``$LMMS_REKV_HOME/rekv_demo`` (default ``~/.cache/lmms-rekv/rekv_demo``)."""

from __future__ import annotations

import os

from lmms_rekv.tasks.common import mc_doc_to_text as doc_to_text  # noqa: F401  (used by the YAML)
from lmms_rekv.tasks.common import mc_process_results as process_results  # noqa: F401

COLORS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
    "purple": (140, 60, 190), "orange": (240, 140, 30), "white": (240, 240, 240), "black": (15, 15, 15),
}
FPS = 4
SIZE = 96


def video_dir() -> str:
    home = os.environ.get("LMMS_REKV_HOME", os.path.join(os.path.expanduser("~"), ".cache", "lmms-rekv"))
    return os.path.join(home, "rekv_demo")


def render(doc) -> "np.ndarray":  # noqa: F821
    """Frames of the video described by ``doc`` (uint8 ``(seconds * FPS, SIZE, SIZE, 3)``)."""
    import numpy as np

    n = int(doc["seconds"] * FPS)
    frames = np.empty((n, SIZE, SIZE, 3), np.uint8)
    first, second, square = (np.array(COLORS[doc[k]], np.uint8) for k in ("bg_first", "bg_second", "square"))
    for i in range(n):
        frames[i] = first if i < n // 2 else second
        x = int((SIZE - 20) * i / max(1, n - 1))
        frames[i, 38:58, x : x + 20] = square
    return frames


def video_path(doc) -> str:
    """The doc's video, generated on first use (atomic write: safe with several ranks)."""
    from lmms_rekv.video import write_video

    path = os.path.join(video_dir(), f"{doc['video']}.mp4")
    if not os.path.isfile(path):
        write_video(path, render(doc), fps=FPS)
    return path


def doc_to_visual(doc):
    path = doc.get("path") or video_path(doc)
    return [f"{path}#t={doc['time']}"] if doc.get("time") is not None else [path]
