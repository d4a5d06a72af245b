"""The shipped trained miniature and its world, for trying lmms-rekv without a GPU or a download.

    from lmms_rekv.miniature import world_video
    clip = world_video("world.mp4", seconds=60)     # a video of the miniature's world + its questions
    clip.questions[0].text, clip.questions[0].answer

``ReKV.from_pretrained("miniature")`` loads the checkpoint (``path()``) and
``ReKVConfig(clip_model="miniature")`` the open_clip embedder trained with it
(``embedder_files()``). The miniature -- the real LLaVA-OneVision class at 0.59 M parameters,
trained on CPU -- knows this world only: a frame shows one object in one colour (tiled), a few
*needle* objects appear once, and the questions ask about them (colour, what came before, same
colour). Pointed at other videos it answers with words of its world, whatever they show. Its
training and studies live beside the package in the repository (``research/miniature``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import List, Tuple

#: the world's frame rate (one frame per second of video)
FPS = 1
#: the shipped checkpoint's folder (a transformers LLaVA-OneVision) and its embedder's files
WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
EMBEDDER_NAME = "rekv-miniature-clip"
EMBEDDER_FILES = (f"{EMBEDDER_NAME}.json", "open_clip_model.safetensors")


@dataclass
class WorldQuestion:
    """A question about a world video: its text, the true answer word, its kind and the
    second(s) of the video holding the answer."""

    text: str
    answer: str
    kind: str
    seconds: List[int]


@dataclass
class WorldVideo:
    """A world video written to ``path`` (``FPS`` frames per second) and its questions (also
    written beside it as ``<name>.questions.jsonl``: ``{"t", "q", "truth", "kind"}`` per line,
    asked at the end of the video; the format ``rekv live --questions-file`` reads)."""

    path: str
    questions_path: str
    seconds: int
    questions: List[WorldQuestion]


def path() -> str:
    """The shipped miniature checkpoint folder (a transformers LLaVA-OneVision); raises
    ``FileNotFoundError`` when the installation lacks it."""
    if not os.path.isfile(os.path.join(WEIGHTS, "model.safetensors")):
        raise FileNotFoundError(f"the miniature checkpoint is missing from {WEIGHTS}: reinstall lmms-rekv")
    return WEIGHTS


shipped_path = path  # the name the studies use


def embedder_files() -> Tuple[str, str]:
    """``(open_clip model config JSON, checkpoint)`` of the embedder trained with the miniature
    (``ReKVConfig(clip_model=..., clip_pretrained=...)``); raises when missing."""
    folder = os.path.join(WEIGHTS, "clip")
    paths = tuple(os.path.join(folder, f) for f in EMBEDDER_FILES)
    if not all(os.path.isfile(p) for p in paths):
        raise FileNotFoundError(f"the miniature's embedder is missing from {folder}: reinstall lmms-rekv")
    return paths


def world_video(path: str, seconds: int = 60, seed: int = 0, scale: int = 8) -> WorldVideo:
    """Write a held-out video of the miniature's world (``seconds`` frames at 1 fps, each
    ``16 * scale`` pixels square; lossless for ``.avi``/``.mkv``, H.264 for ``.mp4``) and its
    questions. The same ``seed`` gives the same video (``rekv demo --seed`` shows the same)."""
    from ..io.video import write_video
    from . import world

    if int(seconds) < 2:
        raise ValueError(f"a world video needs at least 2 seconds, got {seconds}")
    rng = world.rng_for(world.HELD_OUT, 100_000 + int(seed))
    episode = world.make_episode(rng, int(seconds))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    lossless = path.lower().endswith((".avi", ".mkv"))
    write_video(path, world.render(episode.objects, episode.colors, rng, scale=scale), fps=FPS, lossless=lossless)
    questions = [WorldQuestion(q.text, q.answer, q.kind, list(q.frames)) for q in episode.questions]
    questions_path = os.path.splitext(path)[0] + ".questions.jsonl"
    with open(questions_path, "w") as fh:
        for q in questions:
            fh.write(json.dumps({"t": int(seconds) - 1, "q": q.text, "truth": q.answer, "kind": q.kind}) + "\n")
    return WorldVideo(path, questions_path, int(seconds), questions)
