"""`ReKVConfig`: one validated dataclass for every ReKV setting."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

from .args import build, did_you_mean  # noqa: F401  (did_you_mean: imported from here by older code)
from .registry import BACKENDS, REDUCERS, RETRIEVERS

#: Visual tokens per frame of LLaVA-OneVision (27x27 SigLIP patches pooled to 14x14).
LLAVA_OV_FRAME_TOKENS = 196

RETRIEVAL_MODES = ("internal", "external", "hybrid")  # the built-in ones; more: lmms_rekv.registry.RETRIEVERS
FUSION_RULES = ("zscore", "rrf")
ADAPTIVE_POLICIES = (None, "mass")
SCORES = ("dot", "cosine")
QUERY_POOLS = ("mean", "max", "head")  # lmms_rekv.retrieval.scoring.POOLS is this tuple
QUERY_SPANS = ("prompt", "question")
LAYER_FRAMES = ("own", "first")
OFFLOAD_TIERS = ("cpu", "device", "disk")  # the built-in ones; more: lmms_rekv.registry.BACKENDS
TOKEN_REDUCTIONS = (None, "temporal", "salient", "merge")  # the built-in ones; more: lmms_rekv.registry.REDUCERS
BLOCK_SCORES = ("mean", "tokens")
HUB_CORRECTIONS = (None, "center", "template")  # lmms_rekv.retrieval.scoring.HUBS: these but None
SUMMARY_TIERS = ("device", "cpu")
KV_QUANT = (None, "int8", "int4")
POSITION_STRATEGIES = ("layout", "original", "consecutive_t", "1d")  # lmms_rekv.patches.base.POSITION_STRATEGIES is this tuple


@dataclass(frozen=True)
class ReKVConfig:
    """Settings of one ReKV engine; validated at construction.

    A *block* is the unit stored, scored and retrieved: one temporal patch of the family --
    1 frame on LLaVA-OneVision, 2 frames on the Qwen families. Settings named ``*_frames``
    that select what is retrieved (``topk_frames``, ``recent_frames``, ``group_frames``,
    ``adaptive_min_frames``) count blocks (the names are kept from ReKV, where a block is a
    frame); ``chunk_frames`` counts frames.

    Attributes:
        window_tokens: tokens of the sliding window each encoded token attends to (besides
            the sinks). ``None`` = unbounded (full causal attention while encoding).
        topk_frames: blocks retrieved per layer for each question (LLaVA-OV: frames; Qwen:
            2-frame temporal patches). ``None`` = every block.
        retrieval: how frames are scored at question time: ``"internal"`` with the model's
            own pre-RoPE queries and keys, per layer; ``"external"`` by the cosine between
            open_clip embeddings of the question and of each frame (same frames on every
            layer); ``"hybrid"`` fuses both per layer (``hybrid_rule``, ``hybrid_alpha``).
        score: ``"dot"`` (raw dot product, ReKV's code) or ``"cosine"`` (ReKV's paper).
        query_pool: how the question's tokens score a frame (internal and hybrid):
            ``"mean"`` (ReKV: the mean query), ``"max"`` (each token's scores z-normalised
            over frames, max over tokens; default) or ``"head"`` (the same per query head);
            see ``lmms_rekv.retrieval.scoring``. ReKV as published: ``query_pool="mean",
            query_span="prompt", layer_frames="own", recent_frames=0``; the defaults are the variant the
            retrieval study measured best on the trained miniature (docs/results/miniature.md).
        query_span: which prefill tokens' queries score frames: ``"prompt"`` (ReKV: the
            question and the rest of the chat template after it) or ``"question"`` (the
            question's own tokens).
        layer_frames: ``"own"`` (ReKV: every layer retrieves with its own queries) or
            ``"first"`` (the first layer's frames serve every layer; default).
        chunk_frames: the largest number of frames encoded in one language-model forward,
            and the grid the stream is committed on: frames ``[k*C, (k+1)*C)`` are stored
            by one forward once all have arrived (or ``flush`` closes the chunk early), so
            the stored KV does not depend on how frames were split across ``add_frames``
            calls or when questions came.
        eager: encode the frames of the incomplete last chunk as soon as they arrive into a
            provisional tail that questions use (so a question never waits for a backlog);
            they are encoded again when their chunk is complete (at most twice the encoding
            work for frames that trickle in; none extra when a whole video is added and
            flushed). ``False``: the tail is encoded when a question needs it.
        offload: where every frame's KV goes: ``"cpu"`` (pinned RAM when a GPU is used),
            ``"device"`` (kept on the model's device; for small streams and tests) or
            ``"disk"`` (RAM up to ``ram_budget_bytes``, older frames in segment files under
            ``offload_dir``).
        summary_tier: where the per-frame retrieval index lives -- each frame's mean key per
            layer (``layers * kv_heads * head_dim * 4`` bytes per frame) and, for external or
            hybrid retrieval, its embedding: ``"device"`` (default; scored on the model's
            device) or ``"cpu"`` (host RAM; the question's queries are copied there and
            scored on the CPU): device memory then stays flat however long the stream
            (the index of a 10-hour stream is ~1 GiB for a 7B model).
        offload_dir: parent folder of the disk tier's per-session folders (default: the
            system temporary folder).
        ram_budget_bytes: RAM the disk tier may hold of offloaded KV before spilling.
        kv_quant: ``None`` (exact), ``"int8"`` or ``"int4"``: offloaded blocks are stored
            quantized (keys per channel, values per token) and dequantized when loaded.
        query_block_tokens: queries per attention call while encoding (bounds the mask to
            block x (window + block); results do not depend on it). ``None`` = 128 on CPU
            (fastest measured there), 2048 on CUDA.
        block_tokens: tokens per stored block of the model (196 for LLaVA-OneVision; formerly
            ``frame_tokens``, still accepted with a DeprecationWarning).
            ``None`` (default) = not known yet: the loader sets the checkpoint's value and
            only then checks ``topk_frames`` against the QA budget (so a 4-token model may
            retrieve more frames than a 196-token one).
        frame_size: ``(height, width)`` every frame is resized to, for families whose tokens
            per frame depend on the resolution (Qwen2-VL: multiples of 28; the resolution
            is fixed once per engine, so every block of a stream has the same size).
            ``None`` = the family's default (Qwen2-VL: the largest square of side <= 448
            within the processor's pixel budget); must stay ``None`` for LLaVA-OneVision.
        position_strategy: how retrieved blocks are positioned at a question (see
            ``lmms_rekv.patches.base.POSITION_STRATEGIES``): ``"layout"`` (default: the
            family's own position rule re-run over [sinks, retrieved blocks, text]),
            ``"original"``, ``"consecutive_t"`` (M-RoPE families) or ``"1d"`` (ReKV's 1-D
            numbering; on LLaVA-OV the same as ``"layout"``).
        qa_budget_tokens: most context tokens (sinks + retrieved frames + question +
            answer) a question may use; ``None`` = the model's ``max_position_embeddings``.
        qa_reserve_tokens: tokens kept free in the QA budget for the question and answer.
        clip_model: open_clip model name, a path to an open_clip model-config JSON, or
            ``"miniature"`` (the embedder trained on the miniature's world; its weights
            come with it and ``clip_pretrained`` is ignored).
        clip_pretrained: open_clip pretrained tag or local checkpoint; None = random weights.
        clip_batch_size: frames per embedding batch.
        hybrid_rule: ``"zscore"`` (mix z-scored scores) or ``"rrf"`` (reciprocal-rank fusion).
        hybrid_alpha: weight of the external score in hybrid mode (0..1).
        adaptive: ``None`` (load ``topk_frames``) or ``"mass"``: the fewest frames covering
            ``adaptive_mass`` of ``softmax(zscore(score) / adaptive_temperature)``, at least
            ``adaptive_min_frames`` and at most ``topk_frames``.
        recent_frames: the last N blocks are always in the answer's context, inside
            ``topk_frames`` (they count in it and in ``Answer.selected``). Default 1: the
            present moment -- on the video-world miniature it took questions about what is on
            screen now from 42-69 % to 95-99 % (top-4); about the past it costs a slot of the
            budget (-4 to -5 points at top-4 on the tiled world, -0.5 to -2.6 at top-8;
            docs/results/miniature.md). 0: retrieval alone, as ReKV published it.
        group_frames: frames are scored and loaded in groups of this many consecutive frames.
        token_reduction: ``None`` (default: every token of a block is stored) or how a block's
            tokens are cut to ``token_keep`` of them before offload, training-free (see
            ``lmms_rekv.storage.reduce``): ``"temporal"`` keeps the tokens that changed most
            since the same place of the previous frame, ``"salient"`` those with the largest
            values, ``"merge"`` merges the most similar tokens of the block. The stored KV,
            the retrieval summaries, the question's position layout and ``stats()`` count the
            tokens kept; the encoding window keeps every token. 1-D families (LLaVA-OV) only.
        token_keep: fraction of a block's tokens kept with ``token_reduction`` (0 < keep <= 1;
            at least one token). Default 1/2: with ``"temporal"`` and int4, 13 % of the bytes
            for 3.6 points (6.8 with ``recent_frames=1``) on the video-world miniature, where
            1/4 lost 9-16 (docs/results/accuracy-per-byte.md).
        block_score: what internal retrieval scores a block by: ``"mean"`` (default: its mean
            pre-RoPE key, ReKV's summary) or ``"tokens"`` (its best stored token: every stored
            key is read at each question -- for measuring local content, not for long streams).
        hub_correction: internal retrieval corrected for what a block scores whatever the
            question (a *hub*, e.g. an empty frame every question ranks high): None (off),
            ``"center"`` (minus the block's mean z-score over the question's tokens) or
            ``"template"`` (minus its mean z-score over the chat template's tokens after the
            question: a neutral prompt from the same prefill). No extra pass over the stored KV
            (``lmms_rekv.retrieval.scoring``).
    """

    window_tokens: Optional[int] = 15_000
    topk_frames: Optional[int] = 64
    retrieval: str = "internal"
    score: str = "dot"
    query_pool: str = "max"
    query_span: str = "question"
    layer_frames: str = "first"
    chunk_frames: int = 64
    eager: bool = True
    offload: str = "cpu"
    summary_tier: str = "device"
    offload_dir: Optional[str] = None
    ram_budget_bytes: int = 4 * 1024**3
    kv_quant: Optional[str] = None
    query_block_tokens: Optional[int] = None
    block_tokens: Optional[int] = None
    frame_tokens: dataclasses.InitVar[Optional[int]] = None  # deprecated name of block_tokens
    frame_size: Optional[Tuple[int, int]] = None
    position_strategy: str = "layout"
    qa_budget_tokens: Optional[int] = 32_768
    qa_reserve_tokens: int = 512
    clip_model: str = "ViT-SO400M-14-SigLIP-384"
    clip_pretrained: Optional[str] = "webli"
    clip_batch_size: int = 32
    hybrid_rule: str = "zscore"
    hybrid_alpha: float = 0.5
    adaptive: Optional[str] = None
    adaptive_mass: float = 0.9
    adaptive_temperature: float = 0.1
    adaptive_min_frames: int = 1
    recent_frames: int = 1
    group_frames: int = 1
    token_reduction: Optional[str] = None
    token_keep: float = 0.5
    block_score: str = "mean"
    hub_correction: Optional[str] = None

    def __post_init__(self, frame_tokens: Optional[int] = None) -> None:
        if frame_tokens is not None:
            warnings.warn("ReKVConfig(frame_tokens=...) is deprecated; use block_tokens (tokens per stored block)",
                          DeprecationWarning, stacklevel=3)
            object.__setattr__(self, "block_tokens", frame_tokens if self.block_tokens is None else self.block_tokens)
        _positive("window_tokens", self.window_tokens, optional=True)
        _positive("topk_frames", self.topk_frames, optional=True)
        _positive("chunk_frames", self.chunk_frames)
        if self.token_reduction is not None:
            REDUCERS.check(self.token_reduction)
        _choice("block_score", self.block_score, BLOCK_SCORES)
        _choice("hub_correction", self.hub_correction, HUB_CORRECTIONS)
        if self.hub_correction == "center" and self.query_pool == "mean":
            raise ValueError("hub_correction='center' needs per-token scores (query_pool 'max' or 'head'); "
                             "query_pool='mean' scores one pooled query")
        if self.hub_correction == "template" and self.query_span != "question":
            raise ValueError("hub_correction='template' needs query_span='question' (the template's tokens are the neutral prompt)")
        if not (isinstance(self.token_keep, (int, float)) and 0 < self.token_keep <= 1):
            raise ValueError(f"token_keep must be in (0, 1], got {self.token_keep!r}")
        if not isinstance(self.eager, bool):
            raise ValueError(f"eager must be True or False, got {self.eager!r}")
        _positive("query_block_tokens", self.query_block_tokens, optional=True)
        _positive("block_tokens", self.block_tokens, optional=True)
        _choice("position_strategy", self.position_strategy, POSITION_STRATEGIES)
        if self.frame_size is not None:
            size = tuple(self.frame_size)
            if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
                raise ValueError(f"frame_size must be (height, width) positive ints, got {self.frame_size!r}")
            object.__setattr__(self, "frame_size", size)
        _positive("qa_budget_tokens", self.qa_budget_tokens, optional=True)
        if not isinstance(self.qa_reserve_tokens, int) or self.qa_reserve_tokens < 0:
            raise ValueError(f"qa_reserve_tokens must be an int >= 0, got {self.qa_reserve_tokens!r}")
        RETRIEVERS.check(self.retrieval)
        _choice("score", self.score, SCORES)
        _choice("query_pool", self.query_pool, QUERY_POOLS)
        _choice("query_span", self.query_span, QUERY_SPANS)
        _choice("layer_frames", self.layer_frames, LAYER_FRAMES)
        BACKENDS.check(self.offload)
        _choice("summary_tier", self.summary_tier, SUMMARY_TIERS)
        _choice("kv_quant", self.kv_quant, KV_QUANT)
        _positive("ram_budget_bytes", self.ram_budget_bytes)
        _choice("hybrid_rule", self.hybrid_rule, FUSION_RULES)
        _choice("adaptive", self.adaptive, ADAPTIVE_POLICIES)
        _positive("clip_batch_size", self.clip_batch_size)
        _positive("adaptive_min_frames", self.adaptive_min_frames)
        _positive("group_frames", self.group_frames)
        _unit("hybrid_alpha", self.hybrid_alpha, closed_low=True)
        _unit("adaptive_mass", self.adaptive_mass, closed_low=False)
        if not isinstance(self.adaptive_temperature, (int, float)) or not self.adaptive_temperature > 0:
            raise ValueError(f"adaptive_temperature must be > 0, got {self.adaptive_temperature!r}")
        if not isinstance(self.recent_frames, int) or self.recent_frames < 0:
            raise ValueError(f"recent_frames must be an int >= 0, got {self.recent_frames!r}")
        if self.topk_frames is not None:
            if self.recent_frames > self.topk_frames:
                raise ValueError(f"recent_frames={self.recent_frames} exceeds topk_frames={self.topk_frames}")
            free = self.topk_frames - self.recent_frames
            if free and self.group_frames > free:
                raise ValueError(f"group_frames={self.group_frames} does not fit the {free} frames topk_frames leaves after recent_frames")
        if self.topk_frames is not None and self.qa_budget_tokens is not None and self.block_tokens is not None:
            need = self.topk_frames * self.stored_tokens(self.block_tokens) + self.qa_reserve_tokens
            if need > self.qa_budget_tokens:
                raise ValueError(
                    f"topk_frames={self.topk_frames} blocks x {self.stored_tokens(self.block_tokens)} tokens + "
                    f"{self.qa_reserve_tokens} reserved = {need} tokens do not fit the QA budget "
                    f"of {self.qa_budget_tokens} tokens; lower topk_frames or raise qa_budget_tokens"
                )

    def stored_tokens(self, block_tokens: int) -> int:
        """Tokens stored per block of ``block_tokens`` (fewer with ``token_reduction``)."""
        if self.token_reduction is None:
            return block_tokens
        return max(1, min(block_tokens, round(self.token_keep * block_tokens)))

    @property
    def uses_embeddings(self) -> bool:
        """Whether frames and questions are embedded with the open_clip model."""
        return self.retrieval in ("external", "hybrid")

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


def _positive(name: str, value, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        kind = "a positive int or None" if optional else "a positive int"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


def _unit(name: str, value, closed_low: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 1
    ok = ok and (value >= 0 if closed_low else value > 0)
    if not ok:
        raise ValueError(f"{name} must be in {'[0, 1]' if closed_low else '(0, 1]'}, got {value!r}")


def _choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
