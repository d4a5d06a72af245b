"""Issue 16 (short version of ``python -m research.reliability.fuzz_videos``): damaged and unusual
videos end in frames or a clear ``VideoError`` -- never another exception, a crash or a hang
-- through ``read_video`` and through the lmms-eval model (one bad document never stops the run)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from research.reliability.fuzz_videos import build_corpus

    return build_corpus(str(tmp_path_factory.mktemp("fuzz")), flips=3)


def test_every_case_ends_in_frames_or_a_video_error_within_the_limit(corpus):
    from research.reliability.fuzz_videos import read_case

    outcomes = {name: read_case(name, path, limit_s=60) for name, path in corpus.items()}
    bad = {n: (o.result, o.detail) for n, o in outcomes.items() if not o.ok}
    assert not bad
    for name in ("zero-byte", "truncated-half", "header-only", "audio-only"):
        assert outcomes[name].result == "VideoError"
    for name in ("good", "wrong-extension", "one-frame", "size-1x1", "size-7x5", "size-4000x3000", "10bit-yuv444", "gif", "still-png"):
        assert outcomes[name].result == "frames" and outcomes[name].frames >= 1, name


def test_rotated_video_is_returned_upright(tmp_path):
    from lmms_rekv.io.video import read_video, write_video
    from research.reliability.fuzz_videos import rotate_mp4

    frames = np.zeros((4, 48, 64, 3), np.uint8)
    frames[:, :16, :16] = 255  # a white top-left corner
    path = write_video(str(tmp_path / "r.mp4"), frames, fps=4)
    assert read_video(path, fps=4)[0, :8, :8].mean() > 200
    rotated = read_video(rotate_mp4(path), fps=4)
    assert rotated.shape == (4, 64, 48, 3)  # displayed 90 degrees clockwise: portrait
    assert rotated[0, :8, -8:].mean() > 200 and rotated[0, :8, :8].mean() < 50  # the corner moved to the top right


def test_lmms_eval_answers_or_records_every_fuzzed_document(tiny_dir, corpus):
    from lmms_eval.api.instance import Instance

    from lmms_rekv.integrations.lmms_eval_model import ReKVLlavaOV

    lm = ReKVLlavaOV(pretrained=tiny_dir, dtype="float32", device="cpu", window_tokens=64, topk_frames=4, chunk_frames=4, fps=2)
    docs = [{"q": f"what is in {name}?", "visual": path} for name, path in corpus.items()]
    lm.task_dict = {"t": {"test": docs}}
    visual = lambda d: [d["visual"]]  # noqa: E731
    requests = [Instance(request_type="generate_until", arguments=(d["q"], {"max_new_tokens": 3, "until": []}, visual, i, "t", "test"),
                         idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1}) for i, d in enumerate(docs)]
    answers = lm.generate_until(requests)
    assert len(answers) == len(docs)
    failed = {f["doc_id"]: f["error"] for f in lm.failures}
    names = list(corpus)
    assert {names[i] for i in failed} == {"zero-byte", "truncated-half", "header-only", "audio-only"}
    assert all("VideoError" in e for e in failed.values())
    assert all(answers[i] == "" for i in failed)  # failed documents answer empty; every other one was answered
