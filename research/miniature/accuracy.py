"""``python -m benchmarks.bench --preset accuracy``: does retrieval find the moment a question is about?

Streams held-out videos of the miniature's world through the project's API and asks the
three question kinds after each, for every mode at every stream length:

* ``full``: full attention (unbounded window while encoding, every frame at the question);
* ``rekv/<score>/k<k>``: ReKV -- windowed encoding, internal retrieval of k frames per layer
  as published (``PUBLISHED``: mean question query); ``rekv/tuned/k<k>``: with the variant
  the retrieval study found best (``TUNED``: per-token z-max over the question's own tokens,
  the first layer's frames for every layer);
* ``external/k4``, ``hybrid/k4``: open_clip retrieval with the configured embedder (default:
  ``"miniature"``, the one trained on this world, ``research.miniature.clip``);
* ``uniform/k4``, ``last/k4``: the vanilla model on k frames sampled uniformly / the last k;
* ``windowed_all``: windowed encoding with every frame retrieved, and ``fullctx/k4``:
  full-context encoding with top-k retrieval -- the loss decomposed;
* ``int8/k4``, ``int4/k4``: ReKV with the offloaded KV quantized;
* ``window<W>/k4``: the window-size sweep.

Per question it records the answer (first word against the ground truth) and, for
retrieval modes, whether each layer retrieved every frame the answer needs (needle hit),
beside the hit rate of a random choice of the same number of frames. A V-NIAH-style
heatmap (length x needle depth) is measured for the colour question. Chance levels are
printed beside every accuracy. Videos come from the held-out seed stream only.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from lmms_rekv.config import ReKVConfig
from lmms_rekv.miniature import world

logger = logging.getLogger(__name__)

# internal retrieval as ReKV publishes it (mean question query, every layer its own frames) and
# the variant the retrieval study (retrieval_study.py) found best on this miniature
PUBLISHED = {"query_pool": "mean", "query_span": "prompt", "layer_frames": "own", "recent_frames": 0}
TUNED = {"query_pool": "max", "query_span": "question", "layer_frames": "first", "recent_frames": 0}  # as measured: retrieval alone


@dataclass
class Settings:
    """What one benchmark run measures."""

    lengths: Sequence[int] = (16, 64, 256, 1024, 4096)
    videos: int = 30  # per length; each video carries one question of each kind
    seed: int = 0
    window_frames: int = 4
    chunk_frames: int = 64
    topks: Sequence[int] = (1, 2, 4, 8)
    k: int = 4  # top-k of the other modes
    full_max_frames: int = 4096  # full attention measured up to this length
    sweep_windows: Sequence[int] = (1, 16)  # extra window sizes (frames), at sweep_lengths
    sweep_lengths: Sequence[int] = (64, 1024)
    quant_lengths: Sequence[int] = (64, 1024)
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)
    depth_lengths: Sequence[int] = (16, 64, 256)
    depth_videos: int = 10
    clip_model: Optional[str] = "miniature"  # open_clip config/name for external/hybrid; None = tiny random


@dataclass
class Tally:
    """Counts of one (mode, length, kind) cell."""

    right: int = 0
    total: int = 0
    hits: List[int] = field(default_factory=list)  # per layer
    random_hit: float = 0.0

    def add(self, correct: bool, hit: Optional[List[bool]], random_hit: Optional[float]) -> None:
        self.right += int(correct)
        self.total += 1
        if hit is not None:
            self.hits = [a + int(b) for a, b in zip(self.hits, hit)] if self.hits else [int(b) for b in hit]
            self.random_hit += random_hit or 0.0

    def summary(self) -> dict:
        out = {"accuracy": self.right / max(self.total, 1), "n": self.total}
        if self.hits:
            out["needle_hit_per_layer"] = [h / self.total for h in self.hits]
            out["needle_hit_random"] = self.random_hit / self.total
        return out


def random_hit_rate(length: int, chosen: int, needed: int) -> float:
    """Chance that ``chosen`` frames drawn at random from ``length`` include all ``needed``."""
    if chosen >= length:
        return 1.0
    if needed > chosen:
        return 0.0
    return math.comb(length - needed, chosen - needed) / math.comb(length, chosen)


class Bench:
    """The miniature loaded once; engines with different settings share its weights."""

    def __init__(self, model_dir: str, settings: Settings, workdir: str) -> None:
        from lmms_rekv.model import ReKV
        from research.tiny import write_tiny_clip_config

        from .families import TRAIN_FPS

        self.settings, self.fps = settings, TRAIN_FPS  # the rate the miniatures' frames stand for
        clip = settings.clip_model or write_tiny_clip_config(workdir)
        base = ReKV.from_pretrained(model_dir, config=ReKVConfig(window_tokens=None, topk_frames=None), dtype=torch.float32, device="cpu")
        self.base = base
        self.frame_tokens = base.block_tokens
        self.clip = dict(clip_model=clip, clip_pretrained=None)
        self.engines: Dict[tuple, object] = {}

    def engine(self, window_frames: Optional[int], kv_quant: Optional[str] = None, embed: bool = False):
        """An engine encoding with ``window_frames`` (None = full context)."""
        key = (window_frames, kv_quant, embed)
        if key not in self.engines:
            window = None if window_frames is None else window_frames * self.frame_tokens
            cfg = ReKVConfig(window_tokens=window, topk_frames=None, chunk_frames=self.settings.chunk_frames, kv_quant=kv_quant,
                                  retrieval="hybrid" if embed else "internal", block_tokens=self.frame_tokens, **self.clip, **PUBLISHED)
            engine = self.base.with_config(cfg)
            if embed:
                engine.embedder  # noqa: B018  (load now)
            self.engines[key] = engine
        return self.engines[key]

    def encode(self, frames: np.ndarray, window_frames: Optional[int], kv_quant: Optional[str] = None, embed: bool = False,
               fps: Optional[float] = None):
        """A session of ``frames`` sampled at ``fps`` (default: the miniatures' rate), flushed."""
        engine = self.engine(window_frames, kv_quant, embed)
        size = tuple(frames.shape[1:3]) if engine.backbone.sizes_per_stream else None  # world frames as trained
        session = engine.new_session(fps=fps or self.fps, frame_size=size)
        session.add_frames(frames)
        session.flush()
        return session


def ask(session, question: world.Question, **qa) -> tuple:
    """(correct, per-layer selected frame sets) for one question with QA-time settings ``qa``
    (``topk_frames``, ``score``, ``retrieval``) applied to this question only."""
    with session.question_settings(**qa):
        answer = session.answer(question.text, max_new_tokens=2)
    words = answer.text.strip().split()
    selected = [None if s is None else set(int(i) for i in s) for s in answer.selected]
    return bool(words) and words[0].strip("?.,!") == question.answer, selected


def hit(selected: List[Optional[set]], question: world.Question) -> Optional[List[bool]]:
    """Per layer: whether every frame the answer needs was retrieved (None: not a retrieval mode)."""
    if not selected or any(s is None for s in selected):
        return None
    return [set(question.frames) <= s for s in selected]


def run_video(bench: Bench, episode: world.Episode, frames: np.ndarray, tallies: Dict, length: int) -> None:
    """Every mode on one video; results added to ``tallies[(mode, length, kind)]``."""
    s = bench.settings
    record = lambda mode, q, correct, selected, k=None: tallies.setdefault((mode, length, q.kind), Tally()).add(  # noqa: E731
        correct, hit(selected, q) if k is not None else None, random_hit_rate(length, k, len(q.frames)) if k else None)
    win = bench.encode(frames, s.window_frames, embed=True)
    for q in episode.questions:
        for k in s.topks:
            for score in ("dot", "cosine"):
                if score == "cosine" and k != s.k:
                    continue
                correct, sel = ask(win, q, topk_frames=k, score=score, retrieval="internal", **PUBLISHED)
                record(f"rekv/{score}/k{k}", q, correct, sel, k)
            if k in (s.k, 2 * s.k):
                correct, sel = ask(win, q, topk_frames=k, retrieval="internal", **TUNED)
                record(f"rekv/tuned/k{k}", q, correct, sel, k)
        for mode in ("external", "hybrid"):
            correct, sel = ask(win, q, topk_frames=s.k, retrieval=mode)
            record(f"{mode}/k{s.k}", q, correct, sel, s.k)
        correct, _ = ask(win, q, topk_frames=None, retrieval="internal")
        record("windowed_all", q, correct, None)
    win.close()
    if length <= s.full_max_frames:
        full = bench.encode(frames, None)
        for q in episode.questions:
            record("full", q, ask(full, q, topk_frames=None)[0], None)
            correct, sel = ask(full, q, topk_frames=s.k)
            record(f"fullctx/k{s.k}", q, correct, sel, s.k)
        full.close()
    for name, picks in (("uniform", np.linspace(0, length - 1, min(s.k, length)).round().astype(int)), ("last", np.arange(max(0, length - s.k), length))):
        small = bench.encode(frames[np.unique(picks)], None)
        for q in episode.questions:
            record(f"{name}/k{s.k}", q, ask(small, q, topk_frames=None)[0], None)
        small.close()
    if length in s.quant_lengths:
        for quant in ("int8", "int4"):
            session = bench.encode(frames, s.window_frames, kv_quant=quant)
            for q in episode.questions:
                correct, sel = ask(session, q, topk_frames=s.k)
                record(f"{quant}/k{s.k}", q, correct, sel, s.k)
            session.close()
    if length in s.sweep_lengths:
        for w in s.sweep_windows:
            session = bench.encode(frames, w)
            for q in episode.questions:
                correct, sel = ask(session, q, topk_frames=s.k)
                record(f"window{w}/k{s.k}", q, correct, sel, s.k)
            session.close()


def run_depths(bench: Bench, tallies: Dict, progress) -> None:
    """Colour questions with the needle at fixed depths: ReKV (dot, k) and full attention."""
    s = bench.settings
    for length in s.depth_lengths:
        for depth in s.depths:
            rng = world.rng_for(world.HELD_OUT, 7_000_000 + s.seed * 1_000 + length + int(depth * 100))
            for _ in range(s.depth_videos):
                episode = world.make_episode(rng, length, kinds=("color",), depth=depth)
                frames = world.render(episode.objects, episode.colors, rng)
                (q,) = episode.questions
                win = bench.encode(frames, s.window_frames)
                tallies.setdefault(("rekv", length, depth), Tally()).add(ask(win, q, topk_frames=s.k)[0], None, None)
                win.close()
                if length <= s.full_max_frames:
                    full = bench.encode(frames, None)
                    tallies.setdefault(("full", length, depth), Tally()).add(ask(full, q, topk_frames=None)[0], None, None)
                    full.close()
                progress.update(1)


def run(settings: Settings, model_dir: str) -> dict:
    """Measure everything; returns the JSON-able results."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    tallies: Dict = {}
    depth_tallies: Dict = {}
    with tempfile.TemporaryDirectory(prefix="rekv-acc-") as workdir:
        bench = Bench(model_dir, settings, workdir)
        total = len(settings.lengths) * settings.videos + len(settings.depth_lengths) * len(settings.depths) * settings.depth_videos
        with tqdm(total=total, desc="accuracy benchmark", unit="video") as progress:
            for length in settings.lengths:
                rng = world.rng_for(world.HELD_OUT, settings.seed * 1_000_003 + length)
                for _ in range(settings.videos):
                    episode = world.make_episode(rng, length)
                    run_video(bench, episode, world.render(episode.objects, episode.colors, rng), tallies, length)
                    progress.update(1)
            run_depths(bench, depth_tallies, progress)
    cells = [{"mode": m, "length": n, "kind": k, **t.summary()} for (m, n, k), t in sorted(tallies.items(), key=lambda x: (x[0][0], x[0][1], x[0][2]))]
    depth = [{"mode": m, "length": n, "depth": d, **t.summary()} for (m, n, d), t in sorted(depth_tallies.items())]
    return {"model": model_dir, "settings": settings.__dict__, "chance": world.CHANCE, "cells": cells, "depth": depth,
            "trained_max_frames": _trained_length(model_dir), "seconds": round(time.perf_counter() - started, 1)}


def _trained_length(model_dir: str) -> Optional[int]:
    path = os.path.join(model_dir, "training_log.json")
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh).get("config", {}).get("max_frames")


# -- report ---------------------------------------------------------------------------------
MAIN_MODES = ("full", "windowed_all", "rekv/dot/k1", "rekv/dot/k2", "rekv/dot/k4", "rekv/dot/k8", "rekv/cosine/k4", "rekv/tuned/k4", "rekv/tuned/k8",
              "fullctx/k4", "external/k4", "hybrid/k4", "uniform/k4", "last/k4", "int8/k4", "int4/k4", "window1/k4", "window16/k4")


def _cell(results: dict, mode: str, length: int, kind: str) -> Optional[dict]:
    return next((c for c in results["cells"] if c["mode"] == mode and c["length"] == length and c["kind"] == kind), None)


def markdown(results: dict) -> str:
    """Accuracy tables (one per question kind, chance in the heading), needle hit rates per
    layer against random, and the depth heatmap as a table."""
    s = results["settings"]
    lengths = list(s["lengths"])
    out = [f"Held-out seed {s['seed']}, {s['videos']} videos per length (one question of each kind per video); "
           f"window {s['window_frames']} frames, trained up to {results['trained_max_frames']} frames; {results['seconds']:.0f} s.", ""]
    for kind in world.KINDS:
        out += [f"**{kind}** (chance {world.CHANCE[kind]:.1%})", "",
                "| mode | " + " | ".join(str(n) for n in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
        for mode in MAIN_MODES:
            cells = [_cell(results, mode, n, kind) for n in lengths]
            if any(cells):
                out.append(f"| {mode} | " + " | ".join(f"{c['accuracy']:.0%}" if c else "" for c in cells) + " |")
        out.append("")
    out += ["**needle hit rate** (every frame the answer needs retrieved), per layer, all kinds; random choice in brackets", "",
            "| mode | " + " | ".join(str(n) for n in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
    for mode in MAIN_MODES:
        row = []
        for n in lengths:
            cells = [c for c in (_cell(results, mode, n, k) for k in world.KINDS) if c and "needle_hit_per_layer" in c]
            if not cells:
                row.append("")
                continue
            layers = np.mean([c["needle_hit_per_layer"] for c in cells], axis=0)
            rand = np.mean([c["needle_hit_random"] for c in cells])
            row.append("/".join(f"{h:.0%}" for h in layers) + f" ({rand:.0%})")
        if any(row):
            out.append(f"| {mode} | " + " | ".join(row) + " |")
    if results["depth"]:
        depths = sorted({d["depth"] for d in results["depth"]})
        out += ["", f"**needle depth** (colour question, chance {world.CHANCE['color']:.1%}): accuracy, ReKV as published (internal dot, mean query) top-{s['k']} / full attention", "",
                "| frames | " + " | ".join(f"{d:.0%}" for d in depths) + " |", "|---" * (len(depths) + 1) + "|"]
        for n in sorted({d["length"] for d in results["depth"]}):
            row = []
            for d in depths:
                got = {c["mode"]: c["accuracy"] for c in results["depth"] if c["length"] == n and c["depth"] == d}
                row.append(f"{got.get('rekv', float('nan')):.0%} / " + (f"{got['full']:.0%}" if "full" in got else "-"))
            out.append(f"| {n} | " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


def plots(results: dict, folder: str) -> List[str]:
    """``accuracy.png`` (accuracy vs length per kind) and ``depth.png`` (the heatmap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = list(results["settings"]["lengths"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    for ax, kind in zip(axes, world.KINDS):
        for mode in ("full", "windowed_all", "rekv/dot/k4", "rekv/dot/k8", "rekv/tuned/k4", "fullctx/k4", "external/k4", "uniform/k4"):
            pts = [(n, c["accuracy"]) for n in lengths if (c := _cell(results, mode, n, kind))]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=mode)
        ax.axhline(world.CHANCE[kind], color="grey", linestyle=":", label="chance")
        if results["trained_max_frames"]:
            ax.axvline(results["trained_max_frames"], color="grey", linestyle="--", linewidth=0.8)
        ax.set(xscale="log", xlabel="stream length (frames)", title=f"{kind} (chance {world.CHANCE[kind]:.0%})", ylim=(0, 1.02))
    axes[0].set_ylabel("held-out accuracy")
    axes[-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    paths = [os.path.join(folder, "accuracy.png")]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    if results["depth"]:
        depths = sorted({d["depth"] for d in results["depth"]})
        lens = sorted({d["length"] for d in results["depth"]})
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for ax, mode in zip(axes, ("rekv", "full")):
            grid = np.full((len(lens), len(depths)), np.nan)
            for c in results["depth"]:
                if c["mode"] == mode:
                    grid[lens.index(c["length"]), depths.index(c["depth"])] = c["accuracy"]
            im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
            ax.set(xticks=range(len(depths)), xticklabels=[f"{d:.0%}" for d in depths], yticks=range(len(lens)), yticklabels=lens,
                   xlabel="needle depth", ylabel="frames", title="ReKV as published (mean query), top-4" if mode == "rekv" else "full attention")
            for (i, j), v in np.ndenumerate(grid):
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=8)
        fig.colorbar(im, ax=axes, shrink=0.8)
        paths.append(os.path.join(folder, "depth.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def common_parser(prog: str, description: str, defaults: Settings) -> argparse.ArgumentParser:
    """The options every miniature benchmark takes (``--out``, ``--model``, ``--seed``,
    ``--lengths``, ``--questions``, ``--clip-model``)."""
    from lmms_rekv.miniature import WEIGHTS

    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default=WEIGHTS, help="miniature folder (default: the shipped one)")
    parser.add_argument("--seed", type=int, default=0, help="held-out seed")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(defaults.lengths))
    parser.add_argument("--questions", type=int, default=defaults.videos, help="videos per length (one question of each kind each)")
    parser.add_argument("--clip-model", default="miniature",
                        help="open_clip config/name for external/hybrid (default: the embedder trained with the miniature; 'none': a tiny random one)")
    return parser


def write_outputs(folder: str, results: dict, text: str, draw) -> None:
    """``results.json``, ``results.md`` (``text``) and the plots (``draw(results, folder)``) in ``folder``."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    with open(os.path.join(folder, "results.md"), "w") as fh:
        fh.write(text)
    draw(results, folder)
    print(text)


def main(argv: Optional[List[str]] = None) -> int:
    parser = common_parser("python -m benchmarks.bench --preset accuracy", __doc__, Settings())
    parser.add_argument("--depth-videos", type=int, default=Settings.depth_videos, help="videos per heatmap cell (0: no heatmap)")
    parser.add_argument("--full-max-frames", type=int, default=Settings.full_max_frames)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    settings = Settings(lengths=tuple(args.lengths), videos=args.questions, seed=args.seed, depth_videos=args.depth_videos,
                        full_max_frames=args.full_max_frames, clip_model=None if args.clip_model.lower() == "none" else args.clip_model)
    if not args.depth_videos:
        settings.depth_lengths = ()
    results = run(settings, args.model)
    write_outputs(args.out, results, markdown(results), plots)
    return 0
