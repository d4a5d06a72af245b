"""`ReKVConfig`: one validated dataclass for every ReKV setting."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

#: Visual tokens per frame of LLaVA-OneVision (27x27 SigLIP patches pooled to 14x14).
LLAVA_OV_FRAME_TOKENS = 196

RETRIEVAL_MODES = ("internal",)
SCORES = ("dot", "cosine")
OFFLOAD_TIERS = ("cpu", "device")


@dataclass(frozen=True)
class ReKVConfig:
    """Settings of one ReKV engine; validated at construction.

    Attributes:
        window_tokens: tokens of the sliding window each encoded token attends to (besides
            the sinks). ``None`` = unbounded (full causal attention while encoding).
        topk_frames: frames retrieved per layer for each question. ``None`` = every frame.
        retrieval: how frames are picked at question time; ``"internal"`` scores each
            frame with the model's own (pre-RoPE) queries and keys, per layer.
        score: ``"dot"`` (raw dot product, ReKV's code) or ``"cosine"`` (ReKV's paper).
        chunk_frames: frames encoded per language-model forward. Frames added to a session
            are buffered until a full chunk exists (or a question flushes them), so the
            stored KV does not depend on how frames were split across ``add_frames`` calls.
        offload: where every frame's KV goes: ``"cpu"`` (pinned RAM when a GPU is used) or
            ``"device"`` (kept on the model's device; for small streams and tests).
        query_block_tokens: queries processed per attention block while encoding (bounds
            the size of the score matrix; does not change results).
        frame_tokens: visual tokens per frame of the model (196 for LLaVA-OneVision); the
            loader replaces it with the checkpoint's value and re-validates.
        qa_budget_tokens: most context tokens (sinks + retrieved frames + question +
            answer) a question may use; ``None`` = the model's ``max_position_embeddings``.
        qa_reserve_tokens: tokens kept free in the QA budget for the question and answer.
    """

    window_tokens: Optional[int] = 15_000
    topk_frames: Optional[int] = 64
    retrieval: str = "internal"
    score: str = "dot"
    chunk_frames: int = 64
    offload: str = "cpu"
    query_block_tokens: int = 1024
    frame_tokens: int = LLAVA_OV_FRAME_TOKENS
    qa_budget_tokens: Optional[int] = 32_768
    qa_reserve_tokens: int = 512

    def __post_init__(self) -> None:
        _positive("window_tokens", self.window_tokens, optional=True)
        _positive("topk_frames", self.topk_frames, optional=True)
        _positive("chunk_frames", self.chunk_frames)
        _positive("query_block_tokens", self.query_block_tokens)
        _positive("frame_tokens", self.frame_tokens)
        _positive("qa_budget_tokens", self.qa_budget_tokens, optional=True)
        if not isinstance(self.qa_reserve_tokens, int) or self.qa_reserve_tokens < 0:
            raise ValueError(f"qa_reserve_tokens must be an int >= 0, got {self.qa_reserve_tokens!r}")
        _choice("retrieval", self.retrieval, RETRIEVAL_MODES)
        _choice("score", self.score, SCORES)
        _choice("offload", self.offload, OFFLOAD_TIERS)
        if self.topk_frames is not None and self.qa_budget_tokens is not None:
            need = self.topk_frames * self.frame_tokens + self.qa_reserve_tokens
            if need > self.qa_budget_tokens:
                raise ValueError(
                    f"topk_frames={self.topk_frames} frames x {self.frame_tokens} tokens + "
                    f"{self.qa_reserve_tokens} reserved = {need} tokens do not fit the QA budget "
                    f"of {self.qa_budget_tokens} tokens; lower topk_frames or raise qa_budget_tokens"
                )

    def replace(self, **changes) -> "ReKVConfig":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def for_model(self, frame_tokens: int, max_positions: Optional[int]) -> "ReKVConfig":
        """This config checked against a loaded model's tokens per frame and position limit."""
        budget = self.qa_budget_tokens
        if max_positions is not None:
            budget = max_positions if budget is None else min(budget, max_positions)
        return self.replace(frame_tokens=frame_tokens, qa_budget_tokens=budget)


def _positive(name: str, value, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        kind = "a positive int or None" if optional else "a positive int"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


def _choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
