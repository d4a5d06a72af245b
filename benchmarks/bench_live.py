"""``python -m benchmarks.bench --preset live``: question latency right after a burst of frames vs after an
idle moment, with eager encoding, lazy encoding (``eager=False``) and the background
encoder (``add_frames(block=False)``).

    python -m benchmarks.bench --preset live --out live_out                       # tiny random model
    python -m benchmarks.bench --preset live --model-preset 0.5b --dtype bfloat16 --out live_05b

Each trial: a fresh session is fed ``--prefill`` frames (committed chunks), then a burst of
``--burst`` frames (default ``chunk_frames - 1``: the largest backlog a chunk grid leaves);
the question is asked (a) right after the burst call returns, (b) after the session went
idle (background encoder drained), and (c) once more with nothing left to encode (the
question alone). Medians over ``--repeats`` trials; ``burst_over_idle`` is (a) / (b).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from typing import Dict, List, Optional

import torch

from .bench import PRESETS, QUESTION, Preset, _sync, build_engines, machine_name, synthetic_frames

logger = logging.getLogger(__name__)

MODES = {
    "eager": dict(eager=True, block=True),
    "lazy (eager=False)": dict(eager=False, block=True),
    "background (block=False)": dict(eager=True, block=False),
}


def _ask(session, answer_tokens: int) -> float:
    _sync(session.engine.device)
    start = time.perf_counter()
    session.answer(QUESTION, max_new_tokens=answer_tokens, eos_token_ids=())
    _sync(session.engine.device)
    return time.perf_counter() - start


def _trial(engine, prefill: int, burst: int, block: bool, answer_tokens: int, idle: bool) -> Dict[str, float]:
    """One fresh session: prefill, burst, question (after the burst or after going idle)."""
    session = engine.new_session()
    try:
        session.add_frames(synthetic_frames(0, prefill))
        frames = synthetic_frames(prefill, burst)
        _sync(engine.device)
        start = time.perf_counter()
        session.add_frames(frames, block=block)
        _sync(engine.device)
        added = time.perf_counter() - start
        if idle:
            session.wait()
        first = _ask(session, answer_tokens)
        alone = _ask(session, answer_tokens)
        return {"add_frames_s": added, "question_s": first, "question_alone_s": alone}
    finally:
        session.close()


def measure(engine, prefill: int, burst: int, answer_tokens: int, repeats: int) -> Dict[str, Dict[str, float]]:
    """Medians per mode of the add_frames call and the question after a burst / after idle."""
    from tqdm.auto import tqdm

    out = {}
    bar = tqdm(total=len(MODES) * repeats, desc="burst vs idle", unit="trial")
    for name, mode in MODES.items():
        eng = engine.with_config(engine.config.replace(eager=mode["eager"]))
        _trial(eng, prefill, burst, mode["block"], answer_tokens, idle=True)  # warm-up
        rows: Dict[str, List[float]] = {}
        for _ in range(repeats):
            for when in ("burst", "idle"):
                for key, value in _trial(eng, prefill, burst, mode["block"], answer_tokens, idle=when == "idle").items():
                    rows.setdefault(f"{when}_{key}", []).append(value)
            bar.update(1)
        med = {k: statistics.median(v) for k, v in rows.items()}
        med["burst_over_idle"] = med["burst_question_s"] / med["idle_question_s"]
        out[name] = med
    bar.close()
    return out


def write_markdown(path: str, results: Dict) -> None:
    c = results["config"]
    lines = [
        f"machine: {results['machine']} | model preset {c['model_preset']} | dtype {results['dtype']} | chunk_frames {c['chunk']} | "
        f"window {c['window_tokens']} tokens | top-k {c['topk']} | prefill {c['prefill']} frames | burst {c['burst']} frames | "
        f"answer {c['answer_tokens']} tokens | median of {c['repeats']} trials\n",
        "| mode | add_frames(burst) s | question right after the burst s | question after idle s | question alone s | burst / idle |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in results["modes"].items():
        lines.append(f"| {name} | {m['burst_add_frames_s']:.3f} | {m['burst_question_s']:.3f} | {m['idle_question_s']:.3f} | "
                     f"{m['idle_question_alone_s']:.3f} | {m['burst_over_idle']:.2f} |")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    from lmms_rekv.model import resolve_dtype

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench --preset live", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for results.json and results.md")
    parser.add_argument("--model-preset", choices=sorted(PRESETS), default="tiny", help="model size (random weights)")
    parser.add_argument("--chunk-frames", "--chunk", dest="chunk", type=int, default=64, help="ReKVConfig.chunk_frames (default: the library default, 64)")
    parser.add_argument("--window-tokens", type=int, help="ReKVConfig.window_tokens")
    parser.add_argument("--topk-frames", "--topk", dest="topk", type=int, help="ReKVConfig.topk_frames")
    parser.add_argument("--prefill", type=int, help="frames before the burst (default: 2 chunks)")
    parser.add_argument("--burst", type=int, help="frames in the burst (default: chunk - 1)")
    parser.add_argument("--answer-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    base = PRESETS[args.model_preset]
    cfg = Preset(frames=base.blocks, window_tokens=args.window_tokens or base.window_tokens, topk=args.topk or base.topk,
                 chunk=args.chunk, uniform_frames=base.uniform_frames)
    prefill, burst = args.prefill or 2 * args.chunk, args.burst or args.chunk - 1
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = resolve_dtype(args.dtype, device)
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rekv-bench-live-") as workdir:
        engine, _ = build_engines(args.model_preset, workdir, device, dtype, cfg)
    results = {
        "preset": "live", "machine": machine_name(device), "dtype": str(dtype).replace("torch.", ""),
        "config": {"model_preset": args.model_preset, "chunk": args.chunk, "window_tokens": cfg.window_tokens, "topk": cfg.topk,
                   "prefill": prefill, "burst": burst, "answer_tokens": args.answer_tokens, "repeats": args.repeats},
        "modes": measure(engine, prefill, burst, args.answer_tokens, args.repeats),
    }
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    write_markdown(os.path.join(args.out, "results.md"), results)
    print(open(os.path.join(args.out, "results.md")).read())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
