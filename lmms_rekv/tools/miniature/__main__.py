"""``python -m lmms_rekv.tools.miniature train|eval``: reproduce or check the shipped miniature.

    python -m lmms_rekv.tools.miniature train --minutes 15 --seed 0 --out DIR   # ~15 min on 2 CPU cores
    python -m lmms_rekv.tools.miniature eval [--model DIR] [--lengths 16 32 64] [--videos 100]
    python -m lmms_rekv.tools.miniature clip --minutes 3 --out DIR   # the external embedder (open_clip)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional

from . import WEIGHTS, world
from .families import FAMILIES


def _table(results: dict) -> str:
    lengths = list(next(iter(results.values())))
    lines = ["| kind (chance) | " + " | ".join(f"{n} frames" for n in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
    for kind, row in results.items():
        lines.append(f"| {kind} ({world.CHANCE[kind]:.1%}) | " + " | ".join(f"{row[n]:.0%}" for n in lengths) + " |")
    return "\n".join(lines)


def cmd_train(args) -> int:
    import torch

    from . import build
    from .train import TrainConfig, evaluate, train

    cfg = TrainConfig(minutes=args.minutes, seed=args.seed, threads=args.threads,
                      **({} if args.max_frames is None else {"max_frames": args.max_frames}))
    arch = build.Architecture(family=args.family)
    model, tokenizer, log = train(cfg, arch)
    log["held_out_full_attention"] = evaluate(model, tokenizer, args.lengths, args.videos, seed=args.seed)
    log["versions"] = {"torch": torch.__version__, "transformers": __import__("transformers").__version__}
    build.save_checkpoint(args.out, model, tokenizer, arch, log)
    print(f"trained {log['steps']} steps in {log['seconds']:.0f} s (final length {log['final_frames']} frames), wrote {args.out}")
    print("held-out accuracy, full attention (first answer token):")
    print(_table(log["held_out_full_attention"]))
    return 0


def cmd_eval(args) -> int:
    import torch
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from .train import evaluate

    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    results = evaluate(model, tokenizer, args.lengths, args.videos, seed=args.seed)
    print(f"held-out accuracy of {args.model}, full attention, {args.videos} videos per cell (seed {args.seed}):")
    print(_table(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


def cmd_clip(args) -> int:
    from .clip import needle_hit_rate, save_clip, train_clip

    embedder, log = train_clip(minutes=args.minutes, seed=args.seed)
    log["held_out_needle_hit_top4"] = needle_hit_rate(embedder, lengths=args.lengths, videos=args.videos)
    config, weights = save_clip(args.out, embedder, log)
    print(f"trained {log['steps']} steps in {log['seconds']:.0f} s, wrote {config} and {weights}")
    from .accuracy import random_hit_rate

    print("held-out: the named objects' frames among the 4 closest to the question (a random choice of 4 in brackets)")
    for kind, row in log["held_out_needle_hit_top4"].items():
        needed = 2 if kind == "same" else 1
        print(f"  {kind}: " + ", ".join(f"{n} frames {v:.0%} ({random_hit_rate(int(n), 4, needed):.0%})" for n, v in row.items()))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmms_rekv.tools.miniature", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train_p = sub.add_parser("train", help="train a miniature from scratch")
    train_p.add_argument("--minutes", type=float, default=15.0)
    train_p.add_argument("--seed", type=int, default=0)
    train_p.add_argument("--out", required=True)
    train_p.add_argument("--max-frames", type=int, default=None, help="longest video the curriculum may reach (default: TrainConfig's)")
    train_p.add_argument("--threads", type=int, default=None)
    train_p.add_argument("--family", default="llava_onevision", choices=FAMILIES,
                         help="the model family's shape (Qwen families: real Qwen classes, one-frame temporal patches)")
    clip_p = sub.add_parser("clip", help="train the external embedder (a tiny open_clip model)")
    clip_p.add_argument("--minutes", type=float, default=3.0)
    clip_p.add_argument("--seed", type=int, default=0)
    clip_p.add_argument("--out", required=True)
    eval_p = sub.add_parser("eval", help="held-out accuracy with full attention")
    eval_p.add_argument("--model", default=WEIGHTS)
    eval_p.add_argument("--json", default=None)
    for p in (train_p, eval_p, clip_p):
        p.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64])
        p.add_argument("--videos", type=int, default=100, help="held-out videos per kind and length")
    eval_p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.command == "eval" and not os.path.isfile(os.path.join(args.model, "config.json")):
        parser.error(f"{args.model} is not a model folder")
    return {"train": cmd_train, "eval": cmd_eval, "clip": cmd_clip}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
