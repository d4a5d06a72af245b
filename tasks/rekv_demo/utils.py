"""rekv_demo: streaming video QA in the miniature's world, offline.

Each video is a held-out episode of ``lmms_rekv.miniature.world`` (objects in colours, a few
needle objects shown exactly once), regenerated from its seed at first use and written
with PyAV under ``$LMMS_REKV_HOME/rekv_demo`` (default ``~/.cache/lmms-rekv/rekv_demo``):
every world frame lasts ``SECONDS_PER_FRAME`` seconds, so lmms-eval's default 0.5 fps
samples each once. Questions: the colour of a needle (also asked mid-stream, as of half the
video), what came right before a needle, and whether two needles had the same colour;
scored by the first word of the answer. Ask ``pretrained=miniature`` for a model trained
on this world.
"""

from __future__ import annotations

import os
import re
from typing import List

SECONDS_PER_FRAME = 2
SCALE = 8  # 16 x 16 world frames written as 128 x 128 video
VIDEOS, FRAMES, FIRST_SEED, NEEDLE_DEPTH = 4, 40, 9000, 0.2


def video_dir() -> str:
    from lmms_rekv.io.home import cache_home

    return cache_home("rekv_demo")


def episode(doc):
    """``(episode, frames)`` of a doc's video, regenerated from its held-out seed."""
    from lmms_rekv.miniature import world

    rng = world.rng_for(world.HELD_OUT, doc["seed"])
    ep = world.make_episode(rng, doc["frames"], depth=NEEDLE_DEPTH)
    return ep, world.render(ep.objects, ep.colors, rng, scale=SCALE)


def build_docs() -> List[dict]:
    """The task's documents (written to ``rekv_demo.json``; a test checks they match)."""
    docs = []
    for i in range(VIDEOS):
        seed = FIRST_SEED + i
        ep, _ = episode({"seed": seed, "frames": FRAMES})
        base = {"video": f"world_{seed}", "seed": seed, "frames": FRAMES}
        colour = ep.questions[0]
        middle = FRAMES // 2 * SECONDS_PER_FRAME - 1  # seconds: the needle (at 20 %) is already shown
        docs.append(dict(base, id=f"{base['video']}_mid", kind="color", question=colour.text, answer=colour.answer, time=middle))
        for q in ep.questions:
            docs.append(dict(base, id=f"{base['video']}_{q.kind}", kind=q.kind, question=q.text, answer=q.answer, time=None))
    return docs


def video_path(doc) -> str:
    """The doc's video, generated on first use (atomic write: safe with several ranks)."""
    import numpy as np

    from lmms_rekv.io.video import write_video

    path = os.path.join(video_dir(), f"{doc['video']}.mp4")
    if not os.path.isfile(path):
        _, frames = episode(doc)
        write_video(path, np.repeat(frames, SECONDS_PER_FRAME, axis=0), fps=1)
    return path


def doc_to_visual(doc):
    path = doc.get("path") or video_path(doc)
    return [f"{path}#t={doc['time']}"] if doc.get("time") is not None else [path]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def first_word(text: str) -> str:
    words = re.findall(r"[a-z]+", (text or "").lower())
    return words[0] if words else ""


def process_results(doc, results):
    """The doc's score, overall and for its kind (every key is a metric of the task: lmms-eval
    turns any other key into an empty metric in results.json; the per-sample log has the doc)."""
    right = float(first_word(results[0]) == doc["answer"])
    return {"accuracy": right, f"{doc['kind']}_accuracy": right}
