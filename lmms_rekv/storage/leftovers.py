"""Files and folders left behind by a process that was killed (``kill -9``, out of memory):
named with their writer's pid, removed by the next writer once that process is gone."""

from __future__ import annotations

import logging
import os
import re
import shutil
from typing import Iterable

logger = logging.getLogger(__name__)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a process of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead(paths: Iterable[str], pattern: str, own_are_stale: bool = False) -> int:
    """Remove every path whose name matches ``pattern`` (a regex whose group 1 is the
    writer's pid) when that writer is gone -- or is this process and ``own_are_stale``;
    returns how many were removed."""
    removed = 0
    for path in paths:
        match = re.search(pattern, os.path.basename(path))
        if match is None:
            continue
        pid = int(match.group(1))
        if (pid == os.getpid() and not own_are_stale) or (pid != os.getpid() and process_alive(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
        logger.info("removed %s, left by process %s (no longer running)", path, match.group(1))
    return removed
