"""Demo: stream a generated clip through LLaVA-OneVision with ReKV and ask two questions.

    python -m lmms_rekv.demo                 # builds the embedded tiny random model offline
    python -m lmms_rekv.demo --model llava-hf/llava-onevision-qwen2-0.5b-ov-hf --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import List, Optional

DEFAULT_HOME = os.path.join(os.path.expanduser("~"), ".cache", "lmms-rekv")


def tiny_model_dir(home: Optional[str] = None) -> str:
    """The embedded tiny model's directory, built on first use (offline, a few seconds)."""
    from .tiny import build_tiny_model

    path = os.path.join(home or os.environ.get("LMMS_REKV_HOME", DEFAULT_HOME), "tiny-llava-onevision")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        build_tiny_model(path)
    return path


def run_demo(model: Optional[str], seconds: float, fps: float, burst: int, dtype: Optional[str], device: Optional[str], questions: List[str]) -> dict:
    from tqdm.auto import tqdm

    from . import ReKVConfig, ReKVLlavaOneVision
    from .video import iter_video, synthetic_frames, write_video

    path = model or tiny_model_dir()
    config = ReKVConfig(window_tokens=15_000 if model else 64, topk_frames=64 if model else 4, chunk_frames=burst)
    rekv = ReKVLlavaOneVision.from_pretrained(path, config=config, dtype=dtype, device=device)
    clip = os.path.join(os.environ.get("LMMS_REKV_HOME", DEFAULT_HOME), "demo_clip.mp4")
    write_video(clip, synthetic_frames(seconds, fps=4), fps=4)
    session = rekv.new_session()
    batch = []
    for frame in tqdm(iter_video(clip, fps=fps), total=int(seconds * fps), desc="streaming frames", unit="frame"):
        batch.append(frame)
        if len(batch) == burst:
            session.add_frames(_stack(batch))
            batch = []
    if batch:
        session.add_frames(_stack(batch))
    answers = {q: session.ask(q, max_new_tokens=16) for q in questions}
    return {"model": path, "video": clip, "answers": answers, "stats": session.stats()}


def _stack(frames):
    import numpy as np

    return np.stack(frames)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="LLaVA-OneVision directory or hub id (default: the embedded tiny model)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the generated clip")
    parser.add_argument("--fps", type=float, default=1.0, help="frames sampled per second of video")
    parser.add_argument("--burst", type=int, default=8, help="frames per add_frames call (and per encode chunk)")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--question", action="append", dest="questions", help="question to ask (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    questions = args.questions or ["What is happening in the video?", "What color is the moving square?"]
    result = run_demo(args.model, args.seconds, args.fps, args.burst, args.dtype, args.device, questions)
    if not args.model:
        print("(the embedded tiny model has random weights: its answers are noise)")
    for question, answer in result["answers"].items():
        print(f"Q: {question}\nA: {answer!r}")
    print("stats:", json.dumps(result["stats"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
