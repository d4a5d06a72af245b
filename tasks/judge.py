"""Optional GPT judge for open-ended answers (``lmms_rekv.tasks.judge``).

Configured by environment variables, used only when ``REKV_JUDGE_MODEL`` is set:
``REKV_JUDGE_MODEL`` (e.g. ``gpt-4o-mini``), ``OPENAI_API_KEY``, optional
``OPENAI_BASE_URL`` for any OpenAI-compatible server. The prompt follows the
ActivityNet-QA / ReKV protocol: a yes/no correctness verdict and a 0-5 score."""

from __future__ import annotations

import ast
import json
import logging
import os
import re
from typing import Callable, Optional, Tuple

logger = logging.getLogger(__name__)

SYSTEM = (
    "You evaluate answers to questions about videos. Compare the predicted answer with the "
    "correct answer and judge whether it is meaningfully correct; synonyms and paraphrases "
    "count as correct. Reply only with a Python dict such as {'pred': 'yes', 'score': 4}, "
    "where pred is 'yes' or 'no' and score is an integer from 0 to 5."
)


def enabled() -> bool:
    return bool(os.environ.get("REKV_JUDGE_MODEL"))


def parse_verdict(text: str) -> Tuple[Optional[bool], Optional[float]]:
    """(correct, score) from the judge's reply; (None, None) if it cannot be read."""
    match = re.search(r"\{.*\}", text or "", re.S)
    if not match:
        return None, None
    try:
        verdict = ast.literal_eval(match.group(0))
    except (ValueError, SyntaxError):
        try:
            verdict = json.loads(match.group(0))
        except ValueError:
            return None, None
    pred = str(verdict.get("pred", "")).strip().lower()
    score = verdict.get("score")
    correct = True if pred.startswith("yes") else False if pred.startswith("no") else None
    return correct, (float(score) if isinstance(score, (int, float)) else None)


def _openai_call(system: str, user: str) -> str:
    from openai import OpenAI

    client = OpenAI()
    reply = client.chat.completions.create(
        model=os.environ["REKV_JUDGE_MODEL"], temperature=0,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
    )
    return reply.choices[0].message.content or ""


def judge(question: str, answer: str, prediction: str, call: Optional[Callable[[str, str], str]] = None) -> Tuple[Optional[bool], Optional[float]]:
    """Judge one prediction; (None, None) when no judge is configured or the call fails."""
    if call is None:
        if not enabled():
            return None, None
        call = _openai_call
    user = f"Question: {question}\nCorrect answer: {answer}\nPredicted answer: {prediction}"
    try:
        return parse_verdict(call(SYSTEM, user))
    except Exception as exc:  # a judge outage must not end the evaluation
        logger.warning("judge call failed: %s", exc)
        return None, None
