"""ovobench_stream: OVO-Bench read from its full source videos, each encoded once.

lmms-eval's ``ovo_backward`` / ``ovo_realtime`` / ``ovo_forward`` give the model one chunk
file per question and per forward round (the source cut at that moment), so a stream is
cut -- and, without reuse, encoded -- once per question. These tasks ask the same questions
with the same prompts and scorers (imported from lmms-eval's ovobench task, unchanged), but
about the source video with a temporal fragment, ``SOURCE#t=REALTIME``: the question is
answered as of REALTIME, from the frames sampled up to then, and every question and round on
one source shares one encoding (add ``cache_dir=`` to share it across the three tasks too).

The source videos are OVO-Bench's ``src_videos`` (the ``video`` field of each document, a
path on the authors' cluster); set ``REKV_OVO_VIDEOS`` to the folder holding them. A
document's video is found there by its path below the folder, else by its file name.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Dict, List, Optional

from lmms_eval.tasks.ovobench.utils import (  # noqa: F401  (the upstream prompts and scorers, used by the YAMLs)
    build_prompt,
    ovo_back_real_acc,
    ovo_back_real_process_results,
    ovo_forward_acc,
    ovo_forward_process_results,
)
from lmms_rekv.tasks.common import data_dir

ENV = "REKV_OVO_VIDEOS"


def _root() -> str:
    return data_dir(ENV, "ovobench_stream")


@lru_cache(maxsize=4)
def _by_name(root: str) -> Dict[str, str]:
    """File name -> path of every file under ``root`` (the first one found)."""
    found: Dict[str, str] = {}
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            found.setdefault(name, os.path.join(folder, name))
    return found


def source_video(doc) -> str:
    """The document's source video under ``$REKV_OVO_VIDEOS`` (a missing one is returned as
    is: the model records the document as failed)."""
    root, video = _root(), str(doc["video"])
    parts = video.strip("/").split("/")
    for i in range(len(parts)):  # the longest tail of the cluster path that exists below root
        candidate = os.path.join(root, *parts[i:])
        if os.path.isfile(candidate):
            return candidate
    return _by_name(root).get(parts[-1], os.path.join(root, parts[-1]))


def at(doc, seconds) -> str:
    return f"{source_video(doc)}#t={float(seconds)}"


def doc_to_visual(doc, lmms_eval_specific_kwargs=None) -> List[str]:
    """The source video as of the question (backward/realtime) or of round 0 (forward)."""
    if "test_info" in doc and doc.get("test_info"):
        return [at(doc, doc["test_info"][0]["realtime"])]
    return [at(doc, doc["realtime"])]


def back_real_doc_to_text(doc, lmms_eval_specific_kwargs=None) -> str:
    return build_prompt(doc, index=None)


def forward_doc_to_text(doc, lmms_eval_specific_kwargs=None, previous_output=None, round_idx: Optional[int] = None,
                        previous_round_info=None):
    """Round 0: the prompt; round i: ``(visuals, prompt, terminal, outputs, None)`` with the
    source video as of round i's time (lmms-eval's multi-round protocol)."""
    if round_idx is None:
        return build_prompt(doc, index=0)
    if round_idx >= len(doc["test_info"]):
        return None, None, True, previous_output, None
    return [at(doc, doc["test_info"][round_idx]["realtime"])], build_prompt(doc, index=round_idx), False, previous_output, None
