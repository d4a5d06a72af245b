"""Beside the package, not installed: the miniature's training and studies (``research.miniature``),
the reliability harnesses (``research.reliability``) and the tiny random-weight checkpoints the
tests, benchmarks and studies build (``research.tiny``, ``research.tiny_qwen``). Run from a
checkout, e.g. ``python -m research.tiny``."""

import os as _os
import sys as _sys
from typing import List as _List

ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))


def module_command(module: str) -> _List[str]:
    """``python -m module`` for a child process, with this checkout importable *after*
    site-packages (as ``tests/conftest.py`` arranges for the tests): ``lmms_rekv`` then comes
    from wherever it is installed -- a wheel under ``scripts/test_installed.sh``."""
    code = f"import runpy, sys; sys.path.append({ROOT!r}); runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    return [_sys.executable, "-c", code]
