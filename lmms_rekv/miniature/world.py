"""The synthetic streaming world the miniature is trained and measured on.

Every frame shows one object in one colour, tiled: each 4x4 tile (one vision patch) has the
colour in its top half and a fixed 4-bit code of the object in its bottom half. A video is a
stream of such frames; a few *needle* objects appear exactly once, the other frames show
*distractors* (other objects, repeating, in random colours -- they share colours with the
needles). Questions come after the video:

* ``color``:  "What color was the <obj>?"                      -> a colour word (chance 1/8)
* ``before``: "What came right before the <obj>?"              -> an object word (chance 1/15)
* ``same``:   "Were the <obj> and the <obj2> the same color?"  -> yes / no (chance 1/2)

``KINDS`` are the kinds the miniature is trained and measured on. ``after`` ("What came
right after the <obj>?") is also defined: with causal attention it needs two hops (find the
frame whose *previous* object was <obj>, then read its object), and the 3-layer miniature
did not learn it in the time budget, while ``before`` (find <obj>'s frame, read what its
tokens took from the frame before) it learns.

Seeds: training draws episodes from ``numpy.random.default_rng([TRAIN, seed])``; every
evaluation uses ``default_rng([HELD_OUT, seed])`` -- a disjoint stream, so reported
figures are on held-out videos.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

OBJECTS = ("cup", "ball", "hat", "shoe", "book", "key", "lamp", "box",
           "fork", "bell", "coin", "leaf", "star", "ring", "kite", "drum")
COLORS = ("red", "green", "blue", "yellow", "white", "black", "orange", "purple")
PALETTE = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (235, 215, 30),
    "white": (240, 240, 240), "black": (15, 15, 15), "orange": (240, 130, 20), "purple": (140, 40, 180),
}
KINDS = ("color", "before", "same")
CHANCE = {"color": 1 / len(COLORS), "after": 1 / (len(OBJECTS) - 1), "before": 1 / (len(OBJECTS) - 1), "same": 0.5}
TEMPLATES = {
    "color": "What color was the {a}?",
    "after": "What came right after the {a}?",
    "before": "What came right before the {a}?",
    "same": "Were the {a} and the {b} the same color?",
}
FRAME_SIZE = 16  # the miniature's image size; videos for files are upscaled by an integer factor
TILE = 4  # = the miniature's vision patch: 4 code bits fit one tile row
NEEDLES = 4
TRAIN, HELD_OUT = 0, 1


@dataclass
class Question:
    """One question about an episode: kind, text, answer word and the frames it needs."""

    kind: str
    text: str
    answer: str
    frames: Tuple[int, ...]  # frames retrieval must find: the needle(s); for "after" also the next frame
    objects: Tuple[str, ...]


@dataclass
class Episode:
    """A video (``objects[i]`` in ``colors[i]`` at frame ``i``) and questions about it."""

    objects: List[int]
    colors: List[int]
    questions: List[Question] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.objects)


def rng_for(split: int, seed: int) -> np.random.Generator:
    """The random stream of a split (``TRAIN`` or ``HELD_OUT``) and seed."""
    return np.random.default_rng([split, seed])


def render(objects: Sequence[int], colors: Sequence[int], rng: Optional[np.random.Generator] = None,
           noise: float = 6.0, scale: int = 1) -> np.ndarray:
    """``(N, 16*scale, 16*scale, 3)`` uint8 frames. A frame is tiled with 4x4 tiles (one
    vision patch each): the tile's top two rows are the colour, its bottom two rows the
    object's 4-bit code (column j white when bit j is set), so every patch -- and every
    visual token -- sees both. ``noise``: std of per-pixel noise and (x2) of a per-frame
    colour jitter, in 0..255 levels."""
    n, tile = len(objects), TILE
    rgb = np.array([PALETTE[c] for c in COLORS], dtype=np.float32)[np.asarray(colors)]  # (N, 3)
    if rng is not None and noise:
        rgb = rgb + rng.normal(0.0, 2 * noise, rgb.shape)
    bits = ((np.asarray(objects)[:, None] >> np.arange(tile)[None, :]) & 1) * 235.0 + 10.0  # (N, 4)
    block = np.empty((n, tile, tile, 3), dtype=np.float32)
    block[:, : tile // 2] = rgb[:, None, None, :]
    block[:, tile // 2 :] = bits[:, None, :, None]
    reps = FRAME_SIZE // tile
    frames = np.tile(block, (1, reps, reps, 1))
    if rng is not None and noise:
        frames += rng.normal(0.0, noise, frames.shape)
    frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    return frames


def _place(rng: np.random.Generator, length: int, count: int, depth: Optional[float]) -> List[int]:
    """``count`` distinct frame positions; the first at ``depth`` (0..1 of the video) if given."""
    if depth is None:
        return [int(p) for p in rng.choice(length, size=count, replace=False)]
    first = int(round(depth * (length - 1)))
    rest = [p for p in range(length) if p != first]
    return [first] + [int(p) for p in rng.choice(rest, size=count - 1, replace=False)]


def make_episode(rng: np.random.Generator, length: int, kinds: Sequence[str] = KINDS, depth: Optional[float] = None,
                 same_rate: float = 0.5) -> Episode:
    """A video of ``length`` frames with ``min(NEEDLES, length)`` needles and one question per
    kind in ``kinds`` that the video allows; ``depth`` places the first question's needle."""
    if length < 1:
        raise ValueError("an episode needs at least one frame")
    count = min(NEEDLES, length)
    needles = [int(o) for o in rng.choice(len(OBJECTS), size=count, replace=False)]
    distractors = [o for o in range(len(OBJECTS)) if o not in needles]
    objects = [int(o) for o in rng.choice(distractors, size=length)]
    colors = [int(c) for c in rng.integers(0, len(COLORS), size=length)]
    positions = _place(rng, length, count, depth)
    for obj, pos in zip(needles, positions):
        objects[pos] = obj
    episode = Episode(objects, colors)
    slots = list(zip(needles, positions))
    for kind in kinds:
        question = _ask(rng, episode, kind, slots, same_rate)
        if question is not None:
            episode.questions.append(question)
    return episode


def _ask(rng, episode: Episode, kind: str, slots: List[Tuple[int, int]], same_rate: Optional[float]) -> Optional[Question]:
    """A ``kind`` question about the first usable needle(s), or None if the video cannot hold it.
    ``same_rate``: how often a ``same`` question's second needle is recoloured to match; None:
    the colours are left as they are."""
    name = OBJECTS
    if kind == "color":
        obj, pos = slots[0]
        return Question(kind, TEMPLATES[kind].format(a=name[obj]), COLORS[episode.colors[pos]], (pos,), (name[obj],))
    if kind == "after":
        usable = [(o, p) for o, p in slots if p + 1 < episode.length]
        if not usable:
            return None
        obj, pos = usable[0]
        nxt = episode.objects[pos + 1]
        return Question(kind, TEMPLATES[kind].format(a=name[obj]), name[nxt], (pos, pos + 1), (name[obj],))
    if kind == "before":
        usable = [(o, p) for o, p in slots if p > 0]
        if not usable:
            return None
        obj, pos = usable[0]
        prev = episode.objects[pos - 1]
        # the previous frame's object reaches the answer through the needle frame's own tokens
        # (encoded after it, causally): the needle frame is the one to retrieve
        return Question(kind, TEMPLATES[kind].format(a=name[obj]), name[prev], (pos,), (name[obj],))
    if kind == "same":
        if len(slots) < 2:
            return None
        (a, pa), (b, pb) = slots[-2], slots[-1]
        if same_rate is not None:
            same_colors(rng, episode.colors, pa, pb, same_rate)
        answer = "yes" if episode.colors[pa] == episode.colors[pb] else "no"
        return Question(kind, TEMPLATES[kind].format(a=name[a], b=name[b]), answer, tuple(sorted((pa, pb))), (name[a], name[b]))
    raise ValueError(f"unknown question kind {kind!r}; choose from {tuple(TEMPLATES)}")


def questions_at(rng: np.random.Generator, episode: Episode, t: int, kinds: Sequence[str] = KINDS) -> List[Question]:
    """Questions asked mid-stream, right after frame ``t - 1``: about objects seen exactly once in
    the first ``t`` frames (needles or not), answered from those frames; the episode is not
    changed (``same`` answers whatever the two colours are)."""
    if not 1 <= t <= episode.length:
        raise ValueError(f"t={t} is outside 1..{episode.length}")
    seen = Episode(list(episode.objects[:t]), list(episode.colors[:t]))
    once = [p for p in range(t) if seen.objects.count(seen.objects[p]) == 1]
    slots = [(seen.objects[once[j]], once[j]) for j in rng.permutation(len(once))[:NEEDLES]]
    asked = [_ask(rng, seen, kind, slots, None) for kind in kinds] if slots else []
    return [q for q in asked if q is not None]


def same_colors(rng: np.random.Generator, colors: List[int], first: int, second: int, same_rate: float) -> None:
    """Recolour ``colors[second]`` for a ``same`` question: the same colour as ``colors[first]``
    with probability ``same_rate``, else surely another one (changed in place)."""
    if rng.random() < same_rate:
        colors[second] = colors[first]
    elif colors[second] == colors[first]:
        colors[second] = (colors[first] + int(rng.integers(1, len(COLORS)))) % len(COLORS)


def answer_words() -> Dict[str, Tuple[str, ...]]:
    """The answer vocabulary of each kind."""
    return {"color": COLORS, "after": OBJECTS, "before": OBJECTS, "same": ("yes", "no")}


def corpus(rng: np.random.Generator, lines: int = 4000, templates: Optional[Dict[str, str]] = None,
           answers: Optional[Dict[str, Tuple[str, ...]]] = None) -> List[str]:
    """Text the miniature's tokenizer is trained on: every question form with its answer
    (answers start with a space, so an object is the same token in questions and answers),
    so that every object, colour and answer word is a single token where it is used.
    ``templates`` / ``answers``: another world's question forms and answer words."""
    templates, answers = templates or TEMPLATES, answers or answer_words()
    out = []
    for _ in range(lines):
        a, b = rng.choice(len(OBJECTS), size=2, replace=False)
        kind = list(templates)[int(rng.integers(0, len(templates)))]
        words = answers[kind]
        answer = words[int(rng.integers(0, len(words)))]
        out.append("user \n" + templates[kind].format(a=OBJECTS[a], b=OBJECTS[b]) + "assistant\n " + answer)
    return out
