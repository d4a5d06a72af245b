"""A miniature video-LLM trained here: the real LLaVA-OneVision class at a tiny size, trained
on CPU on a synthetic streaming world (``world``), shipped with the package (``weights/``).

    python -m lmms_rekv.tools.miniature train --minutes 15 --seed 0 --out DIR
    python -m lmms_rekv.tools.miniature eval [--model DIR]

It measures what only trained weights show: whether retrieval finds the moment a question
is about as the stream grows. ``shipped_path()`` is the folder of the shipped checkpoint.
"""

from __future__ import annotations

import os

WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")


def shipped_path() -> str:
    """The shipped miniature checkpoint (a llava-hf folder); raises if it is missing."""
    if not os.path.isfile(os.path.join(WEIGHTS, "model.safetensors")):
        raise FileNotFoundError(f"the miniature checkpoint is missing from {WEIGHTS}: reinstall lmms-rekv")
    return WEIGHTS
