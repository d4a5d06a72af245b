"""Helpers shared by the task configs shipped with lmms-rekv (``lmms_rekv.tasks.common``).

Datasets that cannot be downloaded are read from a local folder named by an environment
variable; each task's YAML loads a one-line placeholder file and its ``process_docs``
replaces it with the real documents (so a missing folder fails with a clear message)."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from typing import Any, Dict, Iterable, List, Optional

logger = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJ"


def data_dir(env_var: str, what: str) -> str:
    """The folder named by ``env_var``; a clear error when unset or missing."""
    path = os.environ.get(env_var)
    if not path:
        raise RuntimeError(f"{what}: set {env_var} to the folder holding its annotations and videos (see docs/lmms-eval.md)")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what}: {env_var}={path} is not a folder")
    return path


def load_json(path: str) -> Any:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file not found: {path}")
    with open(path) as fh:
        if path.endswith(".jsonl"):
            return [json.loads(line) for line in fh if line.strip()]
        return json.load(fh)


def first_existing(folder: str, names: Iterable[str]) -> str:
    """The first of ``names`` present in ``folder`` (for the error: all of them)."""
    names = list(names)
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"none of {names} found in {folder}")


def video_file(folder: str, video_id: str, explicit: Optional[str] = None) -> str:
    """Path of a video: ``explicit`` (relative to ``folder``) or ``videos/<id>.<ext>``.
    A missing file is returned as is: the model records it as a failed document."""
    if explicit:
        return explicit if os.path.isabs(explicit) else os.path.join(folder, explicit)
    for ext in (".mp4", ".mkv", ".webm", ".avi", ".mov"):
        path = os.path.join(folder, "videos", f"{video_id}{ext}")
        if os.path.isfile(path):
            return path
    return os.path.join(folder, "videos", f"{video_id}.mp4")


def to_dataset(docs: List[Dict[str, Any]]):
    import datasets

    if not docs:
        raise ValueError("no documents found in the annotations")
    return datasets.Dataset.from_list(docs)


# -- multiple choice ---------------------------------------------------------------------
def format_options(options: List[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(options))


def answer_letter(answer: Any, options: List[str]) -> str:
    """The gold answer as a letter, from an index, a letter or the option's text."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        return LETTERS[answer]
    text = str(answer).strip()
    if len(text) == 1 and text.upper() in LETTERS[: len(options)]:
        return text.upper()
    if text.isdigit() and int(text) < len(options):
        return LETTERS[int(text)]
    for i, option in enumerate(options):
        if option.strip().lower() == text.lower():
            return LETTERS[i]
    raise ValueError(f"answer {answer!r} matches none of the options {options}")


def extract_letter(text: str, n_options: int = 4) -> str:
    """The option letter a free-form answer names ("B", "(B)", "B. red", "The answer is B")."""
    allowed = LETTERS[:n_options]
    match = re.search(rf"\b([{allowed}])\b", (text or "").strip())
    return match.group(1) if match else ""


def mc_doc_to_text(doc, lmms_eval_specific_kwargs=None) -> str:
    """``pre_prompt + question + lettered options + post_prompt`` for a doc with
    ``question`` and ``options``."""
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}\n{format_options(doc['options'])}\n{kwargs.get('post_prompt', '')}"


def mc_process_results(doc, results) -> Dict[str, float]:
    """Accuracy of the option letter named by the prediction against ``doc["answer"]``."""
    prediction = results[0] if results else ""
    return {"accuracy": float(extract_letter(prediction, len(doc["options"])) == doc["answer"])}


# -- open-ended scoring ------------------------------------------------------------------
def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 between two strings (lower-cased, punctuation removed)."""
    def tokens(s: str) -> List[str]:
        return re.sub(r"[^\w\s]", " ", (s or "").lower()).split()

    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum(min(pred.count(t), ref.count(t)) for t in set(pred))
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def mean_ignoring_none(values: List[Optional[float]]) -> float:
    """Mean of the values that are not None (NaN when none is: e.g. no judge configured)."""
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else math.nan
