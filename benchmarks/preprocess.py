"""What turning frames into pixel values costs, per frame: LLaVA-OneVision's own video processor
(``CheckpointFrames``: the Python API on llava-hf checkpoints) and LLaVA-NeXT's rule
(``LlavaNextFrames``: lmms-lab checkpoints), on 720p uint8 frames to 384 x 384.

    python -m benchmarks.preprocess [--frames 16] [--repeats 5] [--out FILE.json]

Each rule is timed on one batch of ``--frames`` frames, ``--repeats`` times after one warm-up
call, the rules interleaved; the median and the range are reported per frame."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

from lmms_rekv.io.preprocess import CheckpointFrames, LlavaNextFrames


def measure(frames: int = 16, repeats: int = 5, height: int = 720, width: int = 1280) -> dict:
    """``{rule: {"median_ms", "min_ms", "max_ms"}}`` per frame, and the machine."""
    video = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (frames, height, width, 3), dtype=np.uint8))
    rules = {"checkpoint (LlavaOnevisionVideoProcessor)": CheckpointFrames.square(384),
             "llava_next (Pillow bicubic)": LlavaNextFrames((384, 384))}
    times = {name: [] for name in rules}
    for rule in rules.values():
        rule(video)  # warm-up
    for _ in range(repeats):
        for name, rule in rules.items():
            start = time.perf_counter()
            rule(video)
            times[name].append((time.perf_counter() - start) * 1000 / frames)
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__} ({torch.get_num_threads()} threads)",
        "input": f"{frames} frames of {height}x{width} uint8 -> 384x384", "repeats": repeats,
        "per_frame": {name: {"median_ms": round(statistics.median(t), 2), "min_ms": round(min(t), 2), "max_ms": round(max(t), 2)}
                      for name, t in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.preprocess", description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args()
    result = measure(args.frames, args.repeats)
    text = json.dumps(result, indent=1)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
