"""Demo: stream a video through LLaVA-OneVision with ReKV and ask questions about it.

    rekv demo                 # the trained miniature on a held-out world video
    rekv demo --model llava-hf/llava-onevision-qwen2-0.5b-ov-hf --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import List, Optional

from ..io.console import interruptible
from ..io.home import cache_home


def run_demo(model: Optional[str], seconds: float, fps: float, burst: int, dtype: Optional[str], device: Optional[str],
             questions: List[str], config=None) -> dict:
    """A real checkpoint: a generated clip streamed at ``fps`` in bursts, free questions
    (``config``: the ReKV settings; default a 15000-token window, 64 blocks retrieved)."""
    from tqdm.auto import tqdm

    from lmms_rekv import ReKVConfig, ReKVLlavaOneVision
    from lmms_rekv.io.video import iter_video, synthetic_frames, write_video

    config = config or ReKVConfig(window_tokens=15_000, topk_frames=64, chunk_frames=burst)
    rekv = ReKVLlavaOneVision.from_pretrained(model, config=config, dtype=dtype, device=device)
    clip = cache_home("demo_clip.mp4")
    write_video(clip, synthetic_frames(seconds, fps=4), fps=4)
    session = rekv.new_session()
    stream(session, iter_video(clip, fps=fps), burst, int(seconds * fps), tqdm)
    answers = {q: session.ask(q, max_new_tokens=16) for q in questions}
    return {"model": model, "video": clip, "answers": answers, "stats": session.stats()}


def stream(session, frames, burst: int, total: int, tqdm) -> None:
    """Add ``frames`` (an iterator) to ``session`` in bursts of ``burst``, with a progress bar."""
    batch = []
    for frame in tqdm(frames, total=total, desc="streaming frames", unit="frame"):
        batch.append(frame)
        if len(batch) == burst:
            session.add_frames(_stack(batch))
            batch = []
    if batch:
        session.add_frames(_stack(batch))


def run_miniature_demo(frames: int, burst: int, seed: int, settings: Optional[dict] = None) -> dict:
    """The trained miniature on a held-out world video of ``frames`` frames (1 fps): each
    question answered by ReKV with internal retrieval, by ReKV with external retrieval (the
    embedder trained with the miniature) and by full attention, with the frames retrieved.
    ``settings``: ReKVConfig fields over the defaults (a 4-block window, 4 blocks retrieved,
    chunks of ``burst`` frames; ``retrieval`` is each mode's)."""
    from tqdm.auto import tqdm

    from lmms_rekv import ReKVConfig, ReKVLlavaOneVision
    from lmms_rekv.io.video import iter_video
    from lmms_rekv.miniature import path, world_video

    base = ReKVLlavaOneVision.from_pretrained(path(), dtype="float32", device="cpu")
    rekv = ReKVConfig(window_tokens=4 * base.block_tokens, topk_frames=4, chunk_frames=burst).replace(**(settings or {}))
    engines = {"internal": base.with_config(rekv.replace(retrieval="internal")),
               "external": base.with_config(rekv.replace(retrieval="external", clip_model="miniature")),
               "full": base.with_config(ReKVConfig(window_tokens=None, topk_frames=None, chunk_frames=rekv.chunk_frames))}
    clip = world_video(cache_home(f"miniature_demo_{seed}.mp4"), frames, seed)
    sessions = {name: engine.new_session() for name, engine in engines.items()}
    for name, session in sessions.items():
        stream(session, iter_video(clip.path, fps=1), burst, frames, lambda it, **kw: tqdm(it, **{**kw, "desc": f"streaming ({name})"}))
    rows = []
    for q in clip.questions:
        row = {"question": q.text, "kind": q.kind, "truth": q.answer, "needle_seconds": list(q.seconds)}
        for name in ("internal", "external"):
            answer = sessions[name].answer(q.text, max_new_tokens=3)
            row[name] = {"answer": answer.text.strip(), "retrieved_seconds": sorted({int(i) for layer in answer.selected for i in layer}),
                         "per_layer": [[int(i) for i in layer] for layer in answer.selected]}
        row["full_attention"] = sessions["full"].ask(q.text, max_new_tokens=3)
        rows.append(row)
    return {"video": clip.path, "frames": frames, "topk": rekv.topk_frames, "rows": rows, "stats": sessions["internal"].stats()}


def print_miniature(result: dict) -> None:
    print(f"the trained miniature (lmms_rekv/miniature/weights) on a held-out {result['frames']}-frame world video "
          f"({result['video']}), 1 fps; ReKV retrieves {result['topk']} frames per layer:")
    mark = lambda text, truth: "right" if text.split()[:1] == [truth] else "WRONG"  # noqa: E731
    for row in result["rows"]:
        print(f"Q: {row['question']}  (truth {row['truth']!r}; the answer is in the frame(s) at t={row['needle_seconds']} s)")
        for name, label in (("internal", "ReKV, internal retrieval"), ("external", "ReKV, external retrieval (trained embedder)")):
            got = row[name]
            print(f"   {label}: {got['answer']!r} ({mark(got['answer'], row['truth'])}); retrieved t={got['retrieved_seconds']} s")
        print(f"   full attention: {row['full_attention']!r} ({mark(row['full_attention'], row['truth'])})")
    print("stats (internal):", json.dumps(result["stats"]))


def _stack(frames):
    import numpy as np

    return np.stack(frames)


@interruptible("rekv demo")
def main(argv: Optional[List[str]] = None) -> int:
    """``rekv demo``; returns the exit status (0, or 2 with a one-line error)."""
    from .flags import COMMON, Parser, add_config_flags, check_device, config_from

    parser = Parser(prog="rekv demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="LLaVA-OneVision directory or hub id (default: the trained miniature)")
    parser.add_argument("--frames", type=int, default=60, help="miniature: frames of the held-out world video")
    parser.add_argument("--seed", type=int, default=0, help="miniature: which held-out video (rekv world --seed writes the same)")
    parser.add_argument("--seconds", type=float, default=60.0, help="--model: length of the generated clip")
    parser.add_argument("--fps", type=float, default=1.0, help="--model: frames sampled per second of video")
    parser.add_argument("--burst", type=int, default=8, help="frames per add_frames call")
    parser.add_argument("--dtype", default=None, choices=("auto", "float32", "bfloat16", "float16"),
                        help="model precision (default auto: float16 on CUDA, float32 on CPU)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    parser.add_argument("--question", action="append", dest="questions", help="--model: question to ask (repeatable)")
    add_config_flags(parser, defaults={"window_tokens": "4 blocks (miniature) or 15000", "topk_frames": "4 (miniature) or 64",
                                       "chunk_frames": "--burst"},
                     aliases={"--topk": "topk_frames"})
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        check_device(args.device)
        config = config_from(args, **({} if args.chunk_frames is not None else {"chunk_frames": args.burst}))
    except ValueError as exc:
        print(f"rekv demo: {exc}", file=sys.stderr)
        return 2
    if not args.model:
        given = {f: getattr(config, f) for f in COMMON if getattr(args, f) is not None}
        print_miniature(run_miniature_demo(args.frames, args.burst, args.seed, given))
        return 0
    questions = args.questions or ["What is happening in the video?", "What color is the moving square?"]
    result = run_demo(args.model, args.seconds, args.fps, args.burst, args.dtype, args.device, questions, config)
    for question, answer in result["answers"].items():
        print(f"Q: {question}\nA: {answer!r}")
    print("stats:", json.dumps(result["stats"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
