"""Questions on a session: retrieval of blocks, the question's context, decoding and
log-likelihood (a mixin of ``ReKVSession``; it never modifies the stream)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

from ..retrieval.selector import make_selector, policy_of
from .encoder import StreamState
from .feeding import settled
from .generation import GenerationSettings, cut_at_stop, next_token
from .qa import QAStep

logger = logging.getLogger(__name__)


@dataclass
class Answer:
    """One answer. ``selected[l]`` holds the frames layer ``l`` attended to (time order);
    ``logits`` the fp32 next-token logits ``(V,)`` of every decoding step."""

    text: str
    token_ids: List[int]
    selected: List[torch.Tensor]
    logits: List[torch.Tensor] = field(default_factory=list)
    context_tokens: int = 0
    first_token_seconds: float = 0.0  # question start -> first token chosen (prefill + retrieval)
    seconds: float = 0.0  # question start -> last token


class QuestionAnswering:
    """Questions answered from the stream so far; many per stream, at any point."""

    def ask(self, question: str, max_new_tokens: int = 16, frame_limit: Optional[int] = None, **generation) -> str:
        """Answer ``question`` about the frames so far; greedy unless told otherwise.

        ``frame_limit=n`` answers as of the ``n``-th frame: only frames ``0..n-1`` can be
        retrieved (their KV never depends on later frames: encoding is causal).
        ``generation`` takes the fields of ``GenerationSettings`` (do_sample, temperature,
        top_p, stop, eos_token_ids, seed). Returns the answer text without surrounding
        whitespace (``answer(...).text`` is the decoded text as is)."""
        return self.answer(question, max_new_tokens=max_new_tokens, frame_limit=frame_limit, **generation).text.strip()

    @settled
    @torch.inference_mode()
    def answer(
        self, question: str, max_new_tokens: int = 16, return_logits: bool = False, frame_limit: Optional[int] = None, **generation
    ) -> Answer:
        """Like ``ask`` but returns the tokens, the per-layer selected frames and optionally
        the logits of every step."""
        start = time.perf_counter()
        settings = self.engine.generation_settings(max_new_tokens=max_new_tokens, **generation)
        step, embeds, position = self._prepare(question, settings.max_new_tokens, frame_limit=frame_limit)
        answer = self._decode(step, embeds, position, settings, return_logits, start)
        answer.seconds = time.perf_counter() - start
        return answer

    @settled
    @torch.inference_mode()
    def loglikelihood(self, question: str, continuation: str, frame_limit: Optional[int] = None) -> Tuple[float, bool]:
        """Log-probability of ``continuation`` as the answer to ``question`` (frames retrieved
        with the question alone), and whether greedy decoding would produce it."""
        bb = self.backbone
        cont = bb.tokenize(continuation)
        if not cont:
            raise ValueError("continuation must not be empty")
        step, embeds, position = self._prepare(question, len(cont), scored=len(cont), frame_limit=frame_limit)
        embeds = torch.cat([embeds, bb.embed(cont)], dim=1)
        first = embeds.shape[1] - len(cont) - 1  # position predicting the first continuation token
        with bb.routed(step):
            hidden = self._forward(step, embeds, position)
        logits = bb.model.lm_head(hidden[0, first:-1]).float()
        logprobs = torch.log_softmax(logits, dim=-1)
        target = torch.tensor(cont, device=logits.device)
        total = float(logprobs.gather(1, target[:, None]).sum())
        return total, bool((logits.argmax(dim=-1) == target).all())

    def _prepare(self, question: str, new_tokens: int, scored: int = 0, frame_limit: Optional[int] = None):
        """Validate, encode what the tail lacks, and build the QA handler, the prefill embeddings
        (``Backbone.suffix_embeds``: the text after the video) and the first prefill position."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        if self.frames == 0:
            raise RuntimeError("no frames in this session yet: call add_frames() before ask()")
        if frame_limit is not None and frame_limit < 1:
            raise ValueError(f"frame_limit must be >= 1, got {frame_limit}")
        bb = self.backbone
        self._encode_pending(lambda: False, tail=True)  # the tail (chunks only where an earlier encode failed)
        state = self._tail or self.state
        if frame_limit is not None and frame_limit < self.frames:  # the complete blocks before the limit
            blocks = min(frame_limit // bb.frames_per_block, state.store.blocks)
        else:  # every block, an incomplete last one padded for this question
            if self._pending_frames > self._tail_frames:
                state = self._padded_state(state)
            blocks = state.store.blocks
        if blocks < 1:
            raise RuntimeError(f"no complete block of {bb.frames_per_block} frames before frame_limit={frame_limit}")
        suffix = bb.suffix_ids(question)
        embeds = bb.suffix_embeds(suffix)  # (1, offset + len(suffix), hidden)
        offset = bb.suffix_offset()
        context = state.sinks + policy_of(self.config).budget(blocks) * state.store.block_tokens
        prefill = embeds.shape[1] + scored
        self._check_budget(context + prefill + new_tokens)
        selector = self._selector(question, blocks, state.store)
        start, end = bb.question_span(question) if self.config.query_span == "question" else (0, len(suffix))
        padded, strategy = state.padded_block, self.config.position_strategy
        step = QAStep(
            state, bb.rope, self._positions(state, strategy, padded),
            selector, new_tokens, question_offset=offset + start, question_end=offset + end,
            template_end=offset + len(suffix) if self.config.hub_correction == "template" else None,
            fixed=getattr(selector, "fixed", None), by_index=bb.positions_use_indices(strategy),
            rows=lambda blocks, device: bb.block_rows(blocks, device, fps=self.fps, padded=padded),
        )
        return step, embeds, context

    def _positions(self, state: StreamState, strategy: str, padded):
        """The context positions callback of a question (``qa.ContextPositions``); with token
        reduction a block holds only its kept tokens (``stored_tokens``)."""
        bb, stored = self.backbone, state.store.block_tokens
        reduced = {} if stored == bb.block_tokens else {"stored_tokens": stored}
        return lambda *a: bb.context_positions(*a, fps=self.fps, strategy=strategy, padded=padded, **reduced)

    def _padded_state(self, state: StreamState) -> StreamState:
        """``state`` plus the incomplete last block (frames past the tail), padded by
        repeating the last frame (as the vanilla processor pads), encoded into a fork for
        one question: the waiting frames still wait for their partners."""
        if not self._prefix_done:
            self._encode_prefix()
        partial = self._pending_range(self._tail_frames, self._pending_frames)
        missing = self.backbone.frames_per_block - partial.shape[0]
        pixels = torch.cat([partial, partial[-1:].expand(missing, *partial.shape[1:])])
        fork = self._fork(state)
        fork.padded_block = fork.store.blocks
        self._encode(pixels, fork)
        return fork

    def _block_embeddings(self, blocks: int) -> torch.Tensor:
        """``(blocks, E)`` external embeddings per block (frames of a block averaged and
        re-normalised; an incomplete last block padded by repeating its last frame)."""
        per_block = self.backbone.frames_per_block
        rows = self.embeddings
        if per_block == 1:
            return rows[:blocks]
        need = blocks * per_block
        if rows.shape[0] < need:
            rows = torch.cat([rows, rows[-1:].expand(need - rows.shape[0], -1)])
        pooled = rows[:need].view(blocks, per_block, -1).mean(dim=1)
        return pooled / pooled.norm(dim=-1, keepdim=True)

    def _selector(self, question: str, blocks: int, store):
        """(layer, question queries (Hq, T, D)) -> indices among the first ``blocks`` blocks
        (the policy is ``lmms_rekv.retrieval.selector``'s; the session gives it the scores' sources)."""
        def external_scores() -> torch.Tensor:
            rows = self._block_embeddings(blocks)
            return rows @ self.engine.embedder.embed_text(question).to(rows.device)

        def token_keys(layer: int) -> torch.Tensor:  # every stored token's key: a full read of the layer
            keys, _ = store.gather(layer, torch.arange(blocks), self.engine.device)
            return keys.view(blocks, store.block_tokens, store.kv_heads, store.head_dim)

        return make_selector(self.config, lambda layer: store.summaries(layer)[:blocks], external_scores, token_keys)

    def _check_budget(self, tokens: int) -> None:
        budget = self.config.qa_budget_tokens
        if budget is not None and tokens > budget:
            raise ValueError(f"question needs {tokens} context tokens, over the QA budget of {budget}")

    def _forward(self, step: QAStep, embeds: torch.Tensor, position: int) -> torch.Tensor:
        """``(1, T, hidden)`` last hidden states of ``embeds`` (call inside ``routed(step)``).
        The positions passed to the model are nominal: the QA handler rotates pre-RoPE
        queries and keys at each layer's own context positions."""
        bb = self.backbone
        positions = bb.text_positions(position, embeds.shape[1], embeds.device)
        return bb.text_model(inputs_embeds=embeds, position_ids=bb.position_ids(positions), use_cache=False).last_hidden_state

    def _decode(self, step: QAStep, embeds, position: int, settings: GenerationSettings, return_logits: bool, start: float) -> Answer:
        bb = self.backbone
        generator = None
        if settings.do_sample and settings.seed is not None:
            generator = torch.Generator().manual_seed(settings.seed)
        tokens: List[int] = []
        all_logits: List[torch.Tensor] = []
        text = ""
        with bb.routed(step):
            for i in range(settings.max_new_tokens):
                hidden = self._forward(step, embeds, position)
                logits = bb.model.lm_head(hidden[:, -1]).float()[0]
                if return_logits:
                    all_logits.append(logits.cpu())
                token = next_token(logits, settings, generator)
                if i == 0:
                    first = time.perf_counter() - start
                if token in settings.eos_token_ids:
                    break
                tokens.append(token)
                if settings.stop:
                    text, stopped = cut_at_stop(bb.tokenizer.decode(tokens, skip_special_tokens=True), settings.stop)
                    if stopped:
                        break
                position += embeds.shape[1]
                step.decoding = True
                embeds = bb.embed([token])
        if not settings.stop:
            text = bb.tokenizer.decode(tokens, skip_special_tokens=True)
        return Answer(
            text=text, token_ids=tokens, selected=step.selected, logits=all_logits, context_tokens=position,
            first_token_seconds=first,
        )

    # -- lifetime -------------------------------------------------------------------------
