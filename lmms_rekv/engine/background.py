"""`BackgroundEncoder`: a thread that adds queued frames to one session while its caller
keeps feeding (``session.start()`` / ``add_frames(..., block=False)``).

Batches are taken in arrival order; everything queued when the thread wakes is added in one
call (a burst becomes few large forwards, never more than ``chunk_frames`` frames each).
Each batch gets a ticket; ``wait(ticket)`` returns once that batch (and every one before it)
is in the session, so a question answers from every frame submitted before it. A failure in
the thread is raised in the caller by the next ``submit``/``wait``/``stop``, naming how many
submitted frames it left out; the thread then ends (a later ``block=False`` starts a new one).
``submit`` blocks while ``max_queued_frames`` frames wait (back-pressure: a source faster
than the encoder is slowed down instead of filling memory).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, List, Optional

import torch

logger = logging.getLogger(__name__)


class BackgroundEncoder:
    """Runs ``add(batches, more_waiting)`` on a daemon thread for frames handed to ``submit``.

    ``add`` receives the queued ``(N, H, W, 3)`` uint8 batches in order and whether more
    frames arrived meanwhile (then the session skips its provisional tail encoding).
    ``accepted()`` (optional) counts the frames the session holds, so that frames a failed
    ``add`` kept (to encode later) are not reported as left out."""

    def __init__(self, add: Callable[[List[torch.Tensor], Callable[[], bool]], None], max_queued_frames: int = 256,
                 name: str = "rekv-encoder", accepted: Optional[Callable[[], int]] = None) -> None:
        self._add, self._max_queued, self._accepted = add, max_queued_frames, accepted
        self._cond = threading.Condition()
        self._queue: List[torch.Tensor] = []
        self._submitted = 0  # tickets handed out
        self._done = 0  # tickets whose frames are in the session (or lost to an error)
        self._error: Optional[BaseException] = None
        self._lost_frames = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- caller side ----------------------------------------------------------------------
    def submit(self, frames: torch.Tensor) -> int:
        """Queue ``frames`` (waiting while the queue is full); returns the ticket ``wait`` takes."""
        with self._cond:
            self._cond.wait_for(lambda: self._queued() < self._max_queued or self._error is not None or not self._thread.is_alive())
            self._raise_error()
            if self._stopping:
                raise RuntimeError("the background encoder has been stopped")
            self._queue.append(frames)
            self._submitted += 1
            self._cond.notify_all()
            return self._submitted

    @property
    def queued_frames(self) -> int:
        """Frames submitted but not yet taken by the thread."""
        with self._cond:
            return self._queued()

    def _queued(self) -> int:
        return sum(f.shape[0] for f in self._queue)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def wait(self, ticket: Optional[int] = None) -> None:
        """Block until batch ``ticket`` (default: every batch submitted so far) is added."""
        with self._cond:
            target = self._submitted if ticket is None else ticket
            self._cond.wait_for(lambda: self._done >= target or self._error is not None)
            self._raise_error()

    def stop(self) -> None:
        """Add what is queued, then end the thread; raises a failure it met."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()
        with self._cond:
            self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self._stopping = True
            raise RuntimeError(
                f"background encoding failed ({type(error).__name__}: {error}); "
                f"{self._lost_frames} submitted frames were not added"
            ) from error

    # -- thread side ----------------------------------------------------------------------
    def _more_waiting(self) -> bool:
        with self._cond:
            return bool(self._queue)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopping)
                if not self._queue:
                    return
                batches, self._queue = self._queue, []
                self._cond.notify_all()  # room in the queue
            before = self._accepted() if self._accepted else 0
            try:
                self._add(batches, self._more_waiting)
            except BaseException as exc:  # handed to the caller, never swallowed
                logger.error("background encoding failed: %s", exc)
                kept = self._accepted() - before if self._accepted else 0  # e.g. pending after a full disk
                with self._cond:
                    self._lost_frames = sum(b.shape[0] for b in batches) - kept + sum(b.shape[0] for b in self._queue)
                    self._queue = []
                    self._error = exc
                    self._done = self._submitted
                    self._cond.notify_all()
                return
            with self._cond:
                self._done += len(batches)
                self._cond.notify_all()
