"""Command-line conveniences shared by the console tools (``rekv ...``, ``rekv-eval``)."""

from __future__ import annotations

import functools
import sys
from typing import Callable


def interruptible(prog: str) -> Callable:
    """Decorate a command's ``main``: Ctrl-C (at any point: while a model loads, while a
    stream closes) ends it with one line on stderr and exit status 130, not a traceback."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt:
                try:
                    print(f"\n{prog}: interrupted", file=sys.stderr, flush=True)
                except KeyboardInterrupt:  # a second Ctrl-C while saying so
                    pass
                return 130

        return run

    return wrap
