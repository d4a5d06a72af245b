"""A video-like synthetic world: a mostly static scene that objects enter, cross and leave.

The tiled world (``lmms_rekv.miniature.world``) fills every frame with one object, so every
visual token of a frame carries the same thing and consecutive frames share nothing. Here a
frame is mostly background that changes slowly, and a few objects occupy a small part of it
for several frames, so that per-frame token reduction (dropping tokens unchanged since the
previous frame, keeping the salient ones) and per-token retrieval become measurable.

Frames and tokens. A frame is ``FRAME_SIZE`` = 32 pixels square: 8 x 8 tiles of 4 x 4 pixels,
one tile per SigLIP patch of the miniature (``build.Architecture(patch_size=4)``), exactly as
in the tiled world. LLaVA-OneVision pools the 8 x 8 patch grid 2 x 2 (bilinear to half size,
which for a factor of 2 is the mean of each 2 x 2 block of patches): **16 visual tokens per
frame** (a 4 x 4 token grid, row-major; token ``(i, j)`` covers tiles ``2i..2i+1`` x
``2j..2j+1``), plus LLaVA-OV's one newline token after the whole video.

* Background tiles: the top half a grey-ish scene colour (a per-episode tint, a fixed
  per-tile shade -- the static scene -- and a slow sinusoidal drift, at most ~2.5 levels per
  frame), the bottom half a dim uniform level ``BACKGROUND_CODE`` (no object code).
* An object is a 2 x 2-tile square; each of its tiles is a tiled-world tile: the object's
  colour in the top half, its 4-bit code in the bottom half (column j white when bit j is
  set). A *visit* of an object: it appears at a random frame at a random place of its *lane*,
  moves one tile per frame (horizontally always, vertically sometimes, bouncing off the
  lane's edges) and leaves after ``DURATION`` frames (or when the video ends). The frame has
  two lanes, the top and the bottom four tile rows (token rows 0-1 and 2-3), one object per
  lane: at most two objects are on screen, and a token never shows two objects.
* Visits enter on distinct frames and leave in the order they entered; a lane is re-used
  only after a frame without its previous object. So "the object seen last before X entered"
  is always the visit that entered right before X's.
* Needles: up to ``NEEDLES`` objects that make exactly one visit each; every other visit is a
  distractor (the other objects, repeating, in random colours), never on screen together with
  the same object and never the same object as the visit before.

Questions (``KINDS``), answered with one word:

* ``color``:         "What color was the <obj>?"                  -> a colour (chance 1/8)
* ``before``:        "What came right before the <obj>?"          -> the object whose visit entered
  right before the needle's -- equivalently the last other object seen before it entered (1/15)
* ``same``:          "Were the <obj> and the <obj2> the same color?" -> yes / no (1/2)
* ``entered_after``: "What entered after the <obj> left?"         -> the first object to enter
  after the needle's last frame (1/15): a moment (the needle leaving), not a frame.
* ``now``:           "What color is the <obj> now?"                 -> the colour of the object on
  screen at the moment of the question (the last frame) (1/8). The asked object is made a
  repeat: where an earlier distractor can take its place, the visit shows that distractor's
  object again in another colour, so that the answer is the present visit's colour and the
  earlier visit's is wrong (a streaming user's "what is it now?" against "what was it then?").

``Question.frames`` lists every frame of the visits the answer is read from: the needle's
visit for ``color`` and ``before`` (as in the tiled world, the needle's tokens carry the
previous object, encoded after it), both needles' visits for ``same``, the needle's visit and
the entering object's visit for ``entered_after``, the visit on screen for ``now``.

Episodes reuse the tiled world's ``Episode``: ``objects[i]`` / ``colors[i]`` are the object and
colour of *visit* ``i`` (visits in the order they enter), so a needle's colour is
``colors[objects.index(needle)]`` as in the tiled world; ``VideoEpisode.visits`` has their
frames and paths and ``length`` is the number of frames. ``token_labels`` gives per-token
training targets (which object a token shows, the previous visit's object, which objects left
since the previous entry). Seeds: the tiled world's ``rng_for(TRAIN | HELD_OUT, seed)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lmms_rekv.miniature import world as _tiled
from lmms_rekv.miniature.world import (  # noqa: F401  (re-exported)
    COLORS,
    HELD_OUT,
    OBJECTS,
    PALETTE,
    TRAIN,
    Episode,
    Question,
    rng_for,
    same_colors,
)

KINDS = ("color", "before", "same", "entered_after", "now")
TEMPLATES = {**{k: _tiled.TEMPLATES[k] for k in ("color", "before", "same")},
             "entered_after": "What entered after the {a} left?", "now": "What color is the {a} now?"}
CHANCE = {"color": 1 / len(COLORS), "before": 1 / (len(OBJECTS) - 1), "same": 0.5,
          "entered_after": 1 / (len(OBJECTS) - 1), "now": 1 / len(COLORS)}
TILE = _tiled.TILE  # pixels per tile side = the miniature's vision patch
FRAME_SIZE = 32  # pixels per frame side: 8 x 8 tiles
TILES = FRAME_SIZE // TILE  # tiles per frame side
TOKEN_GRID = TILES // 2  # LLaVA-OV pools patches 2 x 2: 4 x 4 tokens per frame
FRAME_TOKENS = TOKEN_GRID ** 2  # 16
OBJECT_TILES = 2  # an object is a 2 x 2-tile square
LANES = 2  # top / bottom half of the frame, one object each
LANE_ROWS = TILES // LANES  # 4 tile rows per lane
DURATION = (3, 5)  # frames a visit lasts (inclusive range; longer when it must leave after the visit before)
ENTRY_GAP = (1, 3)  # frames between two entries at least (inclusive range; more while no lane is free)
NEEDLES = _tiled.NEEDLES
# kinds whose answer the recipe's ``hop_all`` loss asks for at the question's object word after
# two layers: only colour -- the per-token ``prev``/``left`` targets live after the second layer
ONE_HOP = ("color",)
BACKGROUND_CODE = 70.0  # the dim level of a background tile's bottom half
BITS = (10.0, 245.0)  # an object code bit's level: unset / set


@dataclass
class Visit:
    """One object's stay on screen: frames ``enter..leave`` (inclusive) in ``lane``, with its
    2 x 2-tile square's top-left tile ``path[f - enter] = (row, col)`` at frame ``f``."""

    obj: int
    color: int
    enter: int
    leave: int
    lane: int
    path: List[Tuple[int, int]] = field(default_factory=list)

    @property
    def frames(self) -> Tuple[int, ...]:
        return tuple(range(self.enter, self.leave + 1))


@dataclass
class Background:
    """The static scene: ``tint`` (3,) base colour, ``shade`` (TILES, TILES) per-tile offset,
    and a per-channel drift ``amplitude * sin(2 pi t / period + phase)``."""

    tint: np.ndarray
    shade: np.ndarray
    amplitude: np.ndarray
    period: np.ndarray
    phase: np.ndarray

    def colors(self, length: int) -> np.ndarray:
        """``(length, TILES, TILES, 3)`` background colour of every tile of every frame."""
        t = np.arange(length, dtype=np.float64)[:, None]
        drift = self.amplitude * np.sin(2 * np.pi * t / self.period + self.phase)  # (N, 3)
        return self.tint + drift[:, None, None, :] + self.shade[None, :, :, None]


@dataclass
class VideoEpisode(Episode):
    """``objects[i]`` in ``colors[i]`` is visit ``i`` (entry order); ``visits[i]`` its frames."""

    frames: int = 0
    visits: List[Visit] = field(default_factory=list)
    background: Optional[Background] = None

    @property
    def length(self) -> int:
        return self.frames

    def on_screen(self, frame: int) -> List[int]:
        """Indices of the visits on screen at ``frame``."""
        return [i for i, v in enumerate(self.visits) if v.enter <= frame <= v.leave]


def render(episode: VideoEpisode, rng: Optional[np.random.Generator] = None, noise: float = 6.0,
           scale: int = 1) -> np.ndarray:
    """``(N, 32*scale, 32*scale, 3)`` uint8 frames. ``noise``: std of per-pixel noise and (x2)
    of a per-frame jitter of each object's colour (cut at 2.5 of its std, so that no colour
    drifts half-way to a palette neighbour), in 0..255 levels; the background gets the
    pixel noise only (its drift is the episode's)."""
    n, tile, half = episode.length, TILE, TILE // 2
    tiles = np.empty((n, TILES, TILES, tile, tile, 3), dtype=np.float32)
    tiles[:, :, :, :half] = episode.background.colors(n)[:, :, :, None, None, :]
    tiles[:, :, :, half:] = BACKGROUND_CODE
    jitter = rng is not None and noise
    for visit in episode.visits:
        rgb = np.asarray(PALETTE[COLORS[visit.color]], dtype=np.float32)
        bits = ((visit.obj >> np.arange(tile)) & 1) * (BITS[1] - BITS[0]) + BITS[0]  # (4,) one level per column
        for f, (r, c) in zip(visit.frames, visit.path):
            colour = rgb + np.clip(rng.normal(0.0, 2 * noise, 3), -5 * noise, 5 * noise) if jitter else rgb
            square = tiles[f, r : r + OBJECT_TILES, c : c + OBJECT_TILES]
            square[:, :, :half] = colour
            square[:, :, half:] = bits[None, None, None, :, None]
    frames = tiles.transpose(0, 1, 3, 2, 4, 5).reshape(n, FRAME_SIZE, FRAME_SIZE, 3)
    if jitter:
        frames = frames + rng.normal(0.0, noise, frames.shape)
    frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    return frames


def _background(rng: np.random.Generator) -> Background:
    grey = rng.uniform(70.0, 110.0)
    return Background(tint=grey + rng.uniform(-12.0, 12.0, 3), shade=rng.uniform(-15.0, 15.0, (TILES, TILES)),
                      amplitude=rng.uniform(5.0, 15.0, 3), period=rng.uniform(40.0, 160.0, 3),
                      phase=rng.uniform(0.0, 2 * np.pi, 3))


def _path(rng: np.random.Generator, lane: int, frames: int) -> List[Tuple[int, int]]:
    """Top-left tiles of a square moving one tile per frame inside ``lane``, bouncing."""
    top, rows, cols = lane * LANE_ROWS, LANE_ROWS - OBJECT_TILES, TILES - OBJECT_TILES
    r, c = int(rng.integers(0, rows + 1)), int(rng.integers(0, cols + 1))
    dr, dc = int(rng.integers(-1, 2)), int(rng.choice((-1, 1)))
    path = [(top + r, c)]
    for _ in range(frames - 1):
        if not 0 <= r + dr <= rows:
            dr = -dr
        if not 0 <= c + dc <= cols:
            dc = -dc
        r, c = r + dr, c + dc
        path.append((top + r, c))
    return path


def _schedule(rng: np.random.Generator, length: int) -> List[Tuple[int, int, int]]:
    """``(enter, leave, lane)`` of every visit, in entry order: distinct entry frames, exits in
    entry order, a lane re-used only after a frame without its previous object."""
    visits: List[Tuple[int, int, int]] = []
    last = [-2, -2]  # the last frame each lane was occupied
    t = int(rng.integers(0, 2))
    while t < length:
        free = [lane for lane in range(LANES) if last[lane] <= t - 2]
        if not free:
            t += 1
            continue
        lane = free[int(rng.integers(0, len(free)))]
        leave = t + int(rng.integers(DURATION[0], DURATION[1] + 1)) - 1
        if visits:
            leave = max(leave, visits[-1][1] + 1)  # leaves after the visit that entered before it
        leave = min(leave, length - 1)
        visits.append((t, leave, lane))
        last[lane] = leave
        t += int(rng.integers(ENTRY_GAP[0], ENTRY_GAP[1] + 1))
    return visits


def make_episode(rng: np.random.Generator, length: int, kinds: Sequence[str] = KINDS, depth: Optional[float] = None,
                 same_rate: float = 0.5) -> VideoEpisode:
    """A video of ``length`` frames with ``min(NEEDLES, visits)`` needle visits and one
    question per kind in ``kinds`` that the video allows (a kind is asked about the first
    needle that allows it); ``depth`` (0..1) makes the first needle the visit that enters
    closest to ``depth * (length - 1)``."""
    if length < 1:
        raise ValueError("an episode needs at least one frame")
    schedule = _schedule(rng, length)
    count = min(NEEDLES, len(schedule))
    needles = [int(o) for o in rng.choice(len(OBJECTS), size=count, replace=False)]
    slots = [int(i) for i in rng.choice(len(schedule), size=count, replace=False)]
    if depth is not None:
        target = depth * (length - 1)
        first = min(range(len(schedule)), key=lambda i: (abs(schedule[i][0] - target), i))
        slots = [first] + [s for s in slots if s != first][: count - 1]
    owner = dict(zip(slots, needles))
    distractors = [o for o in range(len(OBJECTS)) if o not in needles]
    objects: List[int] = []
    for i in range(len(schedule)):
        if i in owner:
            objects.append(owner[i])
            continue
        recent = set(objects[-2:])  # the visit before, and the one that may still be on screen
        pool = [o for o in distractors if o not in recent]
        objects.append(int(pool[int(rng.integers(0, len(pool)))]))
    colors = [int(c) for c in rng.integers(0, len(COLORS), size=len(schedule))]
    visits = [Visit(obj, col, enter, leave, lane, _path(rng, lane, leave - enter + 1))
              for obj, col, (enter, leave, lane) in zip(objects, colors, schedule)]
    episode = VideoEpisode(objects, colors, frames=length, visits=visits, background=_background(rng))
    now = _present(rng, episode, needles) if "now" in kinds else None
    usable = [(owner[s], s) for s in slots if objects[s] == owner[s] and objects.count(owner[s]) == 1]
    for kind in kinds:
        question = (None if now is None else _now(visits[now])) if kind == "now" else _ask(rng, episode, kind, usable, same_rate)
        if question is not None:
            episode.questions.append(question)
    return episode


def _now(visit: Visit) -> Question:
    """The ``now`` question about ``visit`` (on screen when it is asked): its colour."""
    return Question("now", TEMPLATES["now"].format(a=OBJECTS[visit.obj]), COLORS[visit.color], visit.frames, (OBJECTS[visit.obj],))


def _present(rng: np.random.Generator, episode: VideoEpisode, needles: Sequence[int] = ()) -> Optional[int]:
    """The visit a ``now`` question asks about: one of those on screen at the last frame (None
    if none is), turned into a repeat where it can be: it takes the object of the earliest
    visit before its predecessor whose object neither of its neighbours in entry order shows
    (a distractor's before a needle's), in a colour other than that visit's -- so the object was seen before, in another colour.
    (A needle whose object is taken makes two visits from then on: ``make_episode`` stops
    asking about it.)"""
    showing = episode.on_screen(episode.length - 1)
    if not showing:
        return None
    at = showing[int(rng.integers(0, len(showing)))] if len(showing) > 1 else showing[0]
    objects, visits = episode.objects, episode.visits
    neighbours = {objects[i] for i in (at - 1, at + 1) if 0 <= i < len(objects)}
    candidates = [u for u in range(at - 1) if objects[u] not in neighbours and objects[u] != objects[at]]
    earlier = min(candidates, key=lambda u: (objects[u] in needles, u), default=None)
    if earlier is None:
        return at
    objects[at] = visits[at].obj = objects[earlier]
    if episode.colors[at] == episode.colors[earlier]:
        episode.colors[at] = visits[at].color = (episode.colors[earlier] + 1 + at % (len(COLORS) - 1)) % len(COLORS)
    return at


def entered_after(episode: VideoEpisode, index: int) -> Optional[int]:
    """The first visit to enter after visit ``index``'s last frame, or None."""
    leave = episode.visits[index].leave
    return next((i for i, v in enumerate(episode.visits) if v.enter > leave), None)


def _ask(rng, episode: VideoEpisode, kind: str, slots: List[Tuple[int, int]], same_rate: Optional[float]) -> Optional[Question]:
    """A ``kind`` question about the first usable needle(s) ``(object, visit)``, or None
    (``same_rate``: as the tiled world's ``_ask``; None leaves the colours as they are)."""
    name, visits = OBJECTS, episode.visits
    if not slots:
        return None
    if kind == "color":
        obj, at = slots[0]
        return Question(kind, TEMPLATES[kind].format(a=name[obj]), COLORS[episode.colors[at]], visits[at].frames, (name[obj],))
    if kind == "before":
        usable = [(o, i) for o, i in slots if i > 0]
        if not usable:
            return None
        obj, at = usable[0]
        return Question(kind, TEMPLATES[kind].format(a=name[obj]), name[episode.objects[at - 1]], visits[at].frames, (name[obj],))
    if kind == "entered_after":
        usable = [(o, i, entered_after(episode, i)) for o, i in slots]
        usable = [u for u in usable if u[2] is not None]
        if not usable:
            return None
        obj, at, nxt = usable[0]
        frames = tuple(sorted(set(visits[at].frames) | set(visits[nxt].frames)))
        return Question(kind, TEMPLATES[kind].format(a=name[obj]), name[episode.objects[nxt]], frames, (name[obj],))
    if kind == "same":
        if len(slots) < 2:
            return None
        (a, pa), (b, pb) = slots[-2], slots[-1]
        if same_rate is not None:
            same_colors(rng, episode.colors, pa, pb, same_rate)
            visits[pb].color = episode.colors[pb]
        answer = "yes" if episode.colors[pa] == episode.colors[pb] else "no"
        frames = tuple(sorted(set(visits[pa].frames) | set(visits[pb].frames)))
        return Question(kind, TEMPLATES[kind].format(a=name[a], b=name[b]), answer, frames, (name[a], name[b]))
    raise ValueError(f"unknown question kind {kind!r}; choose from {tuple(TEMPLATES)}")


def seen_until(episode: VideoEpisode, t: int) -> VideoEpisode:
    """The first ``t`` frames of ``episode`` as an episode of its own (what a viewer has seen at
    the moment after frame ``t - 1``): the visits that entered by then, cut at ``t - 1``; no
    questions. Frame indices are the stream's."""
    if not 1 <= t <= episode.length:
        raise ValueError(f"t={t} is outside 1..{episode.length}")
    visits = [Visit(v.obj, v.color, v.enter, min(v.leave, t - 1), v.lane, v.path[: t - v.enter])
              for v in episode.visits if v.enter < t]
    return VideoEpisode([v.obj for v in visits], [v.color for v in visits], frames=t, visits=visits,
                        background=episode.background)


def questions_at(rng: np.random.Generator, episode: VideoEpisode, t: int, kinds: Sequence[str] = KINDS) -> List[Question]:
    """Questions asked mid-stream, right after frame ``t - 1`` of the rendered ``episode``: about
    what has been seen by then (the backward kinds about objects seen once so far, ``now`` about
    an object on screen at frame ``t - 1``). Nothing of the episode changes -- unlike
    ``make_episode``, no colour or object is adjusted, so ``same`` answers whatever the colours are
    and ``now`` may ask about an object seen only once."""
    seen = seen_until(episode, t)
    once = [i for i, v in enumerate(seen.visits) if seen.objects.count(v.obj) == 1]
    slots = [(seen.objects[once[j]], once[j]) for j in rng.permutation(len(once))[:NEEDLES]]
    out: List[Question] = []
    for kind in kinds:
        if kind == "now":
            showing = seen.on_screen(t - 1)
            question = _now(seen.visits[showing[int(rng.integers(0, len(showing)))]]) if showing else None
        else:
            question = _ask(rng, seen, kind, slots, None)
        if question is not None:
            out.append(question)
    return out


def token_tiles(row: int, col: int) -> List[Tuple[int, int]]:
    """The tokens ``(i, j)`` a 2 x 2-tile square with top-left tile ``(row, col)`` touches."""
    return sorted({((row + dr) // 2, (col + dc) // 2) for dr in range(OBJECT_TILES) for dc in range(OBJECT_TILES)})


def token_labels(episode: VideoEpisode) -> Dict[str, np.ndarray]:
    """Per-token training targets, ``(N, FRAME_TOKENS)`` each, -1 where none (background):

    * ``object`` / ``color``: the object (colour) whose square touches the token;
    * ``prev``: on an object's tokens, the object of the visit that entered right before;
    * ``left``: ``(N, FRAME_TOKENS, len(OBJECTS))`` 0/1, on an object's tokens the objects
      whose last frame lies between the previous entry and this visit's entry (exclusive) --
      the needles for which this visit answers ``entered_after``."""
    n = episode.length
    out = {k: np.full((n, FRAME_TOKENS), -1, dtype=np.int64) for k in ("object", "color", "prev")}
    left = np.zeros((n, FRAME_TOKENS, len(OBJECTS)), dtype=np.float32)
    visits = episode.visits
    for i, visit in enumerate(visits):
        gone = np.zeros(len(OBJECTS), dtype=np.float32)
        since = visits[i - 1].enter if i else -1
        for other in visits[:i]:
            if since <= other.leave < visit.enter:
                gone[other.obj] = 1.0
        for f, (r, c) in zip(visit.frames, visit.path):
            for ti, tj in token_tiles(r, c):
                k = ti * TOKEN_GRID + tj
                out["object"][f, k], out["color"][f, k] = visit.obj, visit.color
                out["prev"][f, k] = visits[i - 1].obj if i else -1
                left[f, k] = gone
    out["left"] = left
    return out


def answer_words() -> Dict[str, Tuple[str, ...]]:
    """The answer vocabulary of each kind."""
    return {"color": COLORS, "before": OBJECTS, "same": ("yes", "no"), "entered_after": OBJECTS, "now": COLORS}


def corpus(rng: np.random.Generator, lines: int = 4000) -> List[str]:
    """Text the miniature's tokenizer is trained on: every question form of this world with
    its answer (the tiled world's ``corpus`` over this world's templates and answers)."""
    return _tiled.corpus(rng, lines, TEMPLATES, answer_words())
