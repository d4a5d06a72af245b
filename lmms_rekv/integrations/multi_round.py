"""lmms-eval's multi-round protocol (``generate_until_multi_round``) for the ReKV model.

A request carries ``(context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split)``;
``doc_to_text`` is already bound to the task's ``lmms_eval_specific_kwargs``. Round 0 asks
``context`` about ``doc_to_visual(doc)``; round ``i >= 1`` calls
``doc_to_text(doc, previous_output=..., round_idx=i, previous_round_info=...)``, which returns
``(visuals, context, terminal, round_results, round_info)``: the visuals of *that* round (None
or empty: the video of the round before). The answer of a document is the list of its rounds'
answers (``round_results`` of the terminal call when the task returns one).
"""

from __future__ import annotations

import logging
from typing import Any, List, Optional, Tuple

from tqdm.auto import tqdm

from lmms_rekv.integrations.requests import FATAL_ERRORS, Job, parse_visual
from lmms_rekv.integrations.streams import Streams

logger = logging.getLogger(__name__)

MAX_ROUNDS = 10_000  # a task whose doc_to_text never says "terminal" stops here
MAX_BAD_ROUNDS = 3  # consecutive doc_to_text errors after which a document is given up


def answer_all_rounds(runner, requests) -> List[List[str]]:
    """Per request, every round's answer (``runner``: an ``integrations.runner.Runner``);
    documents about one source are answered together so that they share its encoding."""
    results: List[List[str]] = [[] for _ in requests]
    streams = runner.streams()
    bar = tqdm(total=len(requests), disable=not runner.show_progress, desc="rekv_llava_ov multi-round")
    try:
        for index in sorted(range(len(requests)), key=lambda i: runner.first_video(requests[i])):
            results[index] = answer_rounds(runner, streams, index, requests[index])
            bar.update(1)
    finally:
        streams.close()
        bar.close()
    runner.log_streams(streams)
    return results


def answer_rounds(runner, streams: Streams, index: int, request) -> List[str]:
    """Every round's answer of one multi-round request (failed rounds: ``""``)."""
    context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
    job = Job(index, (context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split), None, "", 0.0, None)
    settings = runner.generation({k: v for k, v in dict(gen_kwargs or {}).items() if k != "until"})
    outputs: List[str] = []
    visual: Optional[Tuple[str, float, Optional[float]]] = None
    info, bad = None, 0
    try:
        job.doc = runner.doc_of(task, split, doc_id)
        visuals = doc_to_visual(job.doc)
    except FATAL_ERRORS:
        raise
    except Exception as exc:
        runner.record_failure(job, exc)
        visuals = None
    for round_idx in range(MAX_ROUNDS):
        if round_idx > 0:
            try:
                payload = doc_to_text(job.doc, previous_output=list(outputs), round_idx=round_idx, previous_round_info=info)
                bad = 0
            except FATAL_ERRORS:
                raise
            except Exception as exc:
                bad += 1
                runner.record_failure(job, RoundError(round_idx, exc))
                if bad >= MAX_BAD_ROUNDS:
                    break
                outputs.append("")
                continue
            visuals, context, terminal, results, info = _unpack(payload)
            if terminal:
                return list(results) if isinstance(results, (list, tuple)) else outputs
        try:
            if visuals:
                visual = _one(visuals, parse_visual)
            if visual is None:
                raise ValueError("no video for this round (rekv_llava_ov answers about videos)")
            job.path = visual[0]
            session, limit = streams.visit(*visual)
            outputs.append(session.ask(runner.question(context), frame_limit=limit, **settings).strip())
        except FATAL_ERRORS:
            raise
        except Exception as exc:  # one bad round must not end the document, nor the run
            runner.record_failure(job, RoundError(round_idx, exc))
            outputs.append("")
        if round_idx == 0 and doc_to_text is None:
            break
    return outputs


class RoundError(RuntimeError):
    """A failure in one round of a multi-round document (the message names the round)."""

    def __init__(self, round_idx: int, cause: Exception) -> None:
        super().__init__(f"round {round_idx}: {type(cause).__name__}: {cause}")


def _unpack(payload: Any):
    """``(visuals, context, terminal, results, info)`` of a round's ``doc_to_text`` answer; a
    plain string is a text-only round on the same video."""
    if isinstance(payload, tuple) and len(payload) == 5:
        return payload
    if isinstance(payload, str):
        return None, payload, False, None, None
    raise TypeError(f"doc_to_text returned {type(payload).__name__}; the multi-round protocol expects a 5-tuple")


def _one(visuals: Any, parse) -> Tuple[str, float, Optional[float]]:
    visuals = visuals if isinstance(visuals, (list, tuple)) else [visuals]
    if len(visuals) != 1:
        raise ValueError(f"rekv_llava_ov needs exactly one video per round, got {len(visuals)} visuals")
    return parse(visuals[0])
