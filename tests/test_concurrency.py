"""DESIGN §8: one loaded engine serves many sessions from different threads at once, and
every answer is bit-identical to running the sessions one after another."""

from __future__ import annotations

import threading

import pytest
import torch

QUESTIONS = ("what is happening?", "what color is the car?", "who opens the door?")


def _script(session, video, log):
    """Add 6 frames, ask, repeat: the token ids and first-step logits of every answer."""
    for round_, lo in enumerate(range(0, len(video), 6)):
        session.add_frames(video[lo : lo + 6])
        answer = session.answer(QUESTIONS[round_ % len(QUESTIONS)], max_new_tokens=4, return_logits=True)
        log.append((answer.token_ids, answer.logits[0]))


@pytest.fixture(scope="module")
def clip_json(tmp_path_factory):
    from research.tiny import write_tiny_clip_config

    return write_tiny_clip_config(str(tmp_path_factory.mktemp("clip")))


CONFIGS = {
    "windowed": dict(window_tokens=48, topk_frames=3, chunk_frames=4),
    "every-frame": dict(window_tokens=None, topk_frames=None, chunk_frames=5),
    "disk-tier": dict(window_tokens=32, topk_frames=2, chunk_frames=3, offload="disk", ram_budget_bytes=4096),
    "external": dict(window_tokens=48, topk_frames=3, chunk_frames=4, retrieval="external", clip_pretrained=None),
    "hybrid-int8": dict(window_tokens=48, topk_frames=3, chunk_frames=4, retrieval="hybrid", clip_pretrained=None, kv_quant="int8"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_threads_equal_serial(load, frames, clip_json, name):
    config = dict(CONFIGS[name])
    if config.get("retrieval") in ("external", "hybrid"):
        config["clip_model"] = clip_json
    engine = load(**config)
    videos = [frames(18, seed=20 + i) for i in range(4)]
    serial = []
    for video in videos:
        log = []
        _script(engine.new_session(), video, log)
        serial.append(log)
    logs = [[] for _ in videos]
    errors = []
    barrier = threading.Barrier(len(videos))

    def run(i):
        try:
            session = engine.new_session()
            barrier.wait()
            _script(session, videos[i], logs[i])
        except BaseException as exc:  # reported below, with the thread's own traceback
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(videos))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(logs, serial):
        assert [tokens for tokens, _ in got] == [tokens for tokens, _ in want]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, want))
    assert engine.patch.hook_count == 0 and not engine.patch.active


def test_one_session_from_two_threads_is_serialized(load, frames):
    """Calls on one session from several threads run one at a time: no frame is lost or
    encoded twice, and questions in between see a consistent stream."""
    engine = load(window_tokens=32, topk_frames=2, chunk_frames=3)
    video = frames(24, seed=30)
    session = engine.new_session()
    session.add_frames(video[:1])
    errors = []

    def feed(part):
        try:
            for i in range(part, 24, 3):
                session.add_frames(video[i : i + 1])
                session.ask("what?", max_new_tokens=1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=feed, args=(p,)) for p in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    session.flush()
    stats = session.stats()
    assert session.frames == stats["encoded_frames"] == 25 and stats["pending_frames"] == 0


def test_stress_many_threads_many_rounds(load, frames):
    """8 sessions, 5 rounds each, twice: every answer equals the serial run's."""
    engine = load(window_tokens=32, topk_frames=2, chunk_frames=2)
    videos = [frames(30, seed=40 + i, size=(16, 16)) for i in range(8)]
    serial = []
    for video in videos:
        log = []
        _script(engine.new_session(), video, log)
        serial.append([tokens for tokens, _ in log])
    for _ in range(2):
        logs = [[] for _ in videos]
        threads = [threading.Thread(target=_script, args=(engine.new_session(), v, logs[i])) for i, v in enumerate(videos)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [[tokens for tokens, _ in log] for log in logs] == serial
