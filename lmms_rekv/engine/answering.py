"""`Answerer`: the part of a session that answers -- retrieval of blocks, the question's context,
decoding and log-likelihood -- from a read-only `StreamView` of the stream (it never modifies
the stream)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch

from ..retrieval.selector import make_selector, policy_of
from .generation import GenerationSettings, cut_at_stop, next_token
from .qa import QAStep
from .writer import StreamView

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


class Answerer:
    """Questions answered from the stream so far; many per stream, at any point.

    ``view(frame_limit)`` gives the stream as a question sees it and ``frames()`` how many frames
    it holds (the session passes its writer's). ``config`` holds the question-time settings
    (``ReKVSession.question_settings`` swaps it for a while)."""

    def __init__(self, engine, view: Callable[[Optional[int]], StreamView], frames: Callable[[], int]) -> None:
        self.engine, self.config = engine, engine.config
        self._view, self._frames = view, frames

    @torch.inference_mode()
    def answer(
        self, question: str, max_new_tokens: int = 16, return_logits: bool = False, frame_limit: Optional[int] = None, **generation
    ) -> Answer:
        """The answer with its tokens, the per-layer selected blocks and optionally the logits of
        every step (see ``ReKVSession.answer``)."""
        start = time.perf_counter()
        settings = self.engine.generation_settings(max_new_tokens=max_new_tokens, **generation)
        view, step, embeds, position = self._prepare(question, settings.max_new_tokens, frame_limit=frame_limit)
        answer = self._decode(view.family, step, embeds, position, settings, return_logits, start)
        answer.seconds = time.perf_counter() - start
        return answer

    @torch.inference_mode()
    def loglikelihood(self, question: str, continuation: str, frame_limit: Optional[int] = None) -> Tuple[float, bool]:
        """Log-probability of ``continuation`` as the answer to ``question`` (frames retrieved
        with the question alone), and whether greedy decoding would produce it."""
        cont = self.engine.backbone.tokenize(continuation)
        if not cont:
            raise ValueError("continuation must not be empty")
        view, step, embeds, position = self._prepare(question, len(cont), scored=len(cont), frame_limit=frame_limit)
        bb = view.family
        embeds = torch.cat([embeds, bb.embed(cont)], dim=1)
        first = embeds.shape[1] - len(cont) - 1  # position predicting the first continuation token
        with bb.routed(step):
            hidden = self._forward(bb, embeds, position)
        logits = bb.model.lm_head(hidden[0, first:-1]).float()
        logprobs = torch.log_softmax(logits, dim=-1)
        target = torch.tensor(cont, device=logits.device)
        total = float(logprobs.gather(1, target[:, None]).sum())
        return total, bool((logits.argmax(dim=-1) == target).all())

    def _prepare(self, question: str, new_tokens: int, scored: int = 0, frame_limit: Optional[int] = None):
        """Validate, take the stream's view, and build the QA handler, the prefill embeddings
        (``Backbone.suffix_embeds``: the text after the video) and the first prefill position."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        if self._frames() == 0:
            raise RuntimeError("no frames in this session yet: call add_frames() before ask()")
        if frame_limit is not None and frame_limit < 1:
            raise ValueError(f"frame_limit must be >= 1, got {frame_limit}")
        view = self._view(frame_limit)
        bb, state, blocks = view.family, view.state, view.blocks
        if blocks < 1:
            raise RuntimeError(f"no complete block of {bb.frames_per_block} frames before frame_limit={frame_limit}")
        suffix = bb.prompt.suffix_ids(question)
        embeds = bb.suffix_embeds(suffix)  # (1, offset + len(suffix), hidden)
        offset = bb.suffix_offset()
        context = state.sinks + policy_of(self.config.retrieval_settings).budget(blocks) * state.store.block_tokens
        self._check_budget(context + embeds.shape[1] + scored + new_tokens)
        selector = self.selector(question, view)
        start, end = bb.prompt.question_span(question) if self.config.query_span == "question" else (0, len(suffix))
        strategy = self.config.position_strategy
        step = QAStep(
            state, bb.rope, self._positions(view, strategy),
            selector, new_tokens, question_offset=offset + start, question_end=offset + end,
            template_end=offset + len(suffix) if self.config.hub_correction == "template" else None,
            fixed=getattr(selector, "fixed", None), by_index=bb.positions_use_indices(strategy),
            rows=lambda blocks, device, kept: bb.block_rows(blocks, device, view.layout, kept),
        )
        return view, step, embeds, context

    def _positions(self, view: StreamView, strategy: str):
        """The context positions callback of a question (``qa.ContextPositions``); with token
        reduction a block holds only its kept tokens (``stored_tokens``; ``kept``: the slots they
        stand for, on families that position each where it stood)."""
        bb, layout, stored = view.family, view.layout, view.state.store.block_tokens
        reduced = {} if stored == layout.block_tokens else {"stored_tokens": stored}

        def positions(sinks: int, blocks: torch.Tensor, text: int, device: torch.device, kept: Optional[torch.Tensor]):
            return bb.context_positions(sinks, blocks, text, device, layout, strategy=strategy, kept=kept, **reduced)

        return positions

    def selector(self, question: str, view: StreamView):
        """(layer, question queries (Hq, T, D)) -> indices among the view's first ``blocks`` blocks
        (the policy is ``lmms_rekv.retrieval.selector``'s; the answerer gives it the scores' sources)."""
        store, blocks = view.state.store, view.blocks

        def external_scores() -> torch.Tensor:
            rows = view.block_embeddings(blocks)
            return rows @ self.engine.embedder.embed_text(question).to(rows.device)

        def token_keys(layer: int) -> torch.Tensor:  # every stored token's key: a full read of the layer
            keys, _ = store.gather(layer, torch.arange(blocks), self.engine.device)
            return keys.view(blocks, store.block_tokens, store.kv_heads, store.head_dim)

        return make_selector(self.config.retrieval_settings, blocks, lambda layer: store.summaries(layer)[:blocks],
                             external_scores, token_keys)

    def _check_budget(self, tokens: int) -> None:
        budget = self.config.qa_budget_tokens
        if budget is not None and tokens > budget:
            raise ValueError(f"question needs {tokens} context tokens, over the QA budget of {budget}")

    @staticmethod
    def _forward(bb, embeds: torch.Tensor, position: int) -> torch.Tensor:
        """``(1, T, hidden)`` last hidden states of ``embeds`` (call inside ``bb.routed(step)``).
        The positions passed to the model are nominal: the QA handler rotates pre-RoPE
        queries and keys at each layer's own context positions."""
        positions = bb.text_positions(position, embeds.shape[1], embeds.device)
        return bb.text_model(inputs_embeds=embeds, position_ids=bb.position_ids(positions), use_cache=False).last_hidden_state

    def _decode(self, bb, step: QAStep, embeds, position: int, settings: GenerationSettings, return_logits: bool, start: float) -> Answer:
        generator = None
        if settings.do_sample and settings.seed is not None:
            generator = torch.Generator().manual_seed(settings.seed)
        tokens: List[int] = []
        all_logits: List[torch.Tensor] = []
        text = ""
        with bb.routed(step):
            for i in range(settings.max_new_tokens):
                hidden = self._forward(bb, embeds, position)
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
