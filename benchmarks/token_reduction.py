"""Accuracy per byte of token reduction (``ReKVConfig.token_reduction``) on a trained miniature.

    python -m benchmarks.token_reduction --model DIR --out benchmarks/cpu-video-miniature-token-reduction

For held-out videos of the checkpoint's world (``world.json``; the video-like world is the one
this is for: its frames have static background tokens and local object tokens), every question
is answered by full attention, by ReKV without reduction (its blocks scored by their mean key,
and by their best token: ``block_score="tokens"``) and by ReKV with each reduction rule
at each keep ratio (internal retrieval, top-``k`` blocks), optionally with int8/int4 storage on
top; accuracy per kind (chance beside it), the stored KV bytes per frame measured on the
miniature, and the KV per hour projected for the 7B model of the miniature's family at 0.5 fps
through the same codecs (``TARGETS``: LLaVA-OneVision-7B, 196 tokens per frame; Qwen2.5-VL-7B,
720 tokens per 2-frame block -- a 720p video within the ``Qwen2VLVideoProcessor`` class's
default pixel bounds -- plus each kept token's slot; both 28 layers x 4 KV heads x 128 dims)
are written to
``results.json`` and ``results.md``. One process, one machine: named in the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Dict, List, Optional, Tuple

import torch

GIB = 1024**3
SEVEN_B = dict(layers=28, kv_heads=4, head_dim=128, tokens=196)  # LLaVA-OneVision-7B (Qwen2-7B)
#: the 7B model each miniature family's bytes are projected to: its name, text tower and visual
#: tokens per block (frames per block; ``slots``: kept tokens' slots stored beside the KV)
QWEN_7B = dict(name="Qwen2.5-VL-7B", layers=28, kv_heads=4, head_dim=128, video=(720, 1280), frames=2, slots=True)
TARGETS = {
    "llava_onevision": dict(name="LLaVA-OV-7B", layers=28, kv_heads=4, head_dim=128, tokens=196, frames=1, slots=False),
    "qwen2_5_vl": QWEN_7B,
    "qwen2_vl": dict(QWEN_7B, name="Qwen2-VL-7B"),  # the same text tower shape and video processor
}
#: lmms-eval's ``qwen2_5_vl`` model's pixel bounds per frame (``min_pixels``, ``max_pixels``)
LMMS_EVAL_BOUNDS = (256 * 28 * 28, 1605632)


def block_tokens_7b(target: dict, bounds: Optional[Tuple[int, int]] = None) -> int:
    """Visual tokens of one block of the target: fixed (LLaVA-OV), or what the Qwen video
    processor's ``smart_resize`` gives a ``video`` frame within ``bounds`` (min, max pixels per
    frame; None: the ``Qwen2VLVideoProcessor`` class defaults)."""
    if "tokens" in target:
        return target["tokens"]
    import transformers
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize

    processor = transformers.Qwen2VLVideoProcessor()
    unit = processor.patch_size * processor.merge_size
    low, high = bounds or (processor.size["shortest_edge"], processor.size["longest_edge"])
    h, w = smart_resize(*target["video"], factor=unit, min_pixels=low, max_pixels=high)
    return (h // unit) * (w // unit)


def projected_gib_per_hour(keep: float, kv_quant: Optional[str], fps: float = 0.5, family: str = "llava_onevision",
                           bounds: Optional[Tuple[int, int]] = None) -> float:
    """KV per hour of the 7B model of ``family`` (``TARGETS``; fp16) keeping ``keep`` of each
    block's visual tokens (and, on M-RoPE, an int16 slot per kept token and layer); ``bounds``:
    the Qwen processor's pixel bounds (``block_tokens_7b``)."""
    from lmms_rekv.storage.quant import make_codec

    if family not in TARGETS:
        raise ValueError(f"no 7B projection for a {family} miniature; one of {sorted(TARGETS)}")
    target = TARGETS[family]
    tokens = max(1, round(keep * block_tokens_7b(target, bounds)))
    codec = make_codec(kv_quant, tokens, target["kv_heads"], target["head_dim"], torch.float16)
    slots = 2 * tokens * target["layers"] if target["slots"] and keep < 1 else 0
    return (codec.bytes_per_block(target["layers"]) + slots) / target["frames"] * fps * 3600 / GIB


def _world(model_dir: str):
    from research.miniature import build

    with open(os.path.join(model_dir, "world.json")) as fh:
        name = json.load(fh).get("world", "tiled")
    return name, build.world_module(name)


def _render(name: str, world, episode, rng):
    """Frames of an episode (the tiled world renders objects and colours per frame)."""
    return world.render(episode.objects, episode.colors, rng) if name == "tiled" else world.render(episode, rng)


def configurations(keeps: List[float], quants: List[Optional[str]], k: int, window: int,
                   clip: Optional[List[str]] = None, recent: int = 0, strategy: Optional[str] = None) -> Dict[str, dict]:
    """name -> ReKVConfig fields (``full``: full attention). ``clip``: ``[config JSON,
    weights]`` of an embedder for the world -- every ReKV row once more with external
    retrieval, named ``ext/<row>``. ``recent``: ``recent_frames`` of every ReKV row (0:
    retrieval alone; 1: the package default). ``strategy``: ``position_strategy`` of every ReKV row
    (None: the default)."""
    base = dict(window_tokens=window, topk_frames=k, chunk_frames=8, recent_frames=recent, **({"position_strategy": strategy} if strategy else {}))
    out = {"full": dict(window_tokens=None, topk_frames=None, chunk_frames=8), "rekv": base,
           "rekv/token-score": dict(base, block_score="tokens")}  # a block scored by its best token, not its mean key
    out.update(_reductions(base, keeps, quants))
    if clip:
        external = dict(base, retrieval="external", clip_model=clip[0], clip_pretrained=clip[1])
        out.update({"ext/rekv": external, **{f"ext/{n}": dict(c, **{f: external[f] for f in ("retrieval", "clip_model", "clip_pretrained")})
                                             for n, c in _reductions(base, keeps, quants).items()}})
    return out


def _reductions(base: dict, keeps: List[float], quants: List[Optional[str]]) -> Dict[str, dict]:
    """Every rule x keep x quantization, and each quantization alone."""
    out: Dict[str, dict] = {}
    for kind in ("temporal", "salient", "merge"):
        for keep in keeps:
            for quant in quants:
                name = f"{kind}/{keep:g}" + (f"/{quant}" if quant else "")
                out[name] = dict(base, token_reduction=kind, token_keep=keep, kv_quant=quant)
    for quant in quants:
        if quant:
            out[f"rekv/{quant}"] = dict(base, kv_quant=quant)
    return out


def run(model_dir: str, videos: int, length: int, keeps: List[float], quants: List[Optional[str]], k: int,
        clip: Optional[List[str]] = None, recent: int = 0, strategy: Optional[str] = None) -> dict:
    from lmms_rekv import ReKV, ReKVConfig

    name, world = _world(model_dir)
    base = ReKV.from_pretrained(model_dir, dtype="float32", device="cpu")
    family = base.backbone.model_type
    window = 4 * base.block_tokens
    configs = configurations(keeps, quants, k, window, clip, recent, strategy)
    engines = {n: base.with_config(ReKVConfig(**c)) for n, c in configs.items()}
    tallies: Dict[str, Dict[str, List[int]]] = {n: {} for n in configs}
    outcomes: Dict[str, List[int]] = {n: [] for n in configs}  # every question, in one order for all
    bytes_per_frame: Dict[str, int] = {}
    started = time.time()
    from tqdm.auto import tqdm

    for seed in tqdm(range(videos), desc=f"{len(engines)} settings", unit="video"):
        rng = world.rng_for(world.HELD_OUT, 200_000 + seed)
        episode = world.make_episode(rng, length)
        frames = _render(name, world, episode, rng)
        for n, engine in engines.items():
            session = engine.new_session(fps=1)
            session.add_frames(frames)
            session.flush()
            bytes_per_frame.setdefault(n, session.stats()["kv_bytes_per_frame"])
            for q in episode.questions:
                words = session.ask(q.text, max_new_tokens=1).split()
                right = int(bool(words) and words[0].strip("?.,!") == q.answer)
                tallies[n].setdefault(q.kind, []).append(right)
                outcomes[n].append(right)
            session.close()
    rows = {}
    for n, kinds in tallies.items():
        c = configs[n]
        keep = c.get("token_keep", 1.0) if c.get("token_reduction") else 1.0
        flat = [x for v in kinds.values() for x in v]
        rows[n] = {"accuracy": sum(flat) / len(flat), "per_kind": {kd: sum(v) / len(v) for kd, v in kinds.items()},
                   "n": {kd: len(v) for kd, v in kinds.items()}, "kv_bytes_per_frame": bytes_per_frame[n],
                   "projected_7b_gib_per_hour": projected_gib_per_hour(keep, c.get("kv_quant"), family=family)}
        reference = "ext/rekv" if n.startswith("ext/") else "rekv"
        if n not in (reference, "full") and reference in outcomes:  # paired: the same questions without reduction
            rows[n]["vs_rekv"] = interval([a - b for a, b in zip(outcomes[n], outcomes[reference])])
    return {"world": name, "model": model_dir, "videos": videos, "length": length, "k": k, "window_tokens": window,
            "recent_frames": recent, "position_strategy": strategy or ReKVConfig().position_strategy, "family": family, "target": TARGETS[family]["name"],
            "embedder": clip,
            "chance": dict(world.CHANCE), "rows": rows, "outcomes": {n: "".join(map(str, v)) for n, v in outcomes.items()}, "seconds": round(time.time() - started, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__}"}


def interval(diffs: List[int]) -> Dict[str, float]:
    """Mean of paired per-question differences and its 95 % interval (``hub_study.interval``)."""
    from research.miniature.hub_study import interval as paired

    return paired(diffs)


def markdown(results: dict) -> str:
    kinds = list(next(iter(results["rows"].values()))["per_kind"])
    head = (f"Held-out {results['world']} world, {results['videos']} videos of {results['length']} frames, retrieval "
            f"top-{results['k']} (internal; `ext/` rows: external, the world's embedder), `recent_frames={results.get('recent_frames', 0)}`, `position_strategy={results.get('position_strategy', 'layout')}`, window "
            f"{results['window_tokens']} tokens; {results['machine']}. *vs no reduction*: the paired difference to the same "
            "retrieval without reduction over the same questions, with its 95 % interval.\n\n")
    lines = ["| setting | accuracy | vs no reduction (95 % CI) | " + " | ".join(f"{kd} (chance {results['chance'][kd]:.1%}, n {next(iter(results['rows'].values()))['n'][kd]})" for kd in kinds)
             + f" | KV bytes/frame (miniature) | {results.get('target', 'LLaVA-OV-7B')} GiB/h at 0.5 fps |", "|---" * (len(kinds) + 5) + "|"]
    for n, row in results["rows"].items():
        c = row.get("vs_rekv")
        paired = "--" if c is None else f"{100 * c['diff']:+.1f} [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}]"
        lines.append(f"| {n} | {row['accuracy']:.1%} | {paired} | " + " | ".join(f"{row['per_kind'][kd]:.0%}" for kd in kinds)
                     + f" | {row['kv_bytes_per_frame']} | {row['projected_7b_gib_per_hour']:.2f} |")
    return head + "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> None:
    """Accuracy against projected 7B GiB/h (log scale; ``results["target"]``): a colour per rule, a marker
    per storage precision, hollow for external retrieval; full attention and ReKV without
    reduction as horizontal references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"rekv": "tab:grey", "temporal": "tab:blue", "salient": "tab:orange", "merge": "tab:green"}
    markers = {"fp": "o", "int8": "s", "int4": "^"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, row in results["rows"].items():
        parts = name.split("/")
        external = parts[0] == "ext"
        parts = parts[1:] if external else parts
        if parts[0] not in colors or "token-score" in parts:
            continue
        quant = next((p for p in parts if p.startswith("int")), "fp")
        ax.scatter(row["projected_7b_gib_per_hour"], row["accuracy"], s=22, marker=markers[quant],
                   facecolors="none" if external else colors[parts[0]], edgecolors=colors[parts[0]], linewidths=1)
    for name, style in (("full", "-"), ("rekv", ":")):
        if name in results["rows"]:
            ax.axhline(results["rows"][name]["accuracy"], color="black", linestyle=style, linewidth=0.8)
    handles = [plt.Line2D([], [], color=c, marker="o", linestyle="", label="no reduction" if r == "rekv" else r) for r, c in colors.items()]
    handles += [plt.Line2D([], [], color="black", marker=m, linestyle="", label=q) for q, m in markers.items()]
    handles += [plt.Line2D([], [], color="black", marker="o", markerfacecolor="none", linestyle="", label="external retrieval"),
                plt.Line2D([], [], color="black", linestyle="-", label="full attention"),
                plt.Line2D([], [], color="black", linestyle=":", label="ReKV, no reduction, fp")]
    ax.set_xscale("log")
    ax.set_xlabel(f"KV per hour, {results.get('target', 'LLaVA-OV-7B')} at 0.5 fps (GiB, projected)")
    ax.set_ylabel("accuracy (held-out)")
    ax.set_title(f"{results['world']} world miniature: {results['videos']} videos of {results['length']} frames, "
                 f"top-{results['k']}", fontsize=10)
    ax.legend(handles=handles, fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, metadata={"Date": None})
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.token_reduction", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a miniature checkpoint folder (with world.json)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--videos", type=int, default=50)
    parser.add_argument("--length", type=int, default=16, help="frames per video (the trained length)")
    parser.add_argument("--keeps", type=float, nargs="+", default=[0.5, 0.25, 0.125])
    parser.add_argument("--quants", nargs="+", default=["none", "int8", "int4"])
    parser.add_argument("--topk-frames", dest="k", type=int, default=4)
    parser.add_argument("--recent-frames", type=int, default=0,
                        help="recent_frames of every ReKV row (default 0: retrieval alone; 1: the package default)")
    parser.add_argument("--position-strategy", default=None, help="position_strategy of every ReKV row (default: ReKVConfig's)")
    parser.add_argument("--clip", nargs=2, metavar=("CONFIG_JSON", "WEIGHTS"), default=None,
                        help="an embedder for the world (python -m research.miniature clip --world video): adds ext/ rows")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    quants = [None if q == "none" else q for q in args.quants]
    from research.miniature.accuracy import write_outputs

    results = run(args.model, args.videos, args.length, args.keeps, quants, args.k, args.clip, args.recent_frames, args.position_strategy)
    write_outputs(args.out, results, markdown(results), lambda r, folder: plot(r, os.path.join(folder, "accuracy-per-byte.svg")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
