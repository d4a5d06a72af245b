"""``python -m benchmarks.bench`` (from a checkout): ReKV side by side with full-attention streaming and uniform sampling.

    python -m benchmarks.bench --preset tiny --out bench_out
    python -m benchmarks.bench --preset 0.5b --out bench_05b --frames 10 100 --dtype bfloat16 --window-tokens 980 --topk-frames 8
    python -m benchmarks.bench --preset accuracy --out acc_out      # answer quality: research.miniature.accuracy
    python -m benchmarks.bench --preset retrieval --out study_out   # retrieval variants: research.miniature.retrieval_study
    python -m benchmarks.bench --preset positions --model DIR --out pos_out  # position strategies on M-RoPE: research.miniature.position_study
    python -m benchmarks.bench --preset live --out live_out         # question after a burst vs after idle: benchmarks.bench_live

One run measures, at several stream lengths, for
  * ``rekv``: windowed encoding, KV offloaded, top-k retrieval;
  * ``full``: full-attention streaming (unbounded window, every frame in context, all KV on
    the device) -- measured while its context fits the model's positions;
  * ``uniform``: vanilla ``generate`` on N frames sampled uniformly from the stream so far
    (re-encoded for every question);
encode frames/s, per-frame encode time, question latency (time to first token and total for
a fixed answer length), device KV bytes and process memory, and KV bytes per hour against the
formula. Writes ``results.json``, ``results.md`` and ``latency.png`` / ``memory.png``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from research.tiny import noise_frames as synthetic_frames  # the stream every benchmark streams

logger = logging.getLogger(__name__)

QUESTION = "What is the person doing with the object on the table?"


@dataclass
class Preset:
    frames: List[int]
    window_tokens: int
    topk: int
    chunk: int
    uniform_frames: int
    answer_tokens: int = 8
    recent_frames: Optional[int] = None  # ReKVConfig.recent_frames (counted in topk); None: the default
    hub_correction: Optional[str] = None  # ReKVConfig.hub_correction


PRESETS: Dict[str, Preset] = {
    "tiny": Preset(frames=[40, 100, 200, 400], window_tokens=256, topk=8, chunk=4, uniform_frames=16),
    # the 0.5B text shapes with 4 layers and a small vision tower (36 tokens per frame): attention
    # over the stored context is a visible share of a question's cost, and it runs in minutes on a CPU
    "small": Preset(frames=[40, 400], window_tokens=288, topk=8, chunk=8, uniform_frames=16),
    "0.5b": Preset(frames=[180, 450, 900, 1800], window_tokens=15_000, topk=64, chunk=64, uniform_frames=32),
    "7b": Preset(frames=[180, 450, 900, 1800], window_tokens=15_000, topk=64, chunk=64, uniform_frames=32),
}


#: presets built by research.tiny.build_tiny_model (random weights, through from_pretrained)
SHAPES: Dict[str, dict] = {"tiny": {}, "small": dict(layers=4, hidden=896, heads=14, kv_heads=2, image_size=96, patch_size=8)}
BLOCK_TOKENS = {"tiny": 16, "small": 36}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _memory(device: torch.device) -> Dict[str, float]:
    import psutil

    out = {"rss_bytes": psutil.Process().memory_info().rss}
    if device.type == "cuda":
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


def build_engines(preset: str, workdir: str, device: torch.device, dtype: torch.dtype, cfg: Preset):
    """One model, wrapped three times (rekv, full attention); tiny goes through from_pretrained."""
    from lmms_rekv import ReKVConfig, ReKVLlavaOneVision
    from lmms_rekv.io.preprocess import CheckpointFrames
    from research.tiny import CHAT_TEMPLATE, build_tiny_model, build_tokenizer

    rekv_cfg = ReKVConfig(window_tokens=cfg.window_tokens, topk_frames=cfg.topk, chunk_frames=cfg.chunk, block_tokens=BLOCK_TOKENS.get(preset, 196),
                          hub_correction=cfg.hub_correction, **({} if cfg.recent_frames is None else {"recent_frames": cfg.recent_frames}))
    if preset in SHAPES:
        path = build_tiny_model(os.path.join(workdir, f"{preset}-model"), **SHAPES[preset])  # a temporary folder
        rekv = ReKVLlavaOneVision.from_pretrained(path, config=rekv_cfg, dtype=dtype, device=device)
    else:
        from transformers import LlavaOnevisionForConditionalGeneration

        from .presets import llava_token_ids, random_model, real_config

        tokenizer = build_tokenizer()
        model = random_model(LlavaOnevisionForConditionalGeneration, real_config(preset, **llava_token_ids(tokenizer)), device, dtype)
        rekv = ReKVLlavaOneVision(model, tokenizer, CHAT_TEMPLATE, CheckpointFrames.square(384), rekv_cfg)
    full_cfg = rekv_cfg.replace(window_tokens=None, topk_frames=None, offload="device", qa_budget_tokens=None, recent_frames=0, hub_correction=None)
    full = rekv.with_config(full_cfg)
    return rekv, full


def build_sessions(engine, points: List[int], chunk: int, desc: str) -> Dict:
    """One session per stream length in ``points`` (each streamed to its length and held), while
    the engine's context holds it. ``{"sessions": {point: session}, "encode": [...], "stats":
    {point: stats}}``; ``encode`` is the per-chunk encode time of the longest session's build
    (seconds per frame at each length: the build curve, one pass, not interleaved)."""
    from tqdm.auto import tqdm

    fitting = [p for p in sorted(points) if _fits(engine, p)]
    if len(fitting) < len(points):
        logger.info("%s: %s frames exceed the context; not measured", desc, sorted(set(points) - set(fitting)))
    sessions, encode, stats = {}, [], {}
    bar = tqdm(total=sum(fitting), desc=desc, unit="frame")
    for point in fitting:
        session, done = engine.new_session(), 0
        while done < point:
            n = min(chunk, point - done)
            seconds = _timed_add(session, synthetic_frames(done, n))
            if point == fitting[-1]:
                encode.append({"frames": done + n, "seconds_per_frame": seconds / n})
            done += n
            bar.update(n)
        sessions[point] = session
        stats[point] = {**{k: session.stats()[k] for k in ("device_bytes", "device_kv_bytes", "summary_device_bytes", "cpu_bytes")},
                        **_memory(engine.device)}
    bar.close()
    kv = sessions[fitting[0]].stats()["kv_bytes_per_frame"] if fitting else None
    return {"sessions": sessions, "encode": encode, "stats": stats, "kv_bytes_per_frame": kv}


def _fits(engine, frames: int) -> bool:
    """Whether ``frames`` frames and a question fit the engine's answer budget (full attention
    answers from every block; ReKV from top-k)."""
    budget = engine.config.qa_budget_tokens
    return budget is None or engine.config.topk_frames is not None or frames * engine.block_tokens + 512 <= budget


def _timed_add(session, frames: np.ndarray) -> float:
    """Seconds to add ``frames`` to ``session`` and commit them (device synchronised)."""
    device = session.engine.device
    _sync(device)
    start = time.perf_counter()
    session.add_frames(frames)
    session.flush()
    _sync(device)
    return time.perf_counter() - start


Ask = Callable[[], Dict[str, float]]


def interleaved(asks: Dict[Tuple[str, int], Ask], repeats: int) -> Dict[Tuple[str, int], Dict[str, List[float]]]:
    """Call every ask once per round, ``repeats + 1`` rounds, the order rotating by one from round
    to round so no ask always follows the same one; round 0 warms up (first calls at a new
    shape) and is dropped. ``{key: {metric: [repeats samples]}}``."""
    keys = list(asks)
    samples: Dict[Tuple[str, int], Dict[str, List[float]]] = {k: {} for k in keys}
    for r in range(repeats + 1):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            measured = asks[key]()
            if r:
                for metric, value in measured.items():
                    samples[key].setdefault(metric, []).append(value)
    return samples


def spread(values: List[float]) -> Dict[str, float]:
    """Median and range of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _answer(session, answer_tokens: int) -> Ask:
    def ask() -> Dict[str, float]:
        answer = session.answer(QUESTION, max_new_tokens=answer_tokens, eos_token_ids=())
        return {"ttft_s": answer.first_token_seconds, "total_s": answer.seconds}

    return ask


def _uniform(engine, point: int, n_frames: int, answer_tokens: int) -> Ask:
    """Vanilla generate on ``n_frames`` frames sampled uniformly from the first ``point``."""
    frames = frames_at(np.linspace(0, point - 1, min(n_frames, point)).round().astype(int))
    return lambda: {"ttft_s": vanilla_seconds(engine, frames, 1), "total_s": vanilla_seconds(engine, frames, answer_tokens)}


def _probe(session, chunk: int, start: int) -> Ask:
    """Adds one chunk of new frames to ``session`` per call: seconds per frame at its length."""
    firsts = itertools.count(start, chunk)

    def ask() -> Dict[str, float]:
        return {"encode_s_per_frame": _timed_add(session, synthetic_frames(next(firsts), chunk)) / chunk}

    return ask


def measure(engines: Dict[str, object], cfg: Preset, repeats: int) -> Dict[str, Dict]:
    """Every method at every stream length, repeats interleaved across both.

    Sessions are built per method and length first and held; then ``repeats`` rounds of
    questions (ReKV, full attention, uniform sampling; the sessions at their exact lengths), then
    ``repeats`` rounds of encode probes (one chunk added to each session; the lengths grow by
    ``chunk`` per round, recorded). ``{method: {"points": [...], ...}}``."""
    built = {m: build_sessions(e, cfg.frames, cfg.chunk, f"{m} streams") for m, e in engines.items()}
    try:
        asks = {(m, p): _answer(s, cfg.answer_tokens) for m, b in built.items() for p, s in b["sessions"].items()}
        asks.update({("uniform", p): _uniform(engines["rekv"], p, cfg.uniform_frames, cfg.answer_tokens) for p in sorted(cfg.frames)})
        answers = interleaved(asks, repeats)
        probes = interleaved({(m, p): _probe(s, cfg.chunk, 10**8 + p * 10**4) for m, b in built.items()
                              for p, s in b["sessions"].items()}, repeats)
    finally:
        for b in built.values():
            for session in b["sessions"].values():
                session.close()
    out = {}
    for method in [*engines, "uniform"]:
        points = []
        for point in sorted(cfg.frames):
            if (method, point) not in answers:
                continue
            row = {"frames": point, "samples": {**answers[(method, point)], **probes.get((method, point), {})}}
            for metric, values in row["samples"].items():
                s = spread(values)
                row[metric], row[f"{metric}_range"] = s["median"], [s["min"], s["max"]]
            if method in built:
                row["encode_probe_frames"] = [point, point + repeats * cfg.chunk + cfg.chunk]
                row.update(built[method]["stats"][point])
            else:
                row["sampled"] = min(cfg.uniform_frames, point)
                row.update(_memory(engines["rekv"].device))
            points.append(row)
        out[method] = {"points": points}
        if method in built:
            out[method].update(encode=built[method]["encode"], kv_bytes_per_frame=built[method]["kv_bytes_per_frame"])
    return out


def warm_up(engines, chunk: int, answer_tokens: int) -> None:
    """One throwaway session per engine (two chunks, one question) and one vanilla ``generate``:
    first-call costs (allocator, kernels, caches) stay out of the measurements."""
    for engine in engines:
        session = engine.new_session()
        session.add_frames(synthetic_frames(10_000_000, 2 * chunk))
        session.flush()
        session.answer(QUESTION, max_new_tokens=answer_tokens, eos_token_ids=())
        session.close()
    vanilla_seconds(engines[0], synthetic_frames(0, 2), 1)


def frames_at(indices) -> np.ndarray:
    """The stream's frames at ``indices`` (``synthetic_frames`` regenerates any frame)."""
    return np.concatenate([synthetic_frames(int(i), 1) for i in indices])


def vanilla_seconds(engine, frames: np.ndarray, tokens: int) -> float:
    """Seconds of vanilla ``generate`` answering ``QUESTION`` with ``tokens`` tokens on ``frames``,
    their pixels included (a baseline without memory encodes them at every question)."""
    device = engine.device
    _sync(device)
    start = time.perf_counter()
    pixels = engine.processor(frames, dtype=engine.dtype, device=device)
    ids = engine.vanilla_input_ids(QUESTION, len(frames))
    with torch.inference_mode():
        engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=pixels[None],
                              max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    _sync(device)
    return time.perf_counter() - start


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b in (None, 0) else a / b


def summarize(results: Dict, cfg: Preset) -> Dict:
    """Headline numbers; ``*_ratio_10x`` compare the first stream length with ten times it (medians
    of interleaved repeats: question latency at exactly those lengths, per-frame encode time of
    the probe chunks added after them)."""
    n0 = min(results["points"])
    n1 = 10 * n0
    rekv_enc = results["rekv"]["encode"]
    full_points = [p["frames"] for p in results["full"]["points"]]
    f0, f1 = (min(full_points), max(full_points)) if full_points else (None, None)
    encoded = rekv_enc[-1]["frames"] if rekv_enc else 0
    seconds = sum(e["seconds_per_frame"] * n for e, n in zip(rekv_enc, _chunk_sizes(rekv_enc)))
    return {
        "n0": n0,
        "n1": n1,
        "encode_frames_per_s": encoded / seconds if seconds else None,
        "encode_frame_time_ratio_10x": _ratio(_at(results, "rekv", n1, "encode_s_per_frame"), _at(results, "rekv", n0, "encode_s_per_frame")),
        "qa_latency_ratio_10x": _ratio(_at(results, "rekv", n1, "total_s"), _at(results, "rekv", n0, "total_s")),
        "ttft_ratio_10x": _ratio(_at(results, "rekv", n1, "ttft_s"), _at(results, "rekv", n0, "ttft_s")),
        "full_attention_qa_latency_ratio_10x": _ratio(_at(results, "full", n1, "total_s"), _at(results, "full", n0, "total_s")),
        "full_attention_ttft_ratio_10x": _ratio(_at(results, "full", n1, "ttft_s"), _at(results, "full", n0, "ttft_s")),
        "full_attention_measured_frames": [f0, f1],
        "full_attention_qa_latency_ratio_measured": _ratio(_at(results, "full", f1, "total_s"), _at(results, "full", f0, "total_s")),
        "full_attention_encode_frame_time_ratio_measured": _ratio(
            _at(results, "full", f1, "encode_s_per_frame"), _at(results, "full", f0, "encode_s_per_frame")),
        "kv_bytes_per_frame": results["rekv"]["kv_bytes_per_frame"],
    }


def _at(results: Dict, method: str, point: Optional[int], key: str) -> Optional[float]:
    rows = [p for p in results[method].get("points", []) if p["frames"] == point]
    return rows[0].get(key) if rows else None


def _chunk_sizes(encode: List[Dict]) -> List[int]:
    previous, sizes = 0, []
    for e in encode:
        sizes.append(e["frames"] - previous)
        previous = e["frames"]
    return sizes


def write_markdown(path: str, results: Dict) -> None:
    s, rows = results["summary"], []
    rows.append(f"machine: {results['machine']} | preset {results['preset']} | dtype {results['dtype']} | "
                f"window {results['config']['window_tokens']} tokens | top-k {results['config']['topk']} | answer {results['config']['answer_tokens']} tokens | "
                f"median [min, max] of {results['repeats']} repeats interleaved across methods and lengths | load average "
                f"{results['load_before']} before, {results['load_after']} after\n")
    rows.append("| frames | method | TTFT s | total s | encode ms/frame | device KV MiB |")
    rows.append("|---:|---|---:|---:|---:|---:|")
    for point in results["points"]:
        for method in ("rekv", "full", "uniform"):
            row = next((p for p in results[method]["points"] if p["frames"] == point), None)
            if row is not None:
                rows.append(f"| {point} | {method} | {_spread(row, 'ttft_s')} | {_spread(row, 'total_s')} | "
                            f"{_spread(row, 'encode_s_per_frame', 1000)} | {_fmt(row.get('device_kv_bytes'), 2**-20)} |")
    rows.append("")
    for key, value in s.items():
        rows.append(f"- `{key}`: {_fmt(value) if isinstance(value, float) else value}")
    kv = results["kv_per_hour"]
    rows.append(f"- KV per hour at 0.5 fps: measured {kv['measured_gib']:.3f} GiB, formula {kv['formula_gib']:.3f} GiB")
    with open(path, "w") as fh:
        fh.write("\n".join(rows) + "\n")


def _spread(row: Dict, key: str, scale: float = 1.0) -> str:
    if row.get(key) is None:
        return "-"
    low, high = row[f"{key}_range"]
    return f"{_fmt(row[key], scale)} [{_fmt(low, scale)}, {_fmt(high, scale)}]"


def _fmt(value, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:.3f}"


def write_plots(folder: str, results: Dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"rekv": "ReKV", "full": "full attention", "uniform": "uniform sampling"}
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, label in styles.items():
        pts = results[method]["points"]
        if pts:
            ax.plot([p["frames"] for p in pts], [p["total_s"] for p in pts], marker="o", label=f"{label} (total)")
            ax.plot([p["frames"] for p in pts], [p["ttft_s"] for p in pts], marker="x", linestyle="--", label=f"{label} (TTFT)")
    ax.set(xlabel="stream length (frames)", ylabel="seconds", title=f"Question latency ({results['preset']}, {results['machine']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "latency.png"), dpi=120)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in ("rekv", "full"):
        pts = results[method]["points"]
        if pts:
            ax.plot([p["frames"] for p in pts], [p["device_kv_bytes"] / 2**20 for p in pts], marker="o", label=f"{styles[method]}: device KV")
    pts = results["rekv"]["points"]
    ax.plot([p["frames"] for p in pts], [p["cpu_bytes"] / 2**20 for p in pts], marker="s", linestyle=":", label="ReKV: offloaded KV (CPU)")
    ax.set(xlabel="stream length (frames)", ylabel="MiB", title=f"KV memory ({results['preset']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "memory.png"), dpi=120)
    plt.close("all")


def machine_name(device: torch.device) -> str:
    import platform

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            name = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name} CPU, {torch.get_num_threads()} threads"


def run(args) -> Dict:
    from lmms_rekv.model import resolve_dtype

    from .accounting import gib_per_hour, kv_bytes_from_model

    cfg = PRESETS[args.preset]
    cfg = Preset(
        frames=args.frames or cfg.frames, window_tokens=args.window_tokens or cfg.window_tokens, topk=args.topk or cfg.topk,
        chunk=args.chunk or cfg.chunk, uniform_frames=args.uniform_frames or cfg.uniform_frames,
        answer_tokens=args.answer_tokens or cfg.answer_tokens, recent_frames=args.recent_frames, hub_correction=args.hub_correction,
    )
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = resolve_dtype(args.dtype, device)
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rekv-bench-") as workdir:
        rekv, full = build_engines(args.preset, workdir, device, dtype, cfg)
    results = {"preset": args.preset, "machine": machine_name(device), "dtype": str(dtype).replace("torch.", ""),
               "config": asdict(cfg), "points": sorted(cfg.frames), "threads": torch.get_num_threads(),
               "load_before": [round(x, 2) for x in os.getloadavg()]}
    warm_up([rekv, full], cfg.chunk, cfg.answer_tokens)
    results.update(measure({"rekv": rekv, "full": full}, cfg, args.repeats), repeats=args.repeats)
    formula = kv_bytes_from_model(rekv.model, dtype)["bytes_per_frame"]
    results["kv_per_hour"] = {"measured_gib": gib_per_hour(results["rekv"]["kv_bytes_per_frame"]), "formula_gib": gib_per_hour(formula)}
    results["summary"] = summarize(results, cfg)
    results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    write_markdown(os.path.join(args.out, "results.md"), results)
    write_plots(args.out, results)
    return results


#: presets with a module of their own: answer quality on the trained miniature, live latency
OTHER_PRESETS = {"accuracy": "research.miniature.accuracy", "retrieval": "research.miniature.retrieval_study",
                 "positions": "research.miniature.position_study", "live": "benchmarks.bench_live"}


def _other_preset(argv: List[str]):
    """``(preset, argv without it)`` if ``--preset`` selects a preset of another module, else None."""
    for i, arg in enumerate(argv):
        for name in OTHER_PRESETS:
            if arg == f"--preset={name}":
                return name, argv[:i] + argv[i + 1 :]
            if arg == "--preset" and i + 1 < len(argv) and argv[i + 1] == name:
                return name, argv[:i] + argv[i + 2 :]
    return None


def main(argv: Optional[List[str]] = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    found = _other_preset(argv)
    if found is not None:
        import importlib

        name, rest = found
        return importlib.import_module(OTHER_PRESETS[name]).main(rest)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS) + list(OTHER_PRESETS), default="tiny")
    parser.add_argument("--out", required=True, help="folder for results.json, results.md and the plots")
    parser.add_argument("--frames", type=int, nargs="+", help="stream lengths to measure at (the first and 10x it give the ratios)")
    parser.add_argument("--window-tokens", type=int, help="ReKVConfig.window_tokens (default: the preset's)")
    parser.add_argument("--topk-frames", "--topk", dest="topk", type=int, help="ReKVConfig.topk_frames: blocks retrieved (default: the preset's)")
    parser.add_argument("--chunk-frames", "--chunk", dest="chunk", type=int,
                        help="ReKVConfig.chunk_frames, also the frames per add_frames call (default: the preset's)")
    parser.add_argument("--uniform-frames", type=int, help="frames the uniform-sampling baseline uses")
    parser.add_argument("--answer-tokens", type=int, help="fixed answer length for latency")
    parser.add_argument("--recent-frames", type=int, default=None, help="ReKVConfig.recent_frames (default: ReKVConfig's, 1)")
    parser.add_argument("--hub-correction", choices=("center", "template"), default=None, help="ReKVConfig.hub_correction (default off)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of questions and of encode probes, interleaved across methods and lengths (after one warm-up round)")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    run(args)
    print(open(os.path.join(args.out, "results.md")).read())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
