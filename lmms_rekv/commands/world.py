"""``rekv world``: write a video of the miniature's world and its questions.

    rekv world world.mp4 --seconds 60      # world.mp4 + world.questions.jsonl (with the true answers)
    rekv live world.mp4 --questions-file world.questions.jsonl

The shipped miniature was trained on this world only (``lmms_rekv.miniature``); these videos are
what it can answer about.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..io.console import interruptible
from .flags import Parser


@interruptible("rekv world")
def main(argv: Optional[List[str]] = None) -> int:
    """``rekv world PATH``; returns the exit status (0, or 2 with a one-line error)."""
    parser = Parser(prog="rekv world", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="video to write (.mp4: H.264; .avi / .mkv: lossless)")
    parser.add_argument("--seconds", type=int, default=60, help="length at 1 frame per second (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="which held-out video (default 0)")
    args = parser.parse_args(argv)
    from lmms_rekv.miniature import world_video

    try:
        clip = world_video(args.path, seconds=args.seconds, seed=args.seed)
    except (ValueError, OSError) as exc:
        print(f"rekv world: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {clip.path} ({clip.seconds} s at 1 fps) and {clip.questions_path} ({len(clip.questions)} questions)")
    for q in clip.questions:
        print(f"  {q.text}  -> {q.answer} (at {', '.join(map(str, q.seconds))} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
