"""Where lmms-rekv keeps what it generates (converted checkpoints, demo and task videos, tiny
models): ``$LMMS_REKV_HOME``, else ``~/.cache/lmms-rekv``."""

from __future__ import annotations

import os


def cache_home(*parts: str) -> str:
    """The cache folder (or ``parts`` joined under it); not created here."""
    home = os.environ.get("LMMS_REKV_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "lmms-rekv")
    return os.path.join(home, *parts)
