"""``python -m benchmarks.bench --preset positions``: does re-positioning retrieved frames survive M-RoPE?

For one miniature (a Qwen-shaped one: ``python -m research.miniature train --family
qwen2_vl ...``; the LLaVA-OV one as the 1-D reference) streams held-out videos once per
length with windowed encoding, then asks every question under each position strategy the
family supports (``ReKVConfig.position_strategy``: ``layout``, ``original``,
``consecutive_t``, ``1d``) at the same top-k, window and retrieval (the tuned internal
variant), so that the strategies see the same retrieved frames and differ only in where
those frames are placed. References: full attention, the vanilla model on ``k`` frames
sampled uniformly (at their true rate), windowed encoding with every frame retrieved. For
Qwen2.5-VL (time in the positions) and Qwen3-VL (time in the text) the stream is also
encoded and questioned with a wrong sampling rate (``wrong_fps``). Per cell: accuracy
(chance beside it) and the needle hit rate per layer (a random choice's in brackets).
Nothing was trained with retrieval in the loop.
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

from .accuracy import TUNED, Bench, Settings, Tally, ask, common_parser, hit, random_hit_rate, write_outputs

logger = logging.getLogger(__name__)


@dataclass
class PositionSettings(Settings):
    """What the study measures: ``k`` frames retrieved with a ``window_frames`` window."""

    lengths: Sequence[int] = (16, 32, 64, 128)
    videos: int = 30
    full_max_frames: int = 128
    wrong_fps: float = 0.25  # the rate a mis-configured stream claims (the miniatures' frames are 1 s apart)


def video_rng(settings: PositionSettings, length: int) -> np.random.Generator:
    return world.rng_for(world.HELD_OUT, 9_000_000 + settings.seed * 1_000_003 + length)


def _record(tallies: Dict, mode: str, length: int, q: world.Question, correct: bool, selected, k: Optional[int]) -> None:
    cell = tallies.setdefault((mode, length, q.kind), Tally())
    cell.add(correct, hit(selected, q) if k else None, random_hit_rate(length, k, len(q.frames)) if k else None)


def _strategies(bench: Bench, session, episode: world.Episode, tallies: Dict, length: int, suffix: str = "") -> None:
    s = bench.settings
    for q in episode.questions:
        for strategy in bench.base.backbone.strategies:
            correct, selected = ask(session, q, topk_frames=s.k, retrieval="internal", position_strategy=strategy, **TUNED)
            _record(tallies, f"{strategy}{suffix}", length, q, correct, selected, s.k)


def run_video(bench: Bench, episode: world.Episode, frames: np.ndarray, tallies: Dict, length: int) -> None:
    """Every strategy and reference on one video; results added to ``tallies``."""
    s = bench.settings
    session = bench.encode(frames, s.window_frames)
    _strategies(bench, session, episode, tallies, length)
    for q in episode.questions:
        _record(tallies, "windowed_all", length, q, ask(session, q, topk_frames=None)[0], None, None)
    session.close()
    if bench.base.backbone.model_type in ("qwen2_5_vl", "qwen3_vl"):  # time in the positions / in the text
        wrong = bench.encode(frames, s.window_frames, fps=s.wrong_fps)
        _strategies(bench, wrong, episode, tallies, length, suffix=f" @{s.wrong_fps:g}fps")
        wrong.close()
    if length <= s.full_max_frames:
        full = bench.encode(frames, None)
        for q in episode.questions:
            _record(tallies, "full", length, q, ask(full, q, topk_frames=None)[0], None, None)
        full.close()
    picks = np.unique(np.linspace(0, length - 1, min(s.k, length)).round().astype(int))
    rate = bench.fps * (len(picks) - 1) / max(1, picks[-1] - picks[0]) if len(picks) > 1 else bench.fps
    small = bench.encode(frames[picks], None, fps=rate)
    for q in episode.questions:
        _record(tallies, f"uniform/k{s.k}", length, q, ask(small, q, topk_frames=None)[0], None, None)
    small.close()


def run(settings: PositionSettings, model_dir: str) -> dict:
    """Measure every strategy at every length; the JSON-able results."""
    from tqdm.auto import tqdm

    started, tallies = time.perf_counter(), {}
    with tempfile.TemporaryDirectory(prefix="rekv-positions-") as workdir:
        bench = Bench(model_dir, settings, workdir)
        family = bench.base.backbone.model_type
        with tqdm(total=len(settings.lengths) * settings.videos, desc=f"position study ({family})", unit="video") as progress:
            for length in settings.lengths:
                rng = video_rng(settings, length)
                for _ in range(settings.videos):
                    episode = world.make_episode(rng, length)
                    run_video(bench, episode, world.render(episode.objects, episode.colors, rng), tallies, length)
                    progress.update(1)
    cells = [{"mode": m, "length": n, "kind": k, **t.summary()} for (m, n, k), t in sorted(tallies.items())]
    return {"model": model_dir, "family": family,
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.__dict__.items()},
            "chance": world.CHANCE, "cells": cells, "seconds": round(time.perf_counter() - started, 1)}


def _modes(results: dict) -> List[str]:
    order = ["full", f"uniform/k{results['settings']['k']}", "windowed_all", "layout", "original", "consecutive_t", "1d"]
    def key(mode: str):
        base = mode.split(" @")[0]
        return (" @" in mode, order.index(base) if base in order else len(order), mode)

    return sorted({c["mode"] for c in results["cells"]}, key=key)


def markdown(results: dict) -> str:
    """One table per length: accuracy per kind (chance in the header), mean, needle hit."""
    s = results["settings"]
    out = [f"{results['family']} miniature ({results['model']}), held-out seed {s['seed']}, {s['videos']} videos per length "
           f"(one question of each kind per video), window {s['window_frames']} frames, top-{s['k']} (tuned internal "
           f"retrieval); {results['seconds']:.0f} s."]
    get = {(c["mode"], c["length"], c["kind"]): c for c in results["cells"]}
    for n in s["lengths"]:
        head = " | ".join(f"{k} ({world.CHANCE[k]:.0%})" for k in world.KINDS)
        out += ["", f"**{n} frames**", "", f"| mode | {head} | mean | needle hit per layer (random) |", "|---" * 6 + "|"]
        for mode in _modes(results):
            cells = [get.get((mode, n, k)) for k in world.KINDS]
            if not any(cells):
                continue
            hits = [c for c in cells if c and "needle_hit_per_layer" in c]
            hit_text = ""
            if hits:
                layers = np.mean([c["needle_hit_per_layer"] for c in hits], axis=0)
                hit_text = "/".join(f"{h:.0%}" for h in layers) + f" ({np.mean([c['needle_hit_random'] for c in hits]):.0%})"
            mean = np.mean([c["accuracy"] for c in cells if c])
            out.append(f"| {mode} | " + " | ".join(f"{c['accuracy']:.0%}" if c else "" for c in cells) + f" | {mean:.0%} | {hit_text} |")
    return "\n".join(out) + "\n"


def plot(results: dict, folder: str) -> str:
    """``positions.png``: mean accuracy vs length, one line per strategy and reference."""
    return plot_families([results], folder)


def _mean(results: dict, mode: str, length: int, kinds: Sequence[str] = world.KINDS) -> Optional[float]:
    cells = [c["accuracy"] for c in results["cells"] if c["mode"] == mode and c["length"] == length and c["kind"] in kinds]
    return float(np.mean(cells)) if len(cells) == len(kinds) else None


def summary(runs: Sequence[dict]) -> str:
    """One table over families: mean accuracy of every mode per length, and the temporal-order
    (``before``) and two-needle (``same``) accuracy at the longest length."""
    lengths = runs[0]["settings"]["lengths"]
    longest = lengths[-1]
    head = " / ".join(f"{n}" for n in lengths)
    out = [f"| family | mode | mean accuracy at {head} frames | before / same at {longest} |", "|---" * 4 + "|"]
    for results in runs:
        for mode in _modes(results):
            means = [_mean(results, mode, n) for n in lengths]
            kinds = [_mean(results, mode, longest, (k,)) for k in ("before", "same")]
            out.append(f"| {results['family']} | {mode} | " + " / ".join("--" if m is None else f"{m:.0%}" for m in means)
                       + " | " + " / ".join("--" if m is None else f"{m:.0%}" for m in kinds) + " |")
    chance = ", ".join(f"{k} {world.CHANCE[k]:.1%}" for k in world.KINDS)
    return "\n".join(out) + f"\n\nChance: {chance} (mean of kinds {np.mean([world.CHANCE[k] for k in world.KINDS]):.1%}).\n"


def plot_families(runs: Sequence[dict], folder: str) -> str:
    """``positions.png``: one panel per family, mean accuracy vs length per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs), 4.2), sharey=True)
    axes = np.atleast_1d(axes)
    colours = {m: f"C{i}" for i, m in enumerate(["full", "uniform/k4", "windowed_all", "layout", "original", "consecutive_t", "1d"])}
    for ax, results in zip(axes, runs):
        lengths = results["settings"]["lengths"]
        for mode in _modes(results):
            points = [(n, _mean(results, mode, n)) for n in lengths if _mean(results, mode, n) is not None]
            ax.plot(*zip(*points), marker="o", label=mode, color=colours.get(mode.split(" @")[0], "k"),
                    linestyle="--" if " @" in mode else "-")
        ax.axhline(np.mean([world.CHANCE[k] for k in world.KINDS]), color="grey", linestyle=":", label="chance")
        ax.set(xscale="log", xlabel="stream length (frames)", title=results["family"], ylim=(0, 1.02))
        ax.legend(fontsize=6)
    axes[0].set_ylabel("held-out accuracy, mean of kinds")
    fig.tight_layout()
    path = os.path.join(folder, "positions.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    parser = common_parser("python -m benchmarks.bench --preset positions", __doc__, PositionSettings())
    parser.add_argument("--combine", nargs="+", default=None, metavar="DIR",
                        help="only write OUT/summary.md and OUT/positions.png from earlier runs' results.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.combine:
        runs = []
        for folder in args.combine:
            with open(os.path.join(folder, "results.json")) as fh:
                runs.append(json.load(fh))
        os.makedirs(args.out, exist_ok=True)
        text = summary(runs)
        with open(os.path.join(args.out, "summary.md"), "w") as fh:
            fh.write(text)
        plot_families(runs, args.out)
        print(text)
        return 0
    settings = PositionSettings(lengths=tuple(args.lengths), videos=args.questions, seed=args.seed, clip_model=None)
    results = run(settings, args.model)
    write_outputs(args.out, results, markdown(results), plot)
    return 0
