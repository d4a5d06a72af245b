"""A time limit on a producer that may hang (a decoder stuck on a damaged file).

``with_deadline(make_items, seconds)`` runs the iterator in a daemon thread and hands its
items over a small queue; the caller waits at most until the deadline, however long one
item takes (a hang inside a C decoder included), and the work done between items (e.g.
encoding the frames) counts against the same deadline. On expiry the producer is asked to
stop at its next item and abandoned -- it cannot be interrupted inside C code, but it no
longer holds up the caller.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Iterator, Optional, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

_DONE = object()


class DeadlineExceeded(TimeoutError):
    """The time limit passed before the producer finished."""


def with_deadline(make_items: Callable[[], Iterator[T]], seconds: Optional[float], what: str = "work") -> Iterator[T]:
    """Yield the items of ``make_items()`` (called in a worker thread), raising
    ``DeadlineExceeded`` once ``seconds`` have passed since the first call to ``next``.
    ``seconds`` None or <= 0: no limit (the items are produced in the caller's thread)."""
    if not seconds or seconds <= 0:
        yield from make_items()
        return
    deadline = time.monotonic() + seconds
    items: "queue.Queue" = queue.Queue(maxsize=2)
    stop = threading.Event()
    worker = threading.Thread(target=_produce, args=(make_items, items, stop), name="rekv-deadline", daemon=True)
    worker.start()
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"{what} took longer than the {seconds:g} s limit")
            try:
                kind, value = items.get(timeout=remaining)
            except queue.Empty:
                raise DeadlineExceeded(f"{what} took longer than the {seconds:g} s limit") from None
            if kind is _DONE:
                return
            if kind is BaseException:
                raise value
            yield value
    finally:
        stop.set()
        _drain(items)
        if worker.is_alive():
            worker.join(timeout=1.0)
            if worker.is_alive():
                logger.warning("%s: abandoned a worker thread still running after the time limit", what)


def _produce(make_items: Callable[[], Iterator[T]], items: "queue.Queue", stop: threading.Event) -> None:
    try:
        iterator = make_items()
        try:
            for item in iterator:
                if not _put(items, (object, item), stop):
                    return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
    except BaseException as exc:  # handed to the caller
        _put(items, (BaseException, exc), stop)
        return
    _put(items, (_DONE, None), stop)


def _put(items: "queue.Queue", entry, stop: threading.Event) -> bool:
    """Put ``entry`` unless the caller stopped listening; returns False when it did."""
    while not stop.is_set():
        try:
            items.put(entry, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _drain(items: "queue.Queue") -> None:
    try:
        while True:
            items.get_nowait()
    except queue.Empty:
        pass
