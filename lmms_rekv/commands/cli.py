"""``rekv <command> ...``: one entry for the console tools (``rekv live``, ``rekv demo``,
``rekv world``, ``rekv eval``, ``rekv doctor``, ``rekv convert``); ``live``, ``demo``, ``eval``
and ``doctor`` are also installed as ``rekv-<command>``. Benchmarks run from a checkout
(``python -m benchmarks.bench``). The ReKV
settings are the same flags in every command (``lmms_rekv.commands.flags``)."""

from __future__ import annotations

import importlib
import sys
from typing import List, Optional

from ..io.console import interruptible

COMMANDS = {
    "live": ("lmms_rekv.commands.live", "follow a live video source and answer questions as they come"),
    "demo": ("lmms_rekv.commands.demo", "stream a clip through the trained miniature (or a checkpoint) and ask questions"),
    "world": ("lmms_rekv.commands.world", "write a video of the miniature's world and its questions (for live, demo, the API)"),
    "eval": ("lmms_rekv.integrations.run_eval", "lmms-eval with the shipped tasks, failing loudly"),
    "doctor": ("lmms_rekv.commands.doctor", "check the installation against the tested lock"),
    "convert": ("lmms_rekv.commands.convert", "convert an lmms-lab (LLaVA-NeXT) LLaVA-OneVision checkpoint to the transformers format"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "usage: rekv <command> [args]  (rekv <command> --help for its options)\n\ncommands:\n" + "\n".join(lines)


@interruptible("rekv")
def main(argv: Optional[List[str]] = None) -> int:
    """``rekv COMMAND ARGS``: 0 for ``--help``; 2 with a one-line reason for a missing or unknown command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    if not argv or argv[0] not in COMMANDS:
        problem = "missing command" if not argv else f"unknown command {argv[0]!r}"
        print(f"rekv: {problem}\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    result = module.main(argv[1:])
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
