"""The miniature's external embedder: a tiny open_clip model trained contrastively on the
world, so that external and hybrid retrieval can be judged on trained weights.

A question and a frame are a positive pair when the frame shows an object the question
names ("What color was the cup?" <-> every cup frame, whatever its colour; a "same"
question names two objects, so it has two kinds of positives). Loss: SigLIP's pairwise
sigmoid loss (several positives per question are natural there). The model is a plain
open_clip ``CLIP`` built from ``CLIP_CONFIG`` and loads with
``open_clip.create_model(<config name>, pretrained=<safetensors file>)`` -- exactly how
``ReKVConfig(clip_model=<json>, clip_pretrained=<file>)`` loads it.

    python -m research.miniature clip --minutes 3 --out DIR
    python -m research.miniature clip --world video --minutes 6 --out DIR   # the video-like world's

For the video world (``video_world``) a frame is positive for a question when *any* of its
tokens shows a named object (objects cover a quarter of the frame or less, two may be on
screen); its embedder is named ``NAME + "-video"`` (``clip_config``), so both load in one
process.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import tempfile
import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from lmms_rekv.miniature import EMBEDDER_FILES, EMBEDDER_NAME, embedder_files, world

logger = logging.getLogger(__name__)

NAME = EMBEDDER_NAME
CLIP_CONFIG = {
    "embed_dim": 32,
    "init_logit_bias": -10.0,
    "vision_cfg": {"image_size": world.FRAME_SIZE, "layers": 1, "width": 64, "patch_size": world.TILE, "head_width": 32},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
FILES = EMBEDDER_FILES
shipped_clip = embedder_files  # ``(config JSON, checkpoint)`` of the shipped embedder


def clip_config(world_name: str = "tiled") -> Tuple[str, dict]:
    """``(open_clip model name, config)`` of the embedder for world ``world_name``: the tiled
    world's ``CLIP_CONFIG``, or the same model reading the world's frame size."""
    if world_name == "tiled":
        return NAME, CLIP_CONFIG
    from . import build

    config = copy.deepcopy(CLIP_CONFIG)
    config["vision_cfg"]["image_size"] = build.world_module(world_name).FRAME_SIZE
    return f"{NAME}-{world_name}", config


def _video_pairs(rng: np.random.Generator, size: int, noise: float, length: int = 8):
    """The video world's ``_pairs``: ``size`` frames drawn from random 8-frame episodes (one
    frame of each, preferring frames with an object on screen), question i names an object on
    frame i (or, on an empty frame, a random one); labels +1 where the frame shows a named
    object."""
    from . import video_world as vw

    frames, shown, texts, named = [], [], [], []
    for _ in range(size):
        episode = vw.make_episode(rng, length, kinds=())
        busy = [f for f in range(length) if episode.on_screen(f)]
        at = int(rng.choice(busy)) if busy else int(rng.integers(0, length))
        frames.append(vw.render(episode, rng, noise=noise)[at])
        objects = {episode.objects[i] for i in episode.on_screen(at)}
        shown.append(objects)
        obj = int(rng.choice(sorted(objects))) if objects else int(rng.integers(0, len(vw.OBJECTS)))
        kind = vw.KINDS[int(rng.integers(0, len(vw.KINDS)))]
        other = int((obj + rng.integers(1, len(vw.OBJECTS))) % len(vw.OBJECTS))
        pair = (obj, other) if rng.random() < 0.5 else (other, obj)
        a, b = (vw.OBJECTS[pair[0]], vw.OBJECTS[pair[1]]) if kind == "same" else (vw.OBJECTS[obj], "")
        texts.append(vw.TEMPLATES[kind].format(a=a, b=b))
        named.append(set(pair) if kind == "same" else {obj})
    labels = torch.tensor([[1.0 if n & s else -1.0 for s in shown] for n in named])
    return torch.from_numpy(np.stack(frames)), texts, labels


def _pairs(rng: np.random.Generator, size: int, noise: float):
    """``size`` random frames and ``size`` questions (question i about frame i's object);
    labels ``(size, size)``: +1 where the frame shows an object the question names."""
    objects = rng.integers(0, len(world.OBJECTS), size=size)
    colors = rng.integers(0, len(world.COLORS), size=size)
    frames = world.render(objects, colors, rng, noise=noise)
    texts, named = [], []
    for obj in objects:
        kind = world.KINDS[int(rng.integers(0, len(world.KINDS)))]
        other = int((obj + rng.integers(1, len(world.OBJECTS))) % len(world.OBJECTS))
        pair = (int(obj), other) if rng.random() < 0.5 else (other, int(obj))
        a, b = (world.OBJECTS[pair[0]], world.OBJECTS[pair[1]]) if kind == "same" else (world.OBJECTS[int(obj)], "")
        texts.append(world.TEMPLATES[kind].format(a=a, b=b))
        named.append(set(pair) if kind == "same" else {int(obj)})
    labels = torch.tensor([[1.0 if int(o) in n else -1.0 for o in objects] for n in named])
    return torch.from_numpy(frames), texts, labels


def train_clip(minutes: float = 3.0, seed: int = 0, batch: int = 64, lr: float = 2e-3, noise: float = 6.0,
               max_steps: Optional[int] = None, progress_bar: bool = True, world_name: str = "tiled"):
    """Train the embedder for world ``world_name`` from scratch; returns ``(ClipEmbedder, log)``."""
    from tqdm.auto import tqdm

    from lmms_rekv.retrieval.embedder import ClipEmbedder, import_open_clip

    open_clip = import_open_clip()
    name, config = clip_config(world_name)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"{name}.json")
        with open(path, "w") as fh:
            json.dump(config, fh)
        open_clip.add_model_config(path)  # built and tokenized exactly as it will be loaded
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None).train()
    embedder = ClipEmbedder.from_model(model, open_clip.get_tokenizer(name), torch.device("cpu"))
    pairs = _pairs if world_name == "tiled" else _video_pairs
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rng = world.rng_for(world.TRAIN, 10_000 + seed)
    budget, start, step, history = minutes * 60.0, time.perf_counter(), 0, []
    bar = tqdm(total=int(budget), desc="training the miniature's embedder", unit="s", disable=not progress_bar)
    while (elapsed := time.perf_counter() - start) < budget and (max_steps is None or step < max_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * (0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget))))
        frames, texts, labels = pairs(rng, batch, noise)
        image = F.normalize(model.encode_image(embedder.preprocess(frames)), dim=-1)
        text = F.normalize(model.encode_text(embedder.tokenizer(texts)), dim=-1)
        logits = text @ image.T * model.logit_scale.exp() + model.logit_bias
        loss = -F.logsigmoid(labels * logits).sum() / batch
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 20 == 0:
            history.append({"step": step, "seconds": round(elapsed, 1), "loss": round(float(loss.detach()), 4)})
        step += 1
        bar.n = min(int(elapsed), bar.total)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
        bar.update(0)
    bar.close()
    model.eval()
    log = {"config": config, "name": name, "world": world_name, "minutes": minutes, "seed": seed, "batch": batch, "lr": lr, "steps": step,
           "seconds": round(time.perf_counter() - start, 1), "history": history}
    return embedder, log


@torch.no_grad()
def needle_hit_rate(embedder, lengths: Sequence[int] = (64, 1024), videos: int = 50, k: int = 4, seed: int = 0) -> Dict[str, Dict[str, float]]:
    """Held-out: share of questions whose needle frame(s) (the named objects' frames) are all
    among the ``k`` frames closest to the question -- ``{kind: {str(length): rate}}``."""
    out: Dict[str, Dict[str, float]] = {kind: {} for kind in world.KINDS}
    for length in lengths:
        rng = world.rng_for(world.HELD_OUT, 20_000_000 + seed * 1_000_003 + length)
        hits = {kind: [] for kind in world.KINDS}
        for _ in range(videos):
            episode = world.make_episode(rng, length)
            frames = embedder.embed_frames(torch.from_numpy(world.render(episode.objects, episode.colors, rng)))
            for q in episode.questions:
                top = set((frames @ embedder.embed_text(q.text)).topk(min(k, length)).indices.tolist())
                named = {episode.objects.index(world.OBJECTS.index(o)) for o in q.objects}
                hits[q.kind].append(named <= top)
        for kind, values in hits.items():
            out[kind][str(length)] = float(np.mean(values))
    return out


@torch.no_grad()
def video_hit_rate(embedder, lengths: Sequence[int] = (8, 16), videos: int = 50, k: int = 4,
                   seed: int = 0, kinds: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, Tuple[float, float]]]:
    """The video world's ``needle_hit_rate``: share of questions for which every named object
    has a frame of its visit among the ``k`` frames closest to the question (``now``: a frame of
    the visit on screen), beside the share for ``k`` frames drawn at random from the same
    videos -- ``{kind: {str(length): (rate, random rate)}}``; ``kinds``: the world's ``KINDS``
    unless given."""
    from . import video_world as vw

    kinds = tuple(vw.KINDS if kinds is None else kinds)
    out: Dict[str, Dict[str, Tuple[float, float]]] = {kind: {} for kind in kinds}
    for length in lengths:
        rng = vw.rng_for(vw.HELD_OUT, 20_000_000 + seed * 1_000_003 + length)
        hits: Dict[str, list] = {kind: [] for kind in kinds}
        for _ in range(videos):
            episode = vw.make_episode(rng, length, kinds=kinds)
            frames = embedder.embed_frames(torch.from_numpy(vw.render(episode, rng)))
            for q in episode.questions:
                needed = [set(q.frames)] if q.kind == "now" else \
                    [set(episode.visits[episode.objects.index(vw.OBJECTS.index(o))].frames) for o in q.objects]
                top = set((frames @ embedder.embed_text(q.text)).topk(min(k, length)).indices.tolist())
                drawn = set(rng.choice(length, size=min(k, length), replace=False).tolist())
                hits[q.kind].append((all(n & top for n in needed), all(n & drawn for n in needed)))
        for kind, values in hits.items():
            if values:
                out[kind][str(length)] = tuple(float(x) for x in np.mean(values, axis=0))
    return out


def save_clip(folder: str, embedder, log: dict) -> Tuple[str, str]:
    """Write the open_clip model config (``<name>.json``, the name the log gives), the weights
    (safetensors) and the training log."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    config, weights = os.path.join(folder, f"{log.get('name', NAME)}.json"), os.path.join(folder, FILES[1])
    with open(config, "w") as fh:
        json.dump(log.get("config", CLIP_CONFIG), fh, indent=1)
    save_file({k: v.contiguous() for k, v in embedder.model.state_dict().items()}, weights)
    os.chmod(weights, 0o644)
    with open(os.path.join(folder, "training_log.json"), "w") as fh:
        json.dump(log, fh, indent=1)
    return config, weights
