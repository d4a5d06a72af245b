"""``python -m benchmarks.bench --preset retrieval``: which training-free way of scoring frames finds the needle?

Streams held-out videos of the miniature's world once per length (windowed encoding, as ReKV
does) and asks every question under each retrieval variant -- the ``ReKVConfig`` fields
``query_pool`` (mean / max / head), ``query_span`` (prompt / question), ``score`` (dot /
cosine), ``layer_frames`` (own / first), ``adaptive`` and ``topk_frames`` -- plus external
and hybrid retrieval with the configured embedder. Per cell: accuracy (chance beside it),
the needle hit rate per layer (every frame the answer needs retrieved) and a random
choice's hit rate. Full attention and windowed encoding with every frame are the
references. The miniature was trained with full attention only: nothing here was trained
with retrieval in the loop.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from lmms_rekv.miniature import world

from .accuracy import Bench, Settings, Tally, ask, common_parser, hit, random_hit_rate, write_outputs

logger = logging.getLogger(__name__)

# name -> QA-time ReKVConfig fields (internal retrieval unless "retrieval" is given)
VARIANTS: Dict[str, dict] = {
    "mean": {},
    "mean/cosine": {"score": "cosine"},
    "mean/question": {"query_span": "question"},
    "max": {"query_pool": "max"},
    "max/cosine": {"query_pool": "max", "score": "cosine"},
    "max/question": {"query_pool": "max", "query_span": "question"},
    "head": {"query_pool": "head"},
    "head/question": {"query_pool": "head", "query_span": "question"},
    "mean/first": {"layer_frames": "first"},
    "max/first": {"query_pool": "max", "layer_frames": "first"},
    "max/question/first": {"query_pool": "max", "query_span": "question", "layer_frames": "first"},
    "head/question/first": {"query_pool": "head", "query_span": "question", "layer_frames": "first"},
    "max/question/first/adaptive": {"query_pool": "max", "query_span": "question", "layer_frames": "first", "adaptive": "mass"},
    "external": {"retrieval": "external"},
    "hybrid": {"retrieval": "hybrid"},
    "hybrid/max/question": {"retrieval": "hybrid", "query_pool": "max", "query_span": "question"},
}


@dataclass
class StudySettings(Settings):
    """What the study measures (``k``: the top-k of every variant; ``extra_topks``: also
    measured for ``extra_variants``)."""

    lengths: Sequence[int] = (16, 64, 256, 1024)
    videos: int = 30
    variants: Sequence[str] = tuple(VARIANTS)
    extra_topks: Sequence[int] = (1, 2, 8)
    extra_variants: Sequence[str] = ("mean", "max/question/first")
    full_max_frames: int = 1024


def video_rng(settings: StudySettings, length: int) -> np.random.Generator:
    """The held-out random stream of the study's videos of ``length`` frames."""
    return world.rng_for(world.HELD_OUT, 5_000_000 + settings.seed * 1_000_003 + length)


def run_video(bench: Bench, episode: world.Episode, frames: np.ndarray, tallies: Dict, length: int) -> None:
    """Every variant on one video (encoded once); results added to ``tallies``."""
    s = bench.settings

    def record(mode: str, q: world.Question, correct: bool, selected, k: Optional[int]) -> None:
        cell = tallies.setdefault((mode, length, q.kind), Tally())
        cell.add(correct, hit(selected, q) if k else None, random_hit_rate(length, k, len(q.frames)) if k else None)

    session = bench.encode(frames, s.window_frames, embed=True)
    for q in episode.questions:
        for name in s.variants:
            fields = {"retrieval": "internal", **VARIANTS[name]}
            for k in (s.k, *(s.extra_topks if name in s.extra_variants else ())):
                correct, selected = ask(session, q, topk_frames=k, **fields)
                record(name if k == s.k else f"{name}/k{k}", q, correct, selected, k)
        record("windowed_all", q, ask(session, q, topk_frames=None, retrieval="internal")[0], None, None)
    session.close()
    if length <= s.full_max_frames:
        full = bench.encode(frames, None)
        for q in episode.questions:
            record("full", q, ask(full, q, topk_frames=None)[0], None, None)
        full.close()


def run(settings: StudySettings, model_dir: str) -> dict:
    """Measure every variant at every length; the JSON-able results."""
    from tqdm.auto import tqdm

    started, tallies = time.perf_counter(), {}
    with tempfile.TemporaryDirectory(prefix="rekv-study-") as workdir:
        bench = Bench(model_dir, settings, workdir)
        with tqdm(total=len(settings.lengths) * settings.videos, desc="retrieval study", unit="video") as progress:
            for length in settings.lengths:
                rng = video_rng(settings, length)
                for _ in range(settings.videos):
                    episode = world.make_episode(rng, length)
                    run_video(bench, episode, world.render(episode.objects, episode.colors, rng), tallies, length)
                    progress.update(1)
    cells = [{"mode": m, "length": n, "kind": k, **t.summary()} for (m, n, k), t in sorted(tallies.items())]
    return {"model": model_dir, "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.__dict__.items()},
            "variants": {k: VARIANTS[k] for k in settings.variants}, "chance": world.CHANCE, "cells": cells,
            "seconds": round(time.perf_counter() - started, 1)}


def _rows(results: dict) -> List[str]:
    modes = []
    for c in results["cells"]:
        if c["mode"] not in modes:
            modes.append(c["mode"])
    order = {"full": 0, "windowed_all": 1}
    return sorted(modes, key=lambda m: (order.get(m, 2), list(VARIANTS).index(m.rsplit("/k", 1)[0]) if m.rsplit("/k", 1)[0] in VARIANTS else 99, m))


def markdown(results: dict) -> str:
    """One table per length: accuracy per kind (chance in the header), mean accuracy, and
    the needle hit rate per layer over all kinds (random choice in brackets)."""
    s, out = results["settings"], []
    out.append(f"Held-out seed {s['seed']}, {s['videos']} videos per length (one question of each kind per video), "
               f"window {s['window_frames']} frames, top-{s['k']} unless named; {results['seconds']:.0f} s.")
    get = {(c["mode"], c["length"], c["kind"]): c for c in results["cells"]}
    for n in s["lengths"]:
        head = " | ".join(f"{k} ({world.CHANCE[k]:.0%})" for k in world.KINDS)
        out += ["", f"**{n} frames**", "", f"| variant | {head} | mean | needle hit per layer (random) |", "|---" * 6 + "|"]
        for mode in _rows(results):
            cells = [get.get((mode, n, k)) for k in world.KINDS]
            if not any(cells):
                continue
            acc = [c["accuracy"] for c in cells if c]
            hits = [c for c in cells if c and "needle_hit_per_layer" in c]
            hit_text = ""
            if hits:
                layers = np.mean([c["needle_hit_per_layer"] for c in hits], axis=0)
                hit_text = "/".join(f"{h:.0%}" for h in layers) + f" ({np.mean([c['needle_hit_random'] for c in hits]):.0%})"
            out.append(f"| {mode} | " + " | ".join(f"{c['accuracy']:.0%}" if c else "" for c in cells)
                       + f" | {np.mean(acc):.0%} | {hit_text} |")
    return "\n".join(out) + "\n"


def plot(results: dict, folder: str,
         modes: Sequence[str] = ("full", "windowed_all", "mean", "max", "max/question/first", "max/question/first/k8", "external", "hybrid/max/question")) -> str:
    """``retrieval.png``: mean accuracy (left) and layer-0 needle hit rate (right) vs length,
    one colour per variant on both sides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = results["settings"]["lengths"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, mode in enumerate(modes):
        acc, hits = [], []
        for n in lengths:
            cells = [c for c in results["cells"] if c["mode"] == mode and c["length"] == n]
            if cells:
                acc.append((n, np.mean([c["accuracy"] for c in cells])))
                if "needle_hit_per_layer" in cells[0]:
                    hits.append((n, np.mean([c["needle_hit_per_layer"][0] for c in cells])))
        style = {"color": f"C{i}", "marker": "o", "label": mode}
        if acc:
            left.plot(*zip(*acc), **style)
        if hits:
            right.plot(*zip(*hits), **style)
    chance = np.mean(list(world.CHANCE[k] for k in world.KINDS))
    left.axhline(chance, color="grey", linestyle=":", label="chance (mean of kinds)")
    left.set(xscale="log", xlabel="stream length (frames)", ylabel="held-out accuracy, mean of kinds", ylim=(0, 1.02))
    right.set(xscale="log", xlabel="stream length (frames)", ylabel="needle hit rate, layer 0", ylim=(0, 1.02))
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(folder, "retrieval.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    parser = common_parser("python -m benchmarks.bench --preset retrieval", __doc__, StudySettings())
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--replot", action="store_true", help="only redraw the tables and plot from OUT/results.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.replot:
        if not os.path.isfile(os.path.join(args.out, "results.json")):
            parser.error(f"--replot needs {os.path.join(args.out, 'results.json')} from an earlier run")
        with open(os.path.join(args.out, "results.json")) as fh:
            results = json.load(fh)
    else:
        settings = StudySettings(lengths=tuple(args.lengths), videos=args.questions, seed=args.seed, variants=tuple(args.variants),
                                 clip_model=None if args.clip_model.lower() == "none" else args.clip_model)
        results = run(settings, args.model)
    write_outputs(args.out, results, markdown(results), plot)
    return 0
