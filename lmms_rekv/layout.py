"""`StreamLayout`: what one video stream fixes for its model family -- frame size, token grid,
sampling rate, frame times -- resolved once per session by the family adapter
(``patches.base.Backbone.layout`` / ``fit``) and passed to every per-stream family method.
Torch-free; the engine and the families both read it."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Tuple


@dataclasses.dataclass(frozen=True)
class StreamLayout:
    """What one stream fixes for its family, resolved once per session: ``Backbone.layout``
    when the session opens, ``Backbone.fit`` at its first frame (families that size frames from
    the video). Every per-stream family method takes it; the family object itself never
    changes. A question's fork with an incomplete, padded last block reads
    ``with_padding(block)``."""

    block_tokens: int  # stored slots per block (tokens, plus unused slots on Qwen3-VL)
    frame_size: Optional[Tuple[int, int]] = None  # (h, w) frames are resized to; None: fixed by the checkpoint
    grid: Optional[Tuple[int, int]] = None  # (H', W') visual tokens of a block (grid families)
    processor_resize: bool = False  # resized by the processor's own operation (a size it chose), else bicubic
    from_frames: bool = False  # the size is still to be read from the stream's first frame (``Backbone.fit``)
    fps: Optional[float] = None  # the stream's sampling rate (None: unknown)
    frame_times: Optional[Tuple[float, ...]] = None  # seconds of each frame, when not evenly spaced at ``fps``
    padded: Optional[int] = None  # a fork's incomplete last block, padded by repeating its last frame
    summary_span: Optional[Tuple[int, int]] = None  # tokens of a block its retrieval summary averages (None: all)
    tables: Any = dataclasses.field(default=None, compare=False, repr=False)  # the family's per-stream tables

    @property
    def summary_tokens(self) -> Optional[slice]:
        """``summary_span`` as a slice of a block's slots (None: every slot)."""
        return None if self.summary_span is None else slice(*self.summary_span)

    def with_padding(self, block: Optional[int]) -> "StreamLayout":
        """This layout for a state whose block ``block`` is padded (None: this layout)."""
        return self if block == self.padded else dataclasses.replace(self, padded=block)


def checked_timing(fps: Optional[float], frame_times: Optional[Sequence[float]]) -> Tuple[Optional[float], Optional[Tuple[float, ...]]]:
    """``(fps, frame_times)`` of a stream as floats; ``ValueError`` for a rate that is not > 0."""
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps!r}")
    return (None if fps is None else float(fps)), (None if frame_times is None else tuple(float(t) for t in frame_times))
