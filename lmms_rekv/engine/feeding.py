"""A session fed from a background thread (``start``/``wait``/``stop``; the thread itself is
``background.BackgroundEncoder``) and ``settled``: run a method once every frame submitted
before it has been added (a mixin of ``ReKVSession``)."""

from __future__ import annotations

import functools
import logging

from .background import BackgroundEncoder

logger = logging.getLogger(__name__)


def settled(method):
    """Run ``method`` once the background encoder (if any) has added every frame submitted
    before the call, then under the session's lock."""

    @functools.wraps(method)
    def settled(self, *args, **kwargs):
        self.wait()
        with self._lock:
            return method(self, *args, **kwargs)

    return settled


class BackgroundFeeding:
    """The session's background encoder: frames handed over while the caller keeps reading."""

    def start(self) -> "BackgroundFeeding":
        """Start the background encoder: from now on ``add_frames`` queues frames and a
        thread encodes them while the caller keeps feeding (``add_frames(block=True)``
        still waits for its own frames). Questions wait for every frame added before them.
        At most ``4 * chunk_frames`` frames wait in its queue: beyond that ``add_frames``
        blocks until there is room (a source faster than the encoder is slowed down).
        Returns the session (``with session.start(): ...`` stops and closes it at the end)."""
        self._background()
        return self

    def wait(self) -> None:
        """Block until the background encoder (if running) has added every frame submitted
        so far; raises a failure it met."""
        if self._worker is not None:
            self._worker.wait()

    def stop(self) -> None:
        """Encode what is queued and end the background encoder; raises a failure it met."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()

    def _background(self) -> BackgroundEncoder:
        worker = self._worker
        if worker is not None and not worker.alive:  # ended by a failure: report it once
            self._worker = None
            worker.stop()
        if self._worker is None:
            self._worker = BackgroundEncoder(self._add_locked, max_queued_frames=4 * self.config.chunk_frames,
                                             accepted=self._held_frames)
        return self._worker
