"""QAEgo4D test-mc (the multiple-choice QAEgo4D test split ReKV evaluates on).

Layout of ``$REKV_QAEGO4D_DIR``::

    test_mc.json            (or annotations.json)
    videos/<video_id>.mp4   (or the annotation's "video_path", relative to the folder)

``test_mc.json``: a list of ``{"video_id", "question", "options": [4 strings],
"answer": index | letter | option text, "sample_id": optional}``. The whole video is
streamed, then the question is asked.
"""

from __future__ import annotations

from lmms_rekv.tasks.common import answer_letter, data_dir, first_existing, load_json, to_dataset, video_file
from lmms_rekv.tasks.common import mc_doc_to_text as doc_to_text  # noqa: F401  (used by the YAML)
from lmms_rekv.tasks.common import mc_process_results as process_results  # noqa: F401


def qaego4d_docs(dataset):
    folder = data_dir("REKV_QAEGO4D_DIR", "QAEgo4D test-mc")
    docs = []
    for i, item in enumerate(load_json(first_existing(folder, ("test_mc.json", "annotations.json")))):
        video_id = str(item.get("video_id") or item.get("video_uid"))
        options = [str(o) for o in (item.get("options") or item.get("choices"))]
        docs.append({
            "qid": str(item.get("sample_id", i)), "video_id": video_id,
            "video": video_file(folder, video_id, item.get("video_path")),
            "question": item["question"], "options": options, "answer": answer_letter(item["answer"], options),
        })
    return to_dataset(docs)


def doc_to_visual(doc):
    return [doc["video"]]
