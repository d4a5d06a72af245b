"""`PendingFrames`: preprocessed frames a stream holds before their chunk is committed, kept as the
batches they arrived in (a frame trickling in is never copied with the whole backlog)."""

from __future__ import annotations

from typing import List

import torch


class PendingFrames:
    """An ordered run of preprocessed frames ``(N, 3, S, S)`` in the batches they were added."""

    def __init__(self, *batches: torch.Tensor) -> None:
        self._batches: List[torch.Tensor] = []
        self.count = 0
        for batch in batches:
            self.append(batch)

    def __len__(self) -> int:
        return self.count

    def append(self, pixels: torch.Tensor) -> None:
        self._batches.append(pixels)
        self.count += pixels.shape[0]

    def range(self, first: int, last: int) -> torch.Tensor:
        """Frames ``first..last-1`` (a view when they lie in one batch)."""
        pieces, start = [], 0
        for batch in self._batches:
            lo, hi = max(first, start), min(last, start + batch.shape[0])
            if lo < hi:
                pieces.append(batch[lo - start : hi - start])
            start += batch.shape[0]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def drop(self, n: int) -> None:
        """Forget the first ``n`` frames: whole batches dropped, the one cut sliced (no copy)."""
        rest, left = [], n
        for batch in self._batches:
            if left >= batch.shape[0]:
                left -= batch.shape[0]
                continue
            rest.append(batch[left:])
            left = 0
        self._batches, self.count = rest, self.count - n

    def device_bytes(self, device: torch.device) -> int:
        """Bytes of the frames held on ``device``."""
        return sum(p.numel() * p.element_size() for p in self._batches if p.device == device)

    def all(self) -> torch.Tensor:
        """Every pending frame in one tensor (a copy when there are several batches)."""
        return torch.cat(self._batches) if len(self._batches) > 1 else self._batches[0]


class ProvisionalTail:
    """The pending whole blocks encoded into a fork of the stream, which questions use until
    their chunk is committed: the fork's ``state``, the pending ``frames`` it covers and the
    ``forwards`` that built it (1: bit-identical to committing those frames now)."""

    def __init__(self) -> None:
        self.state = None  # Optional[StreamState]
        self.frames = 0
        self.forwards = 0

    def extended(self, state, frames: int) -> None:
        """Record one more forward into ``state`` (the fork), now covering ``frames``."""
        self.state, self.frames, self.forwards = state, frames, self.forwards + 1

    def adoptable(self, frames: int) -> bool:
        """Whether the tail is exactly ``frames`` pending frames encoded in one forward."""
        return self.state is not None and self.frames == frames and self.forwards == 1

    def drop(self) -> None:
        """Release the fork's own store and forget it."""
        if self.state is not None:
            self.state.store.close()
        self.state, self.frames, self.forwards = None, 0, 0
