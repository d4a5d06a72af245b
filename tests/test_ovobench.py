"""OVO-Bench through lmms-eval's own task functions, unchanged: ovo_backward, ovo_realtime
(generate_until on ``{id}.mp4``) and ovo_forward (multi-round on ``{id}_{i}.mp4``), on
documents and chunk files built offline in the upstream format (``ovo_data``)."""

import glob
import json
import os
import subprocess
import sys

import pytest
from helpers import ovo_data

from lmms_rekv.io.video import read_video

FPS = 2
MODEL_ARGS = f"window_tokens=64,topk_frames=4,chunk_frames=4,fps={FPS}"


@pytest.fixture(scope="module")
def ovo(tmp_path_factory):
    root = tmp_path_factory.mktemp("ovo")
    ovo_data.write_dataset(str(root))
    hf = root / "hf"
    ovo_data.write_videos(str(hf / "ovobench" / "chunked_videos"), str(root / "src"))
    return root


def _run(ovo, tiny_dir, out, tasks="ovo_backward,ovo_realtime,ovo_forward", extra=""):
    env = dict(os.environ, HF_HOME=str(ovo / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", LMMS_REKV_HOME=str(ovo / "home"))
    env.pop("LMMS_REKV_FAILURES", None)
    cmd = [sys.executable, "-m", "lmms_rekv.integrations.run_eval", "--model", "rekv", "--model_args",
           f"pretrained={tiny_dir},{MODEL_ARGS}{extra}", "--tasks", tasks, "--output_path", str(out), "--log_samples"]
    proc = subprocess.run(cmd, env=env, cwd=str(ovo), capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    return output


def _samples(out, task):
    (path,) = glob.glob(str(out / "*" / f"*_samples_{task}.jsonl"))
    return {s["doc_id"]: s for s in map(json.loads, open(path))}


def test_upstream_ovobench_runs_end_to_end(ovo, tiny_dir, load):
    from lmms_eval.tasks.ovobench.utils import build_prompt

    from lmms_rekv.integrations.lmms_eval_model import clean_context

    out = ovo / "out"
    output = _run(ovo, tiny_dir, out)
    assert "rekv-eval: finished, no failed document" in output and "Traceback" not in output
    results = json.load(open(glob.glob(str(out / "*" / "*_results.json"))[0]))["results"]
    for task, metric in (("ovo_backward", "back_real_acc,none"), ("ovo_realtime", "back_real_acc,none"), ("ovo_forward", "forward_acc,none")):
        assert metric in results[task], results
    for name in ("backward", "realtime", "forward"):  # the upstream scorers' own files
        assert os.path.isfile(glob.glob(str(out / "**" / f"{name}_acc_scores.json"), recursive=True)[0])
    engine = load(window_tokens=64, topk_frames=4, chunk_frames=4)
    chunks = ovo / "hf" / "ovobench" / "chunked_videos"

    def one_shot(chunk, doc, index):
        session = engine.new_session(fps=FPS)
        session.add_frames(read_video(str(chunk), fps=FPS))
        return session.ask(clean_context(build_prompt(doc, index)), max_new_tokens=128).strip()  # the task's generation_kwargs

    docs = ovo_data.documents()
    forward = _samples(out, "ovo_forward")
    assert len(forward) == 3
    for doc_id, doc in enumerate(docs["forward"]):
        rounds = forward[doc_id]["filtered_resps"]
        assert len(rounds) == len(doc["test_info"])  # every round answered ...
        for i, got in enumerate(rounds):  # ... from its own chunk
            assert got == one_shot(chunks / f"{doc['id']}_{i}.mp4", doc, i), (doc_id, i)
    backward = _samples(out, "ovo_backward")
    for doc_id, doc in enumerate(docs["backward"]):
        assert backward[doc_id]["filtered_resps"] == one_shot(chunks / f"{doc['id']}.mp4", doc, None)


def test_ovobench_stream_encodes_each_source_once_and_answers_as_the_chunks(ovo, tiny_dir, monkeypatch):
    """The shipped ovobench_stream tasks (source video + ``#t=``) give the predictions of the
    upstream chunk tasks, document by document and round by round, with one encoding per
    source video for all three tasks (the cache holds one entry per source)."""
    cache, out = ovo / "cache", ovo / "stream_out"
    monkeypatch.setenv("REKV_OVO_VIDEOS", str(ovo / "src"))
    output = _run(ovo, tiny_dir, out, tasks="ovobench_stream", extra=f",cache_dir={cache}")
    assert "rekv-eval: finished, no failed document" in output
    assert len(list(cache.iterdir())) == 2  # src_a and src_b, each encoded once
    chunked = ovo / "out"
    if not chunked.exists():
        _run(ovo, tiny_dir, chunked)
    for task in ("ovo_backward", "ovo_realtime", "ovo_forward"):
        stream, chunks = _samples(out, f"{task}_stream"), _samples(chunked, task)
        assert {k: v["filtered_resps"] for k, v in stream.items()} == {k: v["filtered_resps"] for k, v in chunks.items()}, task
