"""Decoding settings and token selection (greedy unless told otherwise)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch


@dataclass(frozen=True)
class GenerationSettings:
    """How an answer is decoded.

    ``max_new_tokens`` bounds the answer; decoding stops at any of ``eos_token_ids`` or once
    the decoded text contains one of ``stop`` (which is cut off). ``do_sample`` with
    ``temperature``/``top_p`` samples (seeded by ``seed`` when given); otherwise greedy."""

    max_new_tokens: int = 16
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    eos_token_ids: Tuple[int, ...] = ()
    stop: Tuple[str, ...] = ()
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")


def next_token(logits: torch.Tensor, settings: GenerationSettings, generator: Optional[torch.Generator]) -> int:
    """Pick the next token from ``(V,)`` logits."""
    if not settings.do_sample:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / settings.temperature, dim=-1)
    if settings.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < settings.top_p
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def cut_at_stop(text: str, stop: Sequence[str]) -> Tuple[str, bool]:
    """``text`` cut before the first stop string, and whether one was found."""
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
