"""Streaming CG-Bench (multiple choice): each question is asked as soon as all of its clue
intervals have been streamed -- at the end of the last clue -- from the frames seen so far.

Layout of ``$REKV_CGBENCH_DIR`` (CG-Bench's own release)::

    cgbench.json              (or cgbench_mini.json / annotations.json)
    videos/<video_uid>.mp4

``cgbench.json``: a list of ``{"video_uid", "qid", "question", "choices": [...],
"right_answer": letter | index | text, "clue_intervals": [[start, end], ...], "duration"}``.
Questions without clue intervals are asked at the end of the video.
"""

from __future__ import annotations

from lmms_rekv.tasks.common import answer_letter, data_dir, first_existing, load_json, to_dataset, video_file
from lmms_rekv.tasks.common import mc_doc_to_text as doc_to_text  # noqa: F401  (used by the YAML)
from lmms_rekv.tasks.common import mc_process_results as process_results  # noqa: F401


def cgbench_docs(dataset):
    folder = data_dir("REKV_CGBENCH_DIR", "CG-Bench")
    docs = []
    for i, item in enumerate(load_json(first_existing(folder, ("cgbench.json", "cgbench_mini.json", "annotations.json")))):
        video_id = str(item["video_uid"])
        options = [str(c) for c in item["choices"]]
        clues = item.get("clue_intervals") or []
        ask_at = max(float(end) for _, end in clues) if clues else None
        docs.append({
            "qid": str(item.get("qid", i)), "video_id": video_id, "video": video_file(folder, video_id, item.get("video_path")),
            "question": item["question"], "options": options, "answer": answer_letter(item["right_answer"], options),
            "ask_at": ask_at,
        })
    return to_dataset(docs)


def doc_to_visual(doc):
    """Streamed up to the end of the last clue (the whole video when there is none)."""
    return [doc["video"] if doc["ask_at"] is None else f"{doc['video']}#t={doc['ask_at']}"]
