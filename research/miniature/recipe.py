"""The video-world miniature's recipe: training stages that each continue the previous one.

    python -m research.miniature recipe --out DIR   # about 130 minutes on 2 CPU cores

``VIDEO_RECIPE`` is how ``research/miniature/video-miniature/`` was made (its RECIPE.md): from
scratch with the order targets in the object embeddings' own space until the curriculum
reaches 8 frames, then with them rotated (one shared basis), then at 8 frames with ``prev``
and ``left`` in their own bases -- these three on the four kinds about the past
(``BACKWARD``) -- and last at 8 frames with every kind, ``now`` included.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Optional, Sequence

from . import build
from .train import TrainConfig, train

BACKWARD = ("color", "before", "same", "entered_after")
VIDEO_RECIPE = (
    dict(minutes=26, threads=1, order_rotation=False, kinds=BACKWARD),
    dict(minutes=45, threads=2, start_frames=8, lr=1e-3, order_bases=1, kinds=BACKWARD),
    dict(minutes=30, threads=2, start_frames=8, max_frames=8, lr=1e-3, kinds=BACKWARD),
    dict(minutes=28, threads=2, start_frames=8, max_frames=8, lr=1e-3),  # every kind: "now" joins
)


def run_recipe(out: str, seed: int = 0, stages: Sequence[dict] = VIDEO_RECIPE, world: str = "video",
               progress_bar: bool = True, init: Optional[str] = None, family: str = "llava_onevision",
               stage_dir: Optional[str] = None):
    """Train ``stages`` in turn (each from the previous stage's saved folder; the first from
    ``init`` or from scratch in ``family``'s shape), write the last to ``out``; returns ``(model,
    tokenizer, log)`` where ``log["recipe"]`` lists every stage's settings, steps, seconds and
    final length. ``stage_dir``: keep each stage's folder there (``stage1``, ...) and skip the
    stages already saved in it -- a recipe cut off goes on from its last finished stage."""
    done = []
    with tempfile.TemporaryDirectory() as scratch:
        previous = init
        for index, stage in enumerate(stages):
            last = index == len(stages) - 1
            folder = out if last else os.path.join(stage_dir or scratch, f"stage{index + 1}")
            saved = _finished(folder, index) if stage_dir is not None and not last else None
            if saved is not None:
                done, previous = saved, folder
                continue
            arch = build.Architecture.for_world(world, family=family) if previous is None else None
            model, tokenizer, log = train(TrainConfig(world=world, seed=seed, init=previous, **stage), arch, progress_bar=progress_bar)
            done.append({"stage": stage, "steps": log["steps"], "seconds": log["seconds"], "final_frames": log["final_frames"]})
            log["recipe"] = done
            build.save_checkpoint(folder, model, tokenizer, build.Architecture(**log["architecture"]), log, world_name=world)
            previous = folder
    return model, tokenizer, log


def _finished(folder: str, index: int) -> Optional[list]:
    """The recipe log of stage ``index`` saved in ``folder`` (None: not finished there)."""
    path = os.path.join(folder, "training_log.json")
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        recipe = json.load(fh).get("recipe", [])
    return recipe if len(recipe) == index + 1 else None
