"""``python -m research.miniature train|eval``: reproduce or check the shipped miniature.

    python -m research.miniature train --minutes 15 --seed 0 --out DIR   # ~15 min on 2 CPU cores
    python -m research.miniature train --world video --minutes M --out DIR   # the video-like world (video_world.py)
    python -m research.miniature train --world video --init DIR --start-frames 8 ...   # continue a saved run
    python -m research.miniature recipe --out DIR   # the video-world miniature's staged recipe (~130 min)
    python -m research.miniature eval [--model DIR] [--lengths 16 32 64] [--videos 100]
    python -m research.miniature clip --minutes 3 --out DIR   # the external embedder (open_clip)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional

from lmms_rekv.miniature import WEIGHTS, world

from .families import FAMILIES


def _table(results: dict, chance: Optional[dict] = None) -> str:
    chance = world.CHANCE if chance is None else chance
    lengths = list(next(iter(results.values())))
    lines = ["| kind (chance) | " + " | ".join(f"{n} frames" for n in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
    for kind, row in results.items():
        lines.append(f"| {kind} ({chance[kind]:.1%}) | " + " | ".join(f"{row[n]:.0%}" for n in lengths) + " |")
    return "\n".join(lines)


def cmd_train(args) -> int:
    import torch

    from . import build
    from .train import TrainConfig, evaluate, train

    optional = {k: getattr(args, k) for k in ("max_frames", "start_frames", "lr", "init", "bind_weight", "order_bases") if getattr(args, k) is not None}
    if args.order_rotation is not None:
        optional["order_rotation"] = args.order_rotation == "on"
    cfg = TrainConfig(minutes=args.minutes, seed=args.seed, threads=args.threads, world=args.world, **optional)
    arch = None if args.init else build.Architecture.for_world(args.world, family=args.family)
    def snapshot(model, tokenizer, arch, log):  # the run so far, in the output folder
        build.save_checkpoint(args.out, model.eval(), tokenizer, arch, log, world_name=args.world)

    model, tokenizer, log = train(cfg, arch, snapshot=snapshot, every=60.0 * args.save_every)
    arch = build.Architecture(**log["architecture"])  # with --init: the saved run's
    log["held_out_full_attention"] = evaluate(model, tokenizer, args.lengths, args.videos, seed=args.seed, world_name=args.world)
    log["versions"] = {"torch": torch.__version__, "transformers": __import__("transformers").__version__}
    build.save_checkpoint(args.out, model, tokenizer, arch, log, world_name=args.world)
    print(f"trained {log['steps']} steps in {log['seconds']:.0f} s (final length {log['final_frames']} frames), wrote {args.out}")
    print(f"held-out accuracy ({args.world} world), full attention (first answer token):")
    print(_table(log["held_out_full_attention"], build.world_module(args.world).CHANCE))
    return 0


def cmd_recipe(args) -> int:
    import torch

    from . import build
    from .recipe import run_recipe
    from .train import evaluate

    model, tokenizer, log = run_recipe(args.out, seed=args.seed, family=args.family, stage_dir=args.stages)
    log["held_out_full_attention"] = evaluate(model, tokenizer, args.lengths, args.videos, seed=args.seed, world_name="video")
    log["versions"] = {"torch": torch.__version__, "transformers": __import__("transformers").__version__}
    with open(os.path.join(args.out, "training_log.json"), "w") as fh:  # run_recipe wrote the weights; the log gains the evaluation
        json.dump(log, fh, indent=1)
    stages = ", ".join(f"{s['steps']} steps to {s['final_frames']} frames" for s in log["recipe"])
    print(f"trained the {args.family} video-world miniature in {len(log['recipe'])} stages ({stages}), wrote {args.out}")
    print("held-out accuracy (video world), full attention (first answer token):")
    print(_table(log["held_out_full_attention"], build.world_module("video").CHANCE))
    return 0


def cmd_eval(args) -> int:
    import torch
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from . import build
    from .train import evaluate

    name = args.world or _trained_world(args.model)
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    results = evaluate(model, tokenizer, args.lengths, args.videos, seed=args.seed, world_name=name)
    print(f"held-out accuracy of {args.model} ({name} world), full attention, {args.videos} videos per cell (seed {args.seed}):")
    print(_table(results, build.world_module(name).CHANCE))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


def _trained_world(model_dir: str) -> str:
    """The world a miniature folder was trained on (its ``world.json``; the tiled world before it said)."""
    path = os.path.join(model_dir, "world.json")
    if not os.path.isfile(path):
        return "tiled"
    with open(path) as fh:
        return json.load(fh).get("world", "tiled")


def cmd_clip(args) -> int:
    from .clip import needle_hit_rate, save_clip, train_clip, video_hit_rate

    embedder, log = train_clip(minutes=args.minutes, seed=args.seed, world_name=args.world)
    if args.world == "video":
        log["held_out_needle_hit_top4"] = rates = video_hit_rate(embedder, lengths=args.lengths, videos=args.videos)
        config, weights = save_clip(args.out, embedder, log)
        print(f"trained {log['steps']} steps in {log['seconds']:.0f} s, wrote {config} and {weights}")
        print("held-out: every named object has a frame of its visit among the 4 closest to the question (4 random frames in brackets)")
        for kind, row in rates.items():
            print(f"  {kind}: " + ", ".join(f"{n} frames {v:.0%} ({r:.0%})" for n, (v, r) in row.items()))
        return 0
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
    parser = argparse.ArgumentParser(prog="python -m research.miniature", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train_p = sub.add_parser("train", help="train a miniature from scratch")
    train_p.add_argument("--minutes", type=float, default=15.0)
    train_p.add_argument("--seed", type=int, default=0)
    train_p.add_argument("--out", required=True)
    train_p.add_argument("--max-frames", type=int, default=None, help="longest video the curriculum may reach (default: TrainConfig's)")
    train_p.add_argument("--threads", type=int, default=None)
    train_p.add_argument("--init", default=None, help="continue from this saved miniature instead of a fresh one")
    train_p.add_argument("--start-frames", type=int, default=None, help="the curriculum's first length (default: TrainConfig's)")
    train_p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: TrainConfig's)")
    train_p.add_argument("--save-every", type=float, default=10.0, help="minutes between snapshots of the run in --out")
    train_p.add_argument("--order-rotation", choices=("on", "off"), default=None,
                         help="video world: read the order targets through a fixed rotation (default: on for the video world)")
    train_p.add_argument("--order-bases", type=int, choices=(1, 2), default=None,
                         help="video world: 2 = prev and left through their own rotations (default), 1 = one shared")
    train_p.add_argument("--bind-weight", type=float, default=None, help="weight of the video world's attention binding loss")
    train_p.add_argument("--world", default="tiled", choices=("tiled", "video"),
                         help="the synthetic world: tiled (the shipped miniature's) or video (video_world.py: 32-pixel frames, "
                              "16 tokens each, objects entering, moving and leaving)")
    train_p.add_argument("--family", default="llava_onevision", choices=FAMILIES,
                         help="the model family's shape (Qwen families: real Qwen classes, one-frame temporal patches)")
    recipe_p = sub.add_parser("recipe", help="train the video-world miniature with its staged recipe (about 130 minutes)")
    recipe_p.add_argument("--seed", type=int, default=0)
    recipe_p.add_argument("--out", required=True)
    recipe_p.add_argument("--family", default="llava_onevision", choices=FAMILIES, help="the model family's shape")
    recipe_p.add_argument("--stages", help="keep each stage's folder here and skip the stages already in it (resume)")
    clip_p = sub.add_parser("clip", help="train the external embedder (a tiny open_clip model)")
    clip_p.add_argument("--minutes", type=float, default=3.0)
    clip_p.add_argument("--seed", type=int, default=0)
    clip_p.add_argument("--out", required=True)
    clip_p.add_argument("--world", default="tiled", choices=("tiled", "video"), help="the world whose frames it embeds")
    eval_p = sub.add_parser("eval", help="held-out accuracy with full attention")
    eval_p.add_argument("--model", default=WEIGHTS)
    eval_p.add_argument("--json", default=None)
    eval_p.add_argument("--world", default=None, choices=("tiled", "video"), help="default: the one in the model's world.json")
    for p in (train_p, eval_p, clip_p, recipe_p):
        p.add_argument("--lengths", type=int, nargs="+", default=[8, 12, 16] if p is recipe_p else [16, 32, 64])
        p.add_argument("--videos", type=int, default=100, help="held-out videos per kind and length")
    eval_p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.command == "eval" and not os.path.isfile(os.path.join(args.model, "config.json")):
        parser.error(f"{args.model} is not a model folder")
    return {"train": cmd_train, "eval": cmd_eval, "clip": cmd_clip, "recipe": cmd_recipe}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
