"""Which blocks does retrieval spend its slots on, and what corrects it? (issue 38, step 1-2)

    python -m research.miniature.hub_study --model research/miniature/video-miniature \\
        --videos 200 --lengths 8 16 32 --out benchmarks/cpu-video-miniature-hub
    python -m research.miniature.hub_study --model lmms_rekv/miniature/weights \\
        --videos 100 --lengths 16 32 64 --out benchmarks/cpu-miniature-hub

Held-out videos of the checkpoint's world (``world.json``: the video world or the tiled world;
``HELD_OUT`` seeds from 300,000, rendered by the world's own renderer), each encoded once with
ReKV's window (and once with full attention);
every question is then asked under each QA-time variant of the same session (``VARIANTS``).
Per variant and length: accuracy per kind (chance beside it), the share of retrieval slots on
frames with no object on screen (*hub* slots; video world only), how many blocks the answer attended to, and the
paired difference to the default (``rekv``) with a 95 % interval (normal approximation of the
per-question differences).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import time
from typing import Dict, List, Optional

import torch

logger = logging.getLogger(__name__)

#: name -> QA-time ReKVConfig fields on the windowed session (``full``: the full-attention session)
VARIANTS: Dict[str, dict] = {
    "full": {},
    "rekv": {},
    "center": {"hub_correction": "center"},
    "template": {"hub_correction": "template"},
    "recent1": {"recent_frames": 1},
    "recent2": {"recent_frames": 2},
    "template+recent1": {"hub_correction": "template", "recent_frames": 1},
    "center+recent1": {"hub_correction": "center", "recent_frames": 1},
    "last-k": {"recent_frames": "k"},  # only the most recent k blocks (SimpleStream-like, no memory)
    "published": {"query_pool": "mean", "query_span": "prompt", "layer_frames": "own"},  # ReKV as published
}


def interval(diffs: List[int]) -> Dict[str, float]:
    """Mean of paired per-question differences and its 95 % normal-approximation interval."""
    n = len(diffs)
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / max(1, n - 1)
    half = 1.96 * math.sqrt(var / n)
    return {"diff": mean, "low": mean - half, "high": mean + half}


def run(model_dir: str, videos: int, lengths: List[int], k: int, variants: List[str],
        on_length=None) -> dict:
    from lmms_rekv import ReKV, ReKVConfig
    from research.miniature.accuracy import ask
    from research.miniature.build import world_module

    with open(os.path.join(model_dir, "world.json")) as fh:
        world_name = json.load(fh).get("world", "tiled")
    vw = world_module(world_name)

    base = ReKV.from_pretrained(model_dir, dtype="float32", device="cpu")
    window = 4 * base.block_tokens
    windowed = base.with_config(ReKVConfig(window_tokens=window, topk_frames=k, chunk_frames=8))
    full = base.with_config(ReKVConfig(window_tokens=None, topk_frames=None, chunk_frames=8))
    results: Dict[str, dict] = {}
    started = time.time()
    for length in lengths:
        per_q: Dict[str, List[int]] = {v: [] for v in variants}
        kinds: Dict[str, List[str]] = {"kind": []}
        hub_slots = {v: [0, 0] for v in variants}
        for seed in range(videos):
            rng = vw.rng_for(vw.HELD_OUT, 300_000 + 1000 * length + seed)
            episode = vw.make_episode(rng, length)
            if world_name == "video":
                frames = vw.render(episode, rng)
                empty = {f for f in range(length) if not episode.on_screen(f)}
            else:  # the tiled world: an object on every frame
                frames, empty = vw.render(episode.objects, episode.colors, rng), set()
            sessions = {"full": full.new_session(fps=1), "rekv": windowed.new_session(fps=1)}
            for session in sessions.values():
                session.add_frames(frames)
                session.flush()
            for q in episode.questions:
                kinds["kind"].append(q.kind)
                for name in variants:
                    session = sessions["full" if name == "full" else "rekv"]
                    right, selected = ask(session, q, **{f: (k if v == "k" else v) for f, v in VARIANTS[name].items()})
                    per_q[name].append(int(right))
                    if name != "full" and selected and selected[0] is not None:
                        hub_slots[name][0] += len(selected[0] & empty)
                        hub_slots[name][1] += len(selected[0])
            for session in sessions.values():
                session.close()
        results[str(length)] = _summary(per_q, kinds["kind"], hub_slots, vw.CHANCE)
        logger.info("hub study: %d frames done (%.0f s so far)", length, time.time() - started)
        report = {"model": model_dir, "world": world_name, "videos": videos, "lengths": lengths, "k": k,
                  "window_tokens": window, "chance": dict(vw.CHANCE), "results": results,
                  "seconds": round(time.time() - started, 1),
                  "machine": f"{platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__}"}
        if on_length is not None:
            on_length(report)  # written after every length: a long run keeps what it measured
    return report


def _summary(per_q: Dict[str, List[int]], kinds: List[str], hub_slots: Dict[str, list], chance: dict) -> dict:
    out = {}
    for name, right in per_q.items():
        by_kind: Dict[str, List[int]] = {}
        for kind, r in zip(kinds, right):
            by_kind.setdefault(kind, []).append(r)
        row = {"accuracy": sum(right) / len(right), "n": len(right),
               "per_kind": {kd: sum(v) / len(v) for kd, v in by_kind.items()},
               "hub_slot_share": hub_slots[name][0] / hub_slots[name][1] if hub_slots[name][1] else None}
        if name != "rekv" and "rekv" in per_q:
            row["vs_rekv"] = interval([a - b for a, b in zip(right, per_q["rekv"])])
        if name != "full" and "full" in per_q:
            row["vs_full"] = interval([a - b for a, b in zip(right, per_q["full"])])
        out[name] = row
    return out


def markdown(results: dict) -> str:
    lines = [f"{results['world'].capitalize()}-world miniature, held-out, {results['videos']} videos per length, top-{results['k']} blocks, "
             f"window {results['window_tokens']} tokens; {results['machine']}; {results['seconds']} s.\n"]
    chance = results["chance"]
    for length, rows in results["results"].items():
        kinds = list(next(iter(rows.values()))["per_kind"])
        lines.append(f"\n**{length} frames** (n = {next(iter(rows.values()))['n']} questions)\n")
        lines.append("| variant | accuracy | " + " | ".join(f"{kd} (chance {chance[kd]:.0%})" for kd in kinds)
                     + " | vs rekv (95 % CI) | vs full | hub slots |")
        lines.append("|---" * (len(kinds) + 5) + "|")
        for name, row in rows.items():
            def ci(key: str) -> str:
                c = row.get(key)
                return "--" if c is None else f"{100 * c['diff']:+.1f} [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}]"
            hub = "--" if row["hub_slot_share"] is None else f"{row['hub_slot_share']:.1%}"
            lines.append(f"| {name} | {row['accuracy']:.1%} | " + " | ".join(f"{row['per_kind'][kd]:.1%}" for kd in kinds)
                         + f" | {ci('vs_rekv')} | {ci('vs_full')} | {hub} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research.miniature.hub_study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="research/miniature/video-miniature")
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--lengths", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--topk-frames", dest="k", type=int, default=4)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = run(args.model, args.videos, args.lengths, args.k, args.variants,
                  on_length=(lambda report: write(args.out, report)) if args.out else None)
    print(markdown(results))
    return 0


def write(folder: str, results: dict) -> None:
    """``results.json`` and ``results.md`` in ``folder``."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    with open(os.path.join(folder, "results.md"), "w") as fh:
        fh.write(markdown(results))


if __name__ == "__main__":
    raise SystemExit(main())
