"""The task configs shipped in tasks/: loaders, streaming time spans, scoring, and one
lmms-eval run over synthetic data laid out as each README section documents."""

import glob
import importlib.util
import json
import math
import os
import subprocess
import sys

import lmms_rekv.tasks
import numpy as np
import pytest
from lmms_rekv.tasks import common, judge

from lmms_rekv.io.video import write_video

TASKS_DIR = os.path.dirname(os.path.abspath(lmms_rekv.tasks.__file__))  # the installed copy


def _utils(task_folder):
    spec = importlib.util.spec_from_file_location(f"{task_folder}_utils", os.path.join(TASKS_DIR, task_folder, "utils.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _clip(path, seconds=8, seed=0):
    rng = np.random.default_rng(seed)
    write_video(str(path), rng.integers(0, 256, (seconds * 4, 32, 32, 3), dtype=np.uint8), fps=4)


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for name in ("ego", "movie", "qaego4d", "cgbench"):
        (root / name / "videos").mkdir(parents=True)
    for name, video in (("ego", "v1"), ("movie", "m1")):
        _clip(root / name / "videos" / f"{video}.mp4")
        ann = [{"video_id": video, "conversations": [
            {"question": "what is on the table?", "answer": "a red cup", "start_time": 1.0, "end_time": 3.0},
            {"question": "who opens the door?", "answer": "the man", "start_time": 4.0, "end_time": 7.5}]}]
        json.dump(ann, open(root / name / "annotations.json", "w"))
    _clip(root / "qaego4d" / "videos" / "q1.mp4", seed=1)
    json.dump([{"video_id": "q1", "question": "where is the cup?", "options": ["table", "floor", "sink", "bag"], "answer": 2},
               {"video_id": "q1", "question": "what color?", "options": ["red", "blue", "green", "white"], "answer": "blue"},
               {"video_id": "missing", "question": "gone?", "options": ["a", "b", "c", "d"], "answer": "A"}],
              open(root / "qaego4d" / "test_mc.json", "w"))
    _clip(root / "cgbench" / "videos" / "c1.mp4", seed=2)
    json.dump([{"video_uid": "c1", "qid": 7, "question": "what falls?", "choices": ["cup", "pen", "box", "hat"], "right_answer": "C",
                "clue_intervals": [[1.0, 2.0], [4.0, 5.5]], "duration": 8},
               {"video_uid": "c1", "qid": 8, "question": "how many?", "choices": ["1", "2", "3", "4"], "right_answer": "D", "clue_intervals": []}],
              open(root / "cgbench" / "cgbench.json", "w"))
    return root


@pytest.fixture
def env(monkeypatch, datasets_root):
    for var, name in (("REKV_RVS_EGO_DIR", "ego"), ("REKV_RVS_MOVIE_DIR", "movie"), ("REKV_QAEGO4D_DIR", "qaego4d"), ("REKV_CGBENCH_DIR", "cgbench")):
        monkeypatch.setenv(var, str(datasets_root / name))
    monkeypatch.delenv("REKV_JUDGE_MODEL", raising=False)
    return datasets_root


def test_rvs_docs_stream_up_to_the_question(env):
    rvs = _utils("rvs")
    docs = list(rvs.rvs_ego_docs(None))
    assert [d["end_time"] for d in docs] == [3.0, 7.5]
    assert rvs.doc_to_visual(docs[1]) == [str(env / "ego" / "videos" / "v1.mp4") + "#t=7.5"]
    scored = rvs.process_results(docs[0], ["A red cup."])
    assert scored["token_f1"] == 1.0 and scored["gpt_accuracy"] is None
    assert math.isnan(rvs.mean_ignoring_none([None, None])) and rvs.mean_ignoring_none([1.0, None, 0.0]) == 0.5
    assert len(rvs.rvs_movie_docs(None)) == 2


def test_missing_data_folder_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("REKV_RVS_EGO_DIR", raising=False)
    with pytest.raises(RuntimeError, match="REKV_RVS_EGO_DIR"):
        _utils("rvs").rvs_ego_docs(None)


def test_mc_tasks(env):
    qa = _utils("qaego4d")
    docs = list(qa.qaego4d_docs(None))
    assert [d["answer"] for d in docs] == ["C", "B", "A"]
    assert "C. sink" in qa.doc_to_text(docs[0], {"post_prompt": "Letter?"})
    assert qa.process_results(docs[0], ["(C) sink"])["accuracy"] == 1.0
    assert qa.process_results(docs[0], ["A"])["accuracy"] == 0.0
    cg = _utils("cgbench_stream")
    cdocs = list(cg.cgbench_docs(None))
    assert cg.doc_to_visual(cdocs[0])[0].endswith("c1.mp4#t=5.5")
    assert cg.doc_to_visual(cdocs[1])[0].endswith("c1.mp4")


def test_judge_parsing_and_fake_judge():
    assert judge.parse_verdict("{'pred': 'yes', 'score': 4}") == (True, 4.0)
    assert judge.parse_verdict('Sure: {"pred": "no", "score": 1}') == (False, 1.0)
    assert judge.parse_verdict("no dict here") == (None, None)
    calls = []
    verdict = judge.judge("q?", "a red cup", "red cup", call=lambda system, user: calls.append(user) or "{'pred': 'yes', 'score': 5}")
    assert verdict == (True, 5.0) and "a red cup" in calls[0]
    assert judge.judge("q?", "a", "b", call=lambda s, u: (_ for _ in ()).throw(RuntimeError("down"))) == (None, None)
    assert judge.judge("q?", "a", "b") == (None, None)  # not configured


def test_common_helpers():
    assert common.answer_letter(1, ["x", "y"]) == "B" and common.answer_letter("y", ["x", "y"]) == "B"
    with pytest.raises(ValueError):
        common.answer_letter("z", ["x", "y"])
    assert common.extract_letter("The answer is B.", 4) == "B" and common.extract_letter("none", 4) == ""
    assert common.token_f1("the red cup", "red cup") == pytest.approx(0.8)


def test_cli_runs_the_streaming_tasks(env, tmp_path, tiny_dir):
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "rekv_llava_ov",
           "--model_args", f"pretrained={tiny_dir},window_tokens=64,topk_frames=4,chunk_frames=4,fps=2",
           "--tasks", "rvs_ego,rvs_movie,qaego4d_mc,cgbench_mc_stream", "--include_path", TASKS_DIR,
           "--output_path", str(tmp_path / "out"), "--log_samples", "--verbosity", "DEBUG"]
    run_env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, env=run_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.load(open(glob.glob(str(tmp_path / "out" / "*" / "*_results.json"))[0]))["results"]
    assert "token_f1,none" in results["rvs_ego"] and "accuracy,none" in results["qaego4d_mc"]
    assert "accuracy,none" in results["cgbench_mc_stream"] and "token_f1,none" in results["rvs_movie"]
    samples = [json.loads(l) for l in open(glob.glob(str(tmp_path / "out" / "*" / "*_samples_qaego4d_mc.jsonl"))[0])]
    by_id = {s["doc_id"]: s["filtered_resps"] for s in samples}
    assert by_id[2] == "" and by_id[0] != ""  # the missing video is a recorded failure, the rest answered



def test_rekv_demo_docs_are_the_world_episodes(tmp_path, monkeypatch):
    """The bundled documents are regenerated exactly from their held-out seeds, and the
    generated videos decode to frames whose content answers the questions."""
    utils = _utils("rekv_demo")
    docs = json.load(open(os.path.join(TASKS_DIR, "rekv_demo", "rekv_demo.json")))
    assert docs == utils.build_docs() and len(docs) == 16
    monkeypatch.setenv("LMMS_REKV_HOME", str(tmp_path))
    from lmms_rekv.io.video import read_video

    episode, frames = utils.episode(docs[0])
    decoded = read_video(utils.video_path(docs[0]), fps=0.5)
    assert decoded.shape[0] == episode.length
    error = np.abs(decoded.astype(int) - frames.astype(int)).mean()
    assert error < 8, error  # H.264 keeps the tiles
    assert utils.process_results(docs[0], [" " + docs[0]["answer"] + " ok"]) == {
        "accuracy": 1.0, "color_accuracy": 1.0}  # only metrics of the task (another key: an empty metric in results.json)
    assert docs[1]["time"] is None and docs[1]["question"] == docs[0]["question"]  # the same question asked at the end
    assert utils.process_results(docs[0], ["nothing"])["accuracy"] == 0.0
