"""lmms-eval integration: the rekv_llava_ov model class and the rekv_demo task."""

import dataclasses
import glob
import json
import os
import shutil
import subprocess
import sys

import lmms_rekv.tasks
import numpy as np
import pytest
import torch
from lmms_eval.api.instance import Instance

from lmms_rekv.io.video import iter_video, read_video, write_video

TASKS_DIR = os.path.dirname(os.path.abspath(lmms_rekv.tasks.__file__))  # the installed copy
MODEL_ARGS = "window_tokens=64,topk_frames=4,chunk_frames=4,fps=1"


@pytest.fixture(scope="module")
def lm(tiny_dir):
    from lmms_rekv.integrations.lmms_eval_model import ReKVLlavaOV

    return ReKVLlavaOV(pretrained=tiny_dir, dtype="float32", device="cpu", window_tokens=64, topk_frames=4, chunk_frames=4, fps=2)


def _video(tmp_path, name, frames):
    return write_video(str(tmp_path / f"{name}.mp4"), frames, fps=4)


def _clip(seed, seconds=6, size=48):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (seconds * 4, size, size, 3), dtype=np.uint8)


def _requests(lm, docs, kind="generate_until", gen_kwargs=None):
    lm.task_dict = {"t": {"test": docs}}
    out = []
    for i, doc in enumerate(docs):
        visual = lambda d: [d["visual"]]  # noqa: E731
        if kind == "generate_until":
            args = (doc["q"], dict(gen_kwargs or {"max_new_tokens": 5, "until": []}), visual, i, "t", "test")
        else:
            args = (doc["q"], doc["a"], visual, i, "t", "test")
        out.append(Instance(request_type=kind, arguments=args, idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1}))
    return out


def test_video_decoded_and_encoded_once(lm, tmp_path, monkeypatch):
    import lmms_rekv.integrations.streams as streams_module

    path = _video(tmp_path, "a", _clip(0))
    other = _video(tmp_path, "b", _clip(1))
    questions = ["what is first?", "what color is it?", "where is the cup?"]
    docs = [{"q": q, "visual": path} for q in questions] + [{"q": "anything?", "visual": other}]
    encodes = []
    real_session = lm.engine.new_session

    def counting_session(fps=None):
        session = real_session(fps=fps)
        original = session.writer.encode
        session.writer.encode = lambda pixels: (encodes.append(pixels.shape[0]), original(pixels))[1]
        return session

    monkeypatch.setattr(lm.engine, "new_session", counting_session)
    streams = []
    real_decode = streams_module.iter_video_timed
    monkeypatch.setattr(streams_module, "iter_video_timed", lambda *a, **k: streams.append(a[0]) or real_decode(*a, **k))

    before = lm.videos_decoded
    answers = lm.generate_until(_requests(lm, docs))
    assert lm.videos_decoded - before == 2 and set(streams) == {path, other}  # (b also read as a possible continuation of a)
    assert sum(encodes) == 2 * 12  # 6 s at 2 fps, each frame of each video encoded once
    monkeypatch.undo()
    for q, got in zip(questions, answers):
        fresh = lm.engine.new_session()
        fresh.add_frames(np.stack(list(iter_video(path, fps=2))))
        assert fresh.ask(q, max_new_tokens=5).strip() == got


def test_streaming_question_never_sees_later_frames(lm, tmp_path):
    base = _clip(2, seconds=8)
    changed = base.copy()
    changed[4 * 4 + 2 :] = 255 - changed[4 * 4 + 2 :]  # differs from 4.5 s on
    same_until = [_video(tmp_path, "s1", base), _video(tmp_path, "s2", changed)]
    docs = [{"q": "what happens now?", "visual": f"{p}#t=4.0"} for p in same_until]
    docs += [{"q": "what happens now?", "visual": p} for p in same_until]
    live_a, live_b, full_a, full_b = lm.generate_until(_requests(lm, docs, gen_kwargs={"max_new_tokens": 8}))
    assert live_a == live_b  # the later frames differ, the answer at 4 s does not
    assert full_a != full_b  # ... and they do matter once the question is asked after them
    # the same answer as a stream that really stopped at 4 s
    session = lm.engine.new_session()
    session.add_frames(read_video(same_until[0], fps=2, end_time=4.0))
    assert session.stats()["frames"] == 9
    assert session.ask("what happens now?", max_new_tokens=8).strip() == live_a


def test_frame_limit_is_bit_exact_against_later_content(load, frames):
    """The KV of frames <= t does not depend on the content of later frames in the same chunk."""
    engine = load(window_tokens=40, topk_frames=3, chunk_frames=4)
    video = frames(12, seed=30)
    other = video.copy()
    other[7:] = 255 - other[7:]
    answers = []
    for v in (video, other):
        session = engine.new_session()
        session.add_frames(v)
        answers.append(session.answer("what happens now?", max_new_tokens=5, return_logits=True, frame_limit=7, eos_token_ids=()))
        assert all(s.max() < 7 for s in answers[-1].selected)
    assert answers[0].token_ids == answers[1].token_ids
    assert all(torch.equal(a, b) for a, b in zip(answers[0].logits, answers[1].logits))


def test_bad_videos_are_recorded_and_others_answered(lm, tmp_path, monkeypatch):
    good = _video(tmp_path, "g", _clip(3))
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00not a video" * 50)
    log = tmp_path / "failures.jsonl"
    monkeypatch.setenv("LMMS_REKV_FAILURES", str(log))
    docs = [{"q": "a?", "visual": str(tmp_path / "missing.mp4")}, {"q": "b?", "visual": str(corrupt)}, {"q": "c?", "visual": good}]
    lm.failures.clear()
    answers = lm.generate_until(_requests(lm, docs))
    assert answers[0] == answers[1] == "" and answers[2] != ""
    assert [f["doc_id"] for f in lm.failures] == [0, 1]
    assert "not found" in lm.failures[0]["error"] and "VideoError" in lm.failures[1]["error"]
    assert len(log.read_text().splitlines()) == 2
    scores = lm.loglikelihood(_requests(lm, [dict(d, a=" A") for d in docs], kind="loglikelihood"))
    assert scores[0] == (float("-inf"), False) and np.isfinite(scores[2][0])


def test_a_hanging_decoder_fails_its_document_within_doc_timeout(lm, tmp_path, monkeypatch):
    """A decoder stuck on one file (here: it never returns a second frame) fails that
    document after ``doc_timeout`` seconds; the next document is answered as usual."""
    import threading
    import time

    import lmms_rekv.integrations.streams as streams_module

    stuck, good = _video(tmp_path, "stuck", _clip(4)), _video(tmp_path, "fine", _clip(5))
    real, release = streams_module.iter_video_timed, threading.Event()

    def hanging(path, *args, **kwargs):
        for i, item in enumerate(real(path, *args, **kwargs)):
            if path == stuck and i == 1:
                release.wait(600)  # hangs (the test releases it at the end)
            yield item

    monkeypatch.setattr(streams_module, "iter_video_timed", hanging)
    # the limit is far above the good video's work (about a second), so a loaded machine cannot
    # push that one past it; the stuck one never finishes
    monkeypatch.setattr(lm.runner, "settings", dataclasses.replace(lm.runner.settings, doc_timeout=10.0))
    lm.failures.clear()
    start = time.perf_counter()
    try:
        answers = lm.generate_until(_requests(lm, [{"q": "a?", "visual": stuck}, {"q": "b?", "visual": good}]))
    finally:
        release.set()
    assert time.perf_counter() - start < 300  # failed at the limit, not when the decoder was released
    assert answers[0] == "" and answers[1] != "" and [f["doc_id"] for f in lm.failures] == [0]
    assert f"reading and encoding {stuck} took longer than the 10 s limit (model arg doc_timeout)" in lm.failures[0]["error"]


def test_deadline_passes_items_errors_and_the_end_through():
    from lmms_rekv.io.deadline import DeadlineExceeded, with_deadline

    assert list(with_deadline(lambda: iter(range(5)), 10)) == list(range(5)) == list(with_deadline(lambda: iter(range(5)), None))

    def broken():
        yield 1
        raise ValueError("bad frame")

    with pytest.raises(ValueError, match="bad frame"):
        list(with_deadline(broken, 10))

    def slow():
        import time

        yield 1
        time.sleep(60)  # far past the limit, which is far above the first item's work
        yield 2

    got = []
    with pytest.raises(DeadlineExceeded, match="decoding took longer than the 2 s limit"):
        for item in with_deadline(slow, 2, "decoding"):
            got.append(item)
    assert got == [1]


def test_loglikelihood_matches_session(lm, tmp_path):
    path = _video(tmp_path, "l", _clip(4))
    docs = [{"q": "pick one: A. red B. blue", "visual": path, "a": a} for a in ("A", "B")]
    scores = lm.loglikelihood(_requests(lm, docs, kind="loglikelihood"))
    session = lm.engine.new_session()
    session.add_frames(read_video(path, fps=2))
    for (got, greedy), doc in zip(scores, docs):
        want = session.loglikelihood(doc["q"], doc["a"])
        assert abs(got - want[0]) < 1e-5 and greedy == want[1]


def _cli(tmp_path, tiny_dir, tasks_dir, out, torchrun=False, extra="", flags=(), expect=0, model_args=None):
    """Run the CLI as the README does: ``rekv-eval`` (lmms-eval with failures that show), or
    lmms-eval under ``torchrun``; returns (results, {doc_id: prediction}, output)."""
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), LMMS_REKV_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    env.pop("LMMS_REKV_FAILURES", None)
    if torchrun:
        head = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "lmms_eval"]
    else:
        head = [sys.executable, "-m", "lmms_rekv.integrations.run_eval", *flags]
    cmd = head + [
        "--model", "rekv_llava_ov", "--model_args", model_args or f"pretrained={tiny_dir},{MODEL_ARGS}{extra}", "--tasks", "rekv_demo",
        "--include_path", tasks_dir, "--output_path", str(out), "--log_samples",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == expect, output[-6000:]
    found = glob.glob(str(out / "*" / "*_results.json"))
    if not found:
        return None, None, output
    results = json.load(open(found[0]))
    samples = [json.loads(line) for line in open(glob.glob(str(out / "*" / "*_samples_rekv_demo.jsonl"))[0])]
    return results, {s["doc_id"]: s["filtered_resps"] for s in samples}, output


def test_the_process_group_is_destroyed_before_exit(tmp_path, monkeypatch):
    """lmms-eval never destroys its process group, and a gloo group left to the interpreter's
    teardown aborts the process now and then after the results are written; the model class
    (WORLD_SIZE > 1) registers ``close_process_group`` at exit, once, and it closes an open group."""
    import atexit

    import torch.distributed as dist

    from lmms_rekv.integrations import lmms_eval_model as m

    registered = []
    monkeypatch.setattr(atexit, "register", registered.append)
    m.close_process_group_at_exit.cache_clear()
    try:
        m.close_process_group_at_exit()
        m.close_process_group_at_exit()
        assert registered == [m.close_process_group]
    finally:
        m.close_process_group_at_exit.cache_clear()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    m.close_process_group()
    assert not dist.is_initialized()
    m.close_process_group()  # none open: nothing to do


def test_cli_rekv_demo_single_and_torchrun(tmp_path, tiny_dir):
    results, single, output = _cli(tmp_path, tiny_dir, TASKS_DIR, tmp_path / "one")
    assert "accuracy,none" in results["results"]["rekv_demo"]
    empty = [k for k, v in results["results"]["rekv_demo"].items() if v == [] or v == {}]
    assert not empty, f"empty metrics in results.json: {empty}"
    assert len(single) == 16
    assert "Traceback" not in output and "rekv-eval: finished, no failed document" in output
    _, double, _ = _cli(tmp_path, tiny_dir, TASKS_DIR, tmp_path / "two", torchrun=True)
    assert double == single


def _bad_demo_tasks(tmp_path):
    tasks = tmp_path / "tasks"
    shutil.copytree(os.path.join(TASKS_DIR, "rekv_demo"), tasks / "rekv_demo")
    docs = json.load(open(tasks / "rekv_demo" / "rekv_demo.json"))
    docs[0]["path"] = str(tmp_path / "missing.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"garbage" * 100)
    docs[5]["path"] = str(tmp_path / "bad.mp4")
    json.dump(docs, open(tasks / "rekv_demo" / "rekv_demo.json", "w"))
    return str(tasks)


def test_cli_survives_bad_documents(tmp_path, tiny_dir):
    """The run goes on past bad documents, and rekv-eval says so with a non-zero exit."""
    tasks = _bad_demo_tasks(tmp_path)
    results, predictions, output = _cli(tmp_path, tiny_dir, tasks, tmp_path / "bad", expect=1)
    assert predictions[0] == "" and predictions[5] == "" and len(predictions) == 16
    assert "accuracy,none" in results["results"]["rekv_demo"]
    # exactly the two bad documents failed (the random model may itself answer with nothing)
    assert "rekv-eval: FAILED: 2 document(s) failed" in output and "missing.mp4" in output
    _, accepted, output = _cli(tmp_path, tiny_dir, tasks, tmp_path / "ok", flags=["--allow-failed-docs"])
    assert accepted == predictions and "rekv-eval: finished with 2 document(s) failed" in output


def test_cli_evaluation_error_fails_the_command(tmp_path):
    """lmms-eval prints a traceback and exits 0 when the model cannot be built; rekv-eval exits 1.
    (A missing folder is refused before lmms-eval starts: tests/test_cli_errors.py; this one has a
    config.json and nothing else, so only building the model finds it broken.)"""
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llava_onevision"}))
    results, _, output = _cli(tmp_path, str(broken), TASKS_DIR, tmp_path / "err", expect=1)
    assert results is None and "rekv-eval: FAILED: lmms-eval wrote no results" in output


def test_broken_install_ends_the_run(lm, tmp_path, monkeypatch):
    """An ImportError (e.g. a module missing from a wheel) is not a bad document: it ends the run."""
    path = _video(tmp_path, "i", _clip(6))

    def missing_module(fps=None):
        raise ModuleNotFoundError("No module named 'lmms_rekv.storage.backends'")

    monkeypatch.setattr(lm.engine, "new_session", missing_module)
    lm.failures.clear()
    with pytest.raises(ModuleNotFoundError):
        lm.generate_until(_requests(lm, [{"q": "a?", "visual": path}, {"q": "b?", "visual": path}]))
    assert lm.failures == []


def test_cache_dir_skips_encoding_and_resumes(tiny_dir, tmp_path, caplog):
    from lmms_rekv.integrations.lmms_eval_model import ReKVLlavaOV

    videos = [_video(tmp_path, f"c{i}", _clip(10 + i)) for i in range(3)]
    docs = [{"q": q, "visual": v} for v in videos for q in ("what is first?", "what color?")]
    make = lambda: ReKVLlavaOV(pretrained=tiny_dir, dtype="float32", device="cpu", window_tokens=64, topk_frames=4,  # noqa: E731
                               chunk_frames=4, fps=2, cache_dir=str(tmp_path / "cache"))
    # a run "killed" after the first video: only its entry exists
    first = make()
    partial = first.generate_until(_requests(first, docs[:2]))
    assert first.videos_decoded == 1 and len(os.listdir(tmp_path / "cache")) == 1
    resumed = make()
    full = resumed.generate_until(_requests(resumed, docs))
    assert (resumed.videos_decoded, resumed.videos_from_cache) == (2, 1)
    assert full[:2] == partial
    again = make()
    assert again.generate_until(_requests(again, docs)) == full
    assert (again.videos_decoded, again.videos_from_cache) == (0, 3)
    # a corrupted file: detected, warned about, re-encoded, same answers
    entry = sorted((tmp_path / "cache").iterdir())[0]
    segment = entry / "seg_000000.bin"
    data = bytearray(segment.read_bytes())
    data[7] ^= 0x55
    segment.write_bytes(bytes(data))
    fixed = make()
    with caplog.at_level("WARNING"):
        assert fixed.generate_until(_requests(fixed, docs)) == full
    assert (fixed.videos_decoded, fixed.videos_from_cache) == (1, 2)
    assert any("re-encoding" in r.message for r in caplog.records)


def test_cli_rekv_demo_twice_with_cache_dir(tmp_path, tiny_dir):
    cache = tmp_path / "cache"
    _, first, _ = _cli(tmp_path, tiny_dir, TASKS_DIR, tmp_path / "c1", extra=f",cache_dir={cache}")
    entries = {e.name: (e / "manifest.json").stat().st_mtime_ns for e in cache.iterdir()}
    assert len(entries) == 4  # one per video; the streaming questions reuse them too
    _, second, _ = _cli(tmp_path, tiny_dir, TASKS_DIR, tmp_path / "c2", extra=f",cache_dir={cache}")
    assert second == first
    # nothing was encoded again: every entry is untouched
    assert {e.name: (e / "manifest.json").stat().st_mtime_ns for e in cache.iterdir()} == entries


def test_cli_rekv_demo_on_the_miniature(tmp_path):
    """README line 1's evaluation: the trained miniature through ReKV (4 of 40 frames per
    layer) scores well above chance on rekv_demo, with no failed document."""
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), LMMS_REKV_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    env.pop("LMMS_REKV_FAILURES", None)
    cmd = [sys.executable, "-m", "lmms_rekv.integrations.run_eval", "--model", "rekv_llava_ov", "--model_args",
           "pretrained=miniature,window_tokens=16,topk_frames=4", "--tasks", "rekv_demo", "--output_path", str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    results = json.load(open(glob.glob(str(tmp_path / "out" / "*" / "*_results.json"))[0]))["results"]["rekv_demo"]
    # chance: (8 colour questions at 1/8 + 4 at 1/15 + 4 at 1/2) / 16 = 0.2
    assert results["accuracy,none"] >= 0.4, results  # README: 0.75 (ReKV as published 0.56, full attention 0.56)


#: the --model_args string one gives lmms-eval's llava_onevision
LLAVA_OV_ARGS = ("conv_template=qwen_1_5,max_frames_num=8,mm_spatial_pool_stride=2,mm_spatial_pool_mode=bilinear,"
                 "device_map=cpu,attn_implementation=sdpa,video_decode_backend=pyav,token_strategy=single")


def test_cli_llava_onevision_args_on_an_lmms_lab_checkpoint(tmp_path, tiny_dir):
    """The one-word switch: ``--model rekv_llava_ov`` with llava_onevision's model_args runs on
    an lmms-lab-format checkpoint through the CLI (that it answers as llava_onevision does is
    tests/test_llava_reference.py, against lmms-eval's own class)."""
    from research.tiny import write_lmms_lab_twin

    twin = write_lmms_lab_twin(tiny_dir, str(tmp_path / "lmms-lab-tiny"))
    results, lab, output = _cli(tmp_path, tiny_dir, TASKS_DIR, tmp_path / "lab", model_args=f"pretrained={twin},{LLAVA_OV_ARGS}")
    assert "Traceback" not in output and len(lab) == 16 and "accuracy,none" in results["results"]["rekv_demo"]


@pytest.mark.parametrize("arg,reason", [("mm_spatial_pool_mode=average", "bilinearly"), ("token_strategy=multiple", "'multiple'"),
                                        ("conv_template=vicuna_v1", "qwen_1_5"), ("device_map=balanced", "one device per process"),
                                        ("truncate_context=True", "truncation"), ("customized_config=x.json", "JSON")])
def test_llava_onevision_args_refused_with_the_reason(arg, reason):
    from lmms_rekv.integrations.llava_ov_args import translate

    name, value = arg.split("=")
    with pytest.raises(ValueError, match=reason):
        translate({name: value})


def test_llava_onevision_args_honoured():
    from lmms_rekv.integrations.llava_ov_args import ARGS, translate

    args = {k: v for k, v in (a.split("=") for a in LLAVA_OV_ARGS.split(","))}
    args.update(truncation="True", use_cache="True", truncate_context="False", model_name="llava_qwen", window_tokens="64")
    given = dict(args)
    out, rest = translate(args)
    assert rest == {"window_tokens": "64"} and args == given  # every llava_onevision arg read, ours left; a pure function
    assert out == {"conv_template": "qwen_1_5", "max_frames": 8, "uniform_frames": 8, "decode_backend": "pyav",
                   "dtype": "float16", "device": "cpu", "attn_implementation": "sdpa"}  # its sampling and its float16
    assert set(ARGS) >= {"pretrained", "conv_template", "max_frames_num", "mm_spatial_pool_stride", "mm_spatial_pool_mode",
                         "device_map", "attn_implementation", "video_decode_backend", "token_strategy"}
