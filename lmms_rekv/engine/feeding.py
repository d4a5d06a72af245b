"""`Feeder`: the part of a session that owns its background encoder (``start``/``wait``/``stop``;
the thread itself is ``background.BackgroundEncoder``), feeding a `StreamWriter`."""

from __future__ import annotations

import logging
from typing import Optional

import torch

from .background import BackgroundEncoder
from .writer import StreamWriter

logger = logging.getLogger(__name__)


class Feeder:
    """Frames handed to a background thread while the caller keeps reading; at most
    ``max_queued_frames`` wait (beyond that ``submit`` blocks: a source faster than the
    encoder is slowed down)."""

    def __init__(self, writer: StreamWriter, max_queued_frames: int) -> None:
        self._writer, self._max_queued = writer, max_queued_frames
        self._worker: Optional[BackgroundEncoder] = None

    @property
    def running(self) -> bool:
        """Whether frames go through the background thread (``start`` was called or a
        ``block=False`` add started it, and it was not stopped)."""
        return self._worker is not None

    @property
    def queued_frames(self) -> int:
        return self._worker.queued_frames if self._worker is not None else 0

    def start(self) -> None:
        """Start the background thread (if not running)."""
        self._running()

    def submit(self, frames: torch.Tensor, block: bool) -> None:
        """Queue checked frames ``(N, H, W, 3)``; ``block``: return once they are in the stream."""
        worker = self._running()
        ticket = worker.submit(frames)
        if block:
            worker.wait(ticket)

    def wait(self) -> None:
        """Block until every frame submitted so far is in the stream; raises a failure it met."""
        if self._worker is not None:
            self._worker.wait()

    def stop(self) -> None:
        """Encode what is queued and end the thread; raises a failure it met."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()

    def _running(self) -> BackgroundEncoder:
        worker = self._worker
        if worker is not None and not worker.alive:  # ended by a failure: report it once
            self._worker = None
            worker.stop()
        if self._worker is None:
            writer = self._writer
            self._worker = BackgroundEncoder(writer.add, max_queued_frames=self._max_queued, accepted=lambda: writer.held_frames)
        return self._worker
