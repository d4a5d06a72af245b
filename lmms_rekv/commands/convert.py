"""``rekv convert SRC OUT``: an lmms-lab (LLaVA-NeXT format) LLaVA-OneVision checkpoint written as
a transformers LLaVA-OneVision folder (``lmms_rekv.io.lmms_lab`` does the mapping)."""

from __future__ import annotations

import sys
from typing import List, Optional

from ..io.console import interruptible
from .flags import Parser


@interruptible("rekv convert")
def main(argv: Optional[List[str]] = None) -> int:
    """``rekv convert SRC OUT``; returns the exit status (0, or 2 with a one-line error)."""
    from ..io.lmms_lab import CONV_TEMPLATES, convert, is_lmms_lab

    parser = Parser(prog="rekv convert", description="Convert an lmms-lab (LLaVA-NeXT format) LLaVA-OneVision "
                                     "checkpoint into a transformers LLaVA-OneVision folder that ReKV and lmms-eval's llava_hf load.",
                                     epilog="example: rekv convert lmms-lab/llava-onevision-qwen2-7b-ov ./llava-ov-7b-hf")
    parser.add_argument("source", help="lmms-lab checkpoint folder or hub id (e.g. lmms-lab/llava-onevision-qwen2-7b-ov)")
    parser.add_argument("out", help="folder for the transformers-format copy")
    parser.add_argument("--conv-template", default="qwen_1_5", choices=sorted(CONV_TEMPLATES))
    args = parser.parse_args(argv)
    from ..model import resolve_source  # torch: after parsing (--help is instant)

    try:
        path = resolve_source(args.source)
        if not is_lmms_lab(path):
            raise ValueError(f"{args.source} is not an lmms-lab LLaVA-OneVision checkpoint (no llava/llava_qwen config with mm_vision_tower)")
        print(convert(path, args.out, args.conv_template))
    except (OSError, ValueError) as exc:
        print(f"rekv convert: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
