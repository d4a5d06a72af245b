"""`ReKVConfig`: one validated dataclass for every ReKV setting."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

from .args import build, did_you_mean  # noqa: F401  (did_you_mean: imported from here by older code)
from .settings import (  # noqa: F401  (the allowed values: imported from here by older code)
    ADAPTIVE_POLICIES,
    BLOCK_SCORES,
    FUSION_RULES,
    GROUPS,
    HUB_CORRECTIONS,
    KV_QUANT,
    LAYER_FRAMES,
    POSITION_STRATEGIES,
    QUERY_POOLS,
    QUERY_SPANS,
    SCORES,
    SUMMARY_TIERS,
    AnsweringSettings,
    EncodingSettings,
    RetrievalSettings,
    StorageSettings,
    group_of,
)

#: Visual tokens per frame of LLaVA-OneVision (27x27 SigLIP patches pooled to 14x14).
LLAVA_OV_FRAME_TOKENS = 196

RETRIEVAL_MODES = ("internal", "external", "hybrid")  # the built-in ones; more: lmms_rekv.registry.RETRIEVERS
OFFLOAD_TIERS = ("cpu", "device", "disk")  # the built-in ones; more: lmms_rekv.registry.BACKENDS
TOKEN_REDUCTIONS = (None, "temporal", "salient", "merge")  # the built-in ones; more: lmms_rekv.registry.REDUCERS


@dataclass(frozen=True)
class ReKVConfig:
    """Settings of one ReKV engine; validated at construction.

    A *block* is the unit stored, scored and retrieved: one temporal patch of the family --
    1 frame on LLaVA-OneVision, 2 frames on the Qwen families. Settings named ``*_frames``
    that select what is retrieved (``topk_frames``, ``recent_frames``, ``group_frames``,
    ``adaptive_min_frames``) count blocks (the names are kept from ReKV, where a block is a
    frame); ``chunk_frames`` counts frames.

    Fields (their defaults are the groups'), grouped by the layer that owns them (each group's docstring describes its fields;
    every field with its default: docs/configuration.md) -- ``encoding_settings``
    (``lmms_rekv.settings.EncodingSettings``: window_tokens, chunk_frames, eager,
    query_block_tokens, block_tokens, frame_size), ``storage_settings`` (offload, summary_tier,
    offload_dir, ram_budget_bytes, kv_quant, token_reduction, token_keep), ``retrieval_settings``
    (retrieval, score, query_pool, query_span, layer_frames, block_score, hub_correction,
    topk_frames, recent_frames, group_frames, adaptive*, hybrid_*, clip_*) and
    ``answering_settings`` (position_strategy, qa_budget_tokens, qa_reserve_tokens). ReKV as
    published: ``query_pool="mean", query_span="prompt", layer_frames="own", recent_frames=0``;
    the defaults are the variants measured best on the trained miniatures
    (docs/results/miniature.md). ``frame_tokens`` is the deprecated name of ``block_tokens``.
    """

    window_tokens: Optional[int] = EncodingSettings.window_tokens
    topk_frames: Optional[int] = RetrievalSettings.topk_frames
    retrieval: str = RetrievalSettings.retrieval
    score: str = RetrievalSettings.score
    query_pool: str = RetrievalSettings.query_pool
    query_span: str = RetrievalSettings.query_span
    layer_frames: str = RetrievalSettings.layer_frames
    chunk_frames: int = EncodingSettings.chunk_frames
    eager: bool = EncodingSettings.eager
    offload: str = StorageSettings.offload
    summary_tier: str = StorageSettings.summary_tier
    offload_dir: Optional[str] = StorageSettings.offload_dir
    ram_budget_bytes: int = StorageSettings.ram_budget_bytes
    kv_quant: Optional[str] = StorageSettings.kv_quant
    query_block_tokens: Optional[int] = EncodingSettings.query_block_tokens
    block_tokens: Optional[int] = EncodingSettings.block_tokens
    frame_tokens: dataclasses.InitVar[Optional[int]] = None  # deprecated name of block_tokens
    frame_size: Optional[Tuple[int, int]] = EncodingSettings.frame_size
    position_strategy: str = AnsweringSettings.position_strategy
    qa_budget_tokens: Optional[int] = AnsweringSettings.qa_budget_tokens
    qa_reserve_tokens: int = AnsweringSettings.qa_reserve_tokens
    clip_model: str = RetrievalSettings.clip_model
    clip_pretrained: Optional[str] = RetrievalSettings.clip_pretrained
    clip_batch_size: int = RetrievalSettings.clip_batch_size
    hybrid_rule: str = RetrievalSettings.hybrid_rule
    hybrid_alpha: float = RetrievalSettings.hybrid_alpha
    adaptive: Optional[str] = RetrievalSettings.adaptive
    adaptive_mass: float = RetrievalSettings.adaptive_mass
    adaptive_temperature: float = RetrievalSettings.adaptive_temperature
    adaptive_min_frames: int = RetrievalSettings.adaptive_min_frames
    recent_frames: int = RetrievalSettings.recent_frames
    group_frames: int = RetrievalSettings.group_frames
    token_reduction: Optional[str] = StorageSettings.token_reduction
    token_keep: float = StorageSettings.token_keep
    block_score: str = RetrievalSettings.block_score
    hub_correction: Optional[str] = RetrievalSettings.hub_correction

    def __post_init__(self, frame_tokens: Optional[int] = None) -> None:
        if frame_tokens is not None:
            warnings.warn("ReKVConfig(frame_tokens=...) is deprecated; use block_tokens (tokens per stored block)",
                          DeprecationWarning, stacklevel=3)
            object.__setattr__(self, "block_tokens", frame_tokens if self.block_tokens is None else self.block_tokens)
        for group in GROUPS:  # each layer's settings validate their own fields
            built = group_of(group, self)
            object.__setattr__(self, f"_{group.__name__}", built)
        object.__setattr__(self, "frame_size", self.encoding_settings.frame_size)  # normalised to a tuple
        if self.topk_frames is not None and self.qa_budget_tokens is not None and self.block_tokens is not None:
            need = self.topk_frames * self.stored_tokens(self.block_tokens) + self.qa_reserve_tokens
            if need > self.qa_budget_tokens:
                raise ValueError(
                    f"topk_frames={self.topk_frames} blocks x {self.stored_tokens(self.block_tokens)} tokens + "
                    f"{self.qa_reserve_tokens} reserved = {need} tokens do not fit the QA budget "
                    f"of {self.qa_budget_tokens} tokens; lower topk_frames or raise qa_budget_tokens"
                )

    @property
    def encoding_settings(self) -> EncodingSettings:
        """The fields the encoder owns (window, chunk grid, tail, block size)."""
        return self._EncodingSettings

    @property
    def storage_settings(self) -> StorageSettings:
        """The fields the storage layer owns (tier, index tier, quantization, token reduction)."""
        return self._StorageSettings

    @property
    def retrieval_settings(self) -> RetrievalSettings:
        """The fields retrieval owns (scoring, selection, external embedder)."""
        return self._RetrievalSettings

    @property
    def answering_settings(self) -> AnsweringSettings:
        """The fields a question's context owns (positions, budget)."""
        return self._AnsweringSettings

    def stored_tokens(self, block_tokens: int) -> int:
        """Tokens stored per block of ``block_tokens`` (fewer with ``token_reduction``)."""
        return self.storage_settings.stored_tokens(block_tokens)

    @property
    def uses_embeddings(self) -> bool:
        """Whether frames and questions are embedded with the open_clip model."""
        return self.retrieval_settings.uses_embeddings

    @classmethod
    def from_strings(cls, **values) -> "ReKVConfig":
        """Build from command-line style values ("none" -> None, "64" -> 64, ...), e.g. lmms-eval
        ``--model_args``; raises ValueError for unknown names or unparsable values."""
        return build(cls, values)

    def replace(self, **changes) -> "ReKVConfig":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def for_model(self, block_tokens: int, max_positions: Optional[int]) -> "ReKVConfig":
        """This config checked against a loaded model's tokens per frame and position limit."""
        budget = self.qa_budget_tokens
        if max_positions is not None:
            budget = max_positions if budget is None else min(budget, max_positions)
        return self.replace(block_tokens=block_tokens, qa_budget_tokens=budget)
