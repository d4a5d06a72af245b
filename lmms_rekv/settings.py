"""The settings each layer owns: encoding, storage, retrieval and answering, as frozen dataclasses
that validate their own fields, with their allowed values as ``Literal`` types.

Torch-free: the configuration builds them and the layers that use the values import them from
here (one list per setting, no copies kept in sync by comments). ``ReKVConfig`` keeps every
documented flat name; ``config.encoding_settings`` (and ``storage_settings``,
``retrieval_settings``, ``answering_settings``) are its fields grouped by the layer that owns
them. ``retrieval``, ``token_reduction`` and ``offload`` take the names registered in
``lmms_rekv.registry``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional, Tuple, get_args

from .registry import BACKENDS, REDUCERS, RETRIEVERS

Score = Literal["dot", "cosine"]
QueryPool = Literal["mean", "max", "head"]
QuerySpan = Literal["prompt", "question"]
LayerFrames = Literal["own", "first"]
FusionRule = Literal["zscore", "rrf"]
Adaptive = Literal["mass"]
BlockScore = Literal["mean", "tokens"]
HubCorrection = Literal["center", "template"]
SummaryTier = Literal["device", "cpu"]
KVQuant = Literal["int8", "int4"]
PositionStrategy = Literal["layout", "original", "consecutive_t", "1d"]

SCORES = get_args(Score)
QUERY_POOLS = get_args(QueryPool)
QUERY_SPANS = get_args(QuerySpan)
LAYER_FRAMES = get_args(LayerFrames)
FUSION_RULES = get_args(FusionRule)
ADAPTIVE_POLICIES = (None, *get_args(Adaptive))
BLOCK_SCORES = get_args(BlockScore)
HUB_CORRECTIONS = (None, *get_args(HubCorrection))
SUMMARY_TIERS = get_args(SummaryTier)
KV_QUANT = (None, *get_args(KVQuant))
POSITION_STRATEGIES = get_args(PositionStrategy)


@dataclass(frozen=True)
class EncodingSettings:
    """How frames are encoded (``lmms_rekv.engine``): the window, the chunk grid, the tail.

    Attributes:
        window_tokens: tokens of the sliding window each encoded token attends to (besides
            the sinks). ``None`` = unbounded (full causal attention while encoding).
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
    """

    window_tokens: Optional[int] = 15_000
    chunk_frames: int = 64
    eager: bool = True
    query_block_tokens: Optional[int] = None
    block_tokens: Optional[int] = None
    frame_size: Optional[Tuple[int, int]] = None

    def __post_init__(self) -> None:
        positive("window_tokens", self.window_tokens, optional=True)
        positive("chunk_frames", self.chunk_frames)
        if not isinstance(self.eager, bool):
            raise ValueError(f"eager must be True or False, got {self.eager!r}")
        positive("query_block_tokens", self.query_block_tokens, optional=True)
        positive("block_tokens", self.block_tokens, optional=True)
        if self.frame_size is not None:
            size = tuple(self.frame_size)
            if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
                raise ValueError(f"frame_size must be (height, width) positive ints, got {self.frame_size!r}")
            object.__setattr__(self, "frame_size", size)


@dataclass(frozen=True)
class StorageSettings:
    """Where and how blocks are stored (``lmms_rekv.storage``).

    Attributes:
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
    """

    offload: str = "cpu"
    summary_tier: SummaryTier = "device"
    offload_dir: Optional[str] = None
    ram_budget_bytes: int = 4 * 1024**3
    kv_quant: Optional[KVQuant] = None
    token_reduction: Optional[str] = None
    token_keep: float = 0.5

    def __post_init__(self) -> None:
        BACKENDS.check(self.offload)
        choice("summary_tier", self.summary_tier, SUMMARY_TIERS)
        choice("kv_quant", self.kv_quant, KV_QUANT)
        positive("ram_budget_bytes", self.ram_budget_bytes)
        if self.token_reduction is not None:
            REDUCERS.check(self.token_reduction)
        if not (isinstance(self.token_keep, (int, float)) and 0 < self.token_keep <= 1):
            raise ValueError(f"token_keep must be in (0, 1], got {self.token_keep!r}")

    def stored_tokens(self, block_tokens: int) -> int:
        """Tokens stored per block of ``block_tokens`` (fewer with ``token_reduction``)."""
        if self.token_reduction is None:
            return block_tokens
        return max(1, min(block_tokens, round(self.token_keep * block_tokens)))


@dataclass(frozen=True)
class RetrievalSettings:
    """Which blocks a question retrieves (``lmms_rekv.retrieval``).

    Attributes:
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
        block_score: what internal retrieval scores a block by: ``"mean"`` (default: its mean
            pre-RoPE key, ReKV's summary) or ``"tokens"`` (its best stored token: every stored
            key is read at each question -- for measuring local content, not for long streams).
        hub_correction: internal retrieval corrected for what a block scores whatever the
            question (a *hub*, e.g. an empty frame every question ranks high): None (off),
            ``"center"`` (minus the block's mean z-score over the question's tokens) or
            ``"template"`` (minus its mean z-score over the chat template's tokens after the
            question: a neutral prompt from the same prefill). No extra pass over the stored KV
            (``lmms_rekv.retrieval.scoring``).

        topk_frames: blocks retrieved per layer for each question (LLaVA-OV: frames; Qwen:
            2-frame temporal patches). ``None`` = every block.
        recent_frames: the last N blocks are always in the answer's context, inside
            ``topk_frames`` (they count in it and in ``Answer.selected``). Default 1: the
            present moment -- on the video-world miniature it took questions about what is on
            screen now from 42-69 % to 95-99 % (top-4); about the past it costs a slot of the
            budget (-4 to -5 points at top-4 on the tiled world, -0.5 to -2.6 at top-8;
            docs/results/miniature.md). 0: retrieval alone, as ReKV published it.
        group_frames: frames are scored and loaded in groups of this many consecutive frames.
        adaptive: ``None`` (load ``topk_frames``) or ``"mass"``: the fewest frames covering
            ``adaptive_mass`` of ``softmax(zscore(score) / adaptive_temperature)``, at least
            ``adaptive_min_frames`` and at most ``topk_frames``.
        hybrid_rule: ``"zscore"`` (mix z-scored scores) or ``"rrf"`` (reciprocal-rank fusion).
        hybrid_alpha: weight of the external score in hybrid mode (0..1).
        clip_model: open_clip model name, a path to an open_clip model-config JSON, or
            ``"miniature"`` (the embedder trained on the miniature's world; its weights
            come with it and ``clip_pretrained`` is ignored).
        clip_pretrained: open_clip pretrained tag or local checkpoint; None = random weights.
        clip_batch_size: frames per embedding batch.
    """

    retrieval: str = "internal"
    score: Score = "dot"
    query_pool: QueryPool = "max"
    query_span: QuerySpan = "question"
    layer_frames: LayerFrames = "first"
    block_score: BlockScore = "mean"
    hub_correction: Optional[HubCorrection] = None
    topk_frames: Optional[int] = 64
    recent_frames: int = 1
    group_frames: int = 1
    adaptive: Optional[Adaptive] = None
    adaptive_mass: float = 0.9
    adaptive_temperature: float = 0.1
    adaptive_min_frames: int = 1
    hybrid_rule: FusionRule = "zscore"
    hybrid_alpha: float = 0.5
    clip_model: str = "ViT-SO400M-14-SigLIP-384"
    clip_pretrained: Optional[str] = "webli"
    clip_batch_size: int = 32

    def __post_init__(self) -> None:
        RETRIEVERS.check(self.retrieval)
        for name, allowed in (("score", SCORES), ("query_pool", QUERY_POOLS), ("query_span", QUERY_SPANS),
                              ("layer_frames", LAYER_FRAMES), ("block_score", BLOCK_SCORES), ("hub_correction", HUB_CORRECTIONS),
                              ("hybrid_rule", FUSION_RULES), ("adaptive", ADAPTIVE_POLICIES)):
            choice(name, getattr(self, name), allowed)
        if self.hub_correction == "center" and self.query_pool == "mean":
            raise ValueError("hub_correction='center' needs per-token scores (query_pool 'max' or 'head'); "
                             "query_pool='mean' scores one pooled query")
        if self.hub_correction == "template" and self.query_span != "question":
            raise ValueError("hub_correction='template' needs query_span='question' (the template's tokens are the neutral prompt)")
        positive("topk_frames", self.topk_frames, optional=True)
        for name in ("clip_batch_size", "adaptive_min_frames", "group_frames"):
            positive(name, getattr(self, name))
        unit("hybrid_alpha", self.hybrid_alpha, closed_low=True)
        unit("adaptive_mass", self.adaptive_mass, closed_low=False)
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

    @property
    def uses_embeddings(self) -> bool:
        """Whether frames and questions are embedded with the open_clip model."""
        return self.retrieval in ("external", "hybrid")


@dataclass(frozen=True)
class AnsweringSettings:
    """The question's context (``lmms_rekv.engine`` at question time).

    Attributes:
        position_strategy: how retrieved blocks are positioned at a question (see
            ``lmms_rekv.patches.base.POSITION_STRATEGIES``): ``"layout"`` (default: the
            family's own position rule re-run over [sinks, retrieved blocks, text]),
            ``"original"``, ``"consecutive_t"`` (M-RoPE families) or ``"1d"`` (ReKV's 1-D
            numbering; on LLaVA-OV the same as ``"layout"``).
        qa_budget_tokens: most context tokens (sinks + retrieved frames + question +
            answer) a question may use; ``None`` = the model's ``max_position_embeddings``.
        qa_reserve_tokens: tokens kept free in the QA budget for the question and answer.
    """

    position_strategy: PositionStrategy = "layout"
    qa_budget_tokens: Optional[int] = 32_768
    qa_reserve_tokens: int = 512

    def __post_init__(self) -> None:
        choice("position_strategy", self.position_strategy, POSITION_STRATEGIES)
        positive("qa_budget_tokens", self.qa_budget_tokens, optional=True)
        if not isinstance(self.qa_reserve_tokens, int) or self.qa_reserve_tokens < 0:
            raise ValueError(f"qa_reserve_tokens must be an int >= 0, got {self.qa_reserve_tokens!r}")


GROUPS = (EncodingSettings, StorageSettings, RetrievalSettings, AnsweringSettings)


def group_of(settings: type, values) -> object:
    """``settings`` built from the same-named attributes of ``values`` (a ``ReKVConfig``)."""
    return settings(**{f.name: getattr(values, f.name) for f in dataclasses.fields(settings)})


def positive(name: str, value, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        kind = "a positive int or None" if optional else "a positive int"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


def unit(name: str, value, closed_low: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 1
    ok = ok and (value >= 0 if closed_low else value > 0)
    if not ok:
        raise ValueError(f"{name} must be in {'[0, 1]' if closed_low else '(0, 1]'}, got {value!r}")


def choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
