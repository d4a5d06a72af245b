"""RVS-Ego / RVS-Movie (ReKV's streaming open-ended QA): each question has the time span its
answer lies in and is asked at the span's end, from the frames streamed so far.

Layout of ``$REKV_RVS_EGO_DIR`` / ``$REKV_RVS_MOVIE_DIR``::

    annotations.json        (or ego4d_oe.json / movienet_oe.json, ReKV's names)
    videos/<video_id>.mp4   (or the path in the annotation's "video_path", relative to the folder)

``annotations.json`` is a list of videos::

    [{"video_id": "...", "video_path": "optional", "conversations": [
        {"question": "...", "answer": "...", "start_time": 12.0, "end_time": 31.5}, ...]}, ...]
"""

from __future__ import annotations

from lmms_rekv.tasks.common import data_dir, first_existing, load_json, mean_ignoring_none, to_dataset, token_f1, video_file
from lmms_rekv.tasks.judge import judge

ANNOTATIONS = ("annotations.json", "annotations.jsonl", "ego4d_oe.json", "movienet_oe.json")

__all__ = ["mean_ignoring_none"]


def load_docs(env_var: str, name: str) -> list:
    folder = data_dir(env_var, name)
    docs = []
    for video in load_json(first_existing(folder, ANNOTATIONS)):
        video_id = str(video.get("video_id") or video.get("video_uid") or video.get("id"))
        path = video_file(folder, video_id, video.get("video_path"))
        for i, turn in enumerate(video["conversations"]):
            docs.append({
                "qid": f"{video_id}_{i}", "video_id": video_id, "video": path,
                "question": turn["question"], "answer": str(turn["answer"]),
                "start_time": float(turn.get("start_time") or 0.0), "end_time": float(turn["end_time"]),
            })
    return docs


def rvs_ego_docs(dataset):
    return to_dataset(load_docs("REKV_RVS_EGO_DIR", "RVS-Ego"))


def rvs_movie_docs(dataset):
    return to_dataset(load_docs("REKV_RVS_MOVIE_DIR", "RVS-Movie"))


def doc_to_visual(doc):
    """The video streamed from its start up to the question's end time."""
    return [f"{doc['video']}#t={doc['end_time']}"]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def process_results(doc, results):
    prediction = (results[0] if results else "").strip()
    correct, score = judge(doc["question"], doc["answer"], prediction)
    return {
        "token_f1": token_f1(prediction, doc["answer"]),
        "gpt_accuracy": None if correct is None else float(correct),
        "gpt_score": score,
    }
