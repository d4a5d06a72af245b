"""Eager encoding (DESIGN §10): the incomplete last chunk is encoded at once into a
provisional tail, so a question never waits for a backlog, while the stored KV stays a
function of the frames alone (committed on the ``chunk_frames`` grid); the background
encoder gives the same stream as blocking calls."""

from __future__ import annotations

import threading

import pytest
import torch

from lmms_rekv import ReKVConfig


def _blocks(session):
    """Every stored block and summary of ``session``, decoded."""
    store = session.state.store
    out = [store.all_summaries().clone()]
    for layer in range(store.layers):
        for f in range(store.blocks):
            out.extend(t.clone() for t in store.block(layer, f))
    return out


def _feed(session, video, step, ask_every=0, block=True):
    for i, lo in enumerate(range(0, len(video), step)):
        session.add_frames(video[lo : lo + step], block=block)
        if ask_every and i % ask_every == ask_every - 1:
            session.ask("what is happening?", max_new_tokens=2)
    session.flush()
    return session


@pytest.mark.parametrize("window, eager, offload", [(None, True, "cpu"), (None, False, "cpu"), (30, True, "cpu"), (30, False, "cpu"),
                                                    (30, True, "disk")])
def test_stored_blocks_do_not_depend_on_arrival_questions_or_threads(load, frames, window, eager, offload, tmp_path):
    """14 frames, chunks of 4: whatever the arrival pattern, the questions in between and
    the background encoder, the flushed stream is bit-identical (the 2-frame tail is adopted
    when it was encoded in one forward, re-encoded otherwise: both give the same blocks;
    on the disk tier adopting it spills)."""
    tier = dict(offload="disk", ram_budget_bytes=3 * 8192, offload_dir=str(tmp_path)) if offload == "disk" else {}
    engine = load(window_tokens=window, topk_frames=None, chunk_frames=4, eager=eager, **tier)
    video = frames(14, seed=31)
    reference = _feed(engine.new_session(), video, 14)
    expected = _blocks(reference)
    runs = [(1, 0, True), (3, 2, True), (5, 1, True), (2, 3, False), (1, 4, False)]
    for step, ask_every, block in runs:
        session = _feed(engine.new_session(), video, step, ask_every, block)
        got = _blocks(session)
        assert session.state.store.blocks == 14 and session.state.stream_tokens == reference.state.stream_tokens
        assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected)), (step, ask_every, block)
        for mine, theirs in zip(session.state.win_k + session.state.win_v, reference.state.win_k + reference.state.win_v):
            assert torch.equal(mine, theirs)
        session.close()


def _count_encodes(session):
    calls = []
    original = session.writer.encode

    def counted(pixels, state=None):
        calls.append(pixels.shape[0])
        return original(pixels, state)

    session.writer.encode = counted
    return calls


def test_question_right_after_a_burst_encodes_nothing(load, frames):
    """Eager: a burst of chunk - 1 frames is encoded by ``add_frames``; the question runs no
    encoding forward. Lazy (``eager=False``): the question encodes the tail itself. Both
    answer the same (the tail is one forward either way), and neither commits it."""
    video = frames(11, seed=32)
    answers, encoded_by_question = {}, {}
    for eager in (True, False):
        engine = load(window_tokens=40, topk_frames=3, chunk_frames=8, eager=eager)
        session = engine.new_session()
        session.add_frames(video[:4])
        session.add_frames(video[4:11])  # commits frames 0..7, the burst leaves 3 waiting
        calls = _count_encodes(session)
        answers[eager] = session.answer("what is happening?", max_new_tokens=3, return_logits=True)
        encoded_by_question[eager] = list(calls)
        stats = session.stats()
        assert stats["blocks"] == 8 and stats["pending_frames"] == 3 and stats["tail_frames"] == 3 and stats["frames"] == 11
    assert encoded_by_question == {True: [], False: [3]}
    assert answers[True].token_ids == answers[False].token_ids
    assert all(torch.equal(a, b) for a, b in zip(answers[True].logits, answers[False].logits))


def test_answers_from_the_tail_equal_the_flushed_stream(load, frames):
    """A question on the provisional tail sees exactly what it would see once the tail is
    committed (one-forward tails are adopted as they are)."""
    engine = load(window_tokens=None, topk_frames=None, chunk_frames=4)
    video = frames(10, seed=33)
    live = engine.new_session()
    live.add_frames(video)
    before = live.answer("what color is the car?", max_new_tokens=3, return_logits=True)
    assert live.stats()["blocks"] == 8
    live.flush()
    after = live.answer("what color is the car?", max_new_tokens=3, return_logits=True)
    assert live.stats()["blocks"] == 10 and live.stats()["tail_frames"] == 0
    assert before.token_ids == after.token_ids
    assert all(torch.equal(a, b) for a, b in zip(before.logits, after.logits))
    assert [s.tolist() for s in before.selected] == [list(range(10))] * len(before.selected)


def test_background_encoder_answers_from_every_frame_added_before(load, frames):
    """``add_frames(block=False)`` returns at once; a question waits for the frames submitted
    before it; tokens equal blocking calls (the tail's batching may differ, the committed
    chunks cannot)."""
    engine = load(window_tokens=40, topk_frames=None, chunk_frames=4)
    video = frames(15, seed=34)
    blocking, background = engine.new_session(), engine.new_session().start()
    threads_inside = threading.active_count()
    try:
        for lo in range(0, 15, 5):
            blocking.add_frames(video[lo : lo + 5])
            for i in range(lo, lo + 5):
                background.add_frames(video[i : i + 1], block=False)
            assert background.frames == lo + 5  # queued frames count as added
            want = blocking.answer("who opens the door?", max_new_tokens=3, return_logits=True)
            got = background.answer("who opens the door?", max_new_tokens=3, return_logits=True)
            assert [s.tolist() for s in got.selected] == [list(range(lo + 5))] * len(got.selected)
            assert got.token_ids == want.token_ids
            assert max((a - b).abs().max().item() for a, b in zip(got.logits, want.logits)) < 1e-4
    finally:
        background.close()
        blocking.close()
    assert threading.active_count() == threads_inside - 1  # close() ended the encoder thread


def test_background_failure_is_raised_in_the_caller_and_the_session_goes_on(load, frames):
    engine = load(window_tokens=40, topk_frames=2, chunk_frames=4)
    video = frames(6, seed=35)
    session = engine.new_session()
    session.add_frames(video[:2])
    original = session.writer.add

    def broken(batches, more_waiting):
        raise OSError("device lost")

    session.writer.add = broken
    session.add_frames(video[2:4], block=False)
    with pytest.raises(RuntimeError, match=r"background encoding failed \(OSError: device lost\); 2 submitted frames were not added"):
        session.ask("what is happening?")
    session.writer.add = original
    session.add_frames(video[4:6], block=False)  # a new encoder thread
    assert session.frames == 4 and session.ask("what is happening?", max_new_tokens=2) is not None
    session.close()


def test_session_context_manager_stops_the_encoder(load, frames):
    engine = load(window_tokens=40, topk_frames=2, chunk_frames=4)
    before = threading.active_count()
    with engine.new_session().start() as session:
        assert threading.active_count() == before + 1
        session.add_frames(frames(5, seed=36), block=False)
    assert threading.active_count() == before and session.state.store.blocks == 4


def test_eager_is_a_config_field():
    assert ReKVConfig.from_strings(eager="false").eager is False
    assert ReKVConfig.from_strings(eager="True").eager is True
    with pytest.raises(ValueError, match="eager"):
        ReKVConfig.from_strings(eager="maybe")
    with pytest.raises(ValueError, match="eager"):
        ReKVConfig(eager=1)


def test_background_queue_applies_back_pressure():
    """A source faster than the encoder blocks in ``submit`` once the queue is full, and
    every frame is added, in order."""
    from lmms_rekv.engine.background import BackgroundEncoder

    release, added = threading.Event(), []

    def slow_add(batches, more_waiting):
        release.wait()
        added.extend(int(b[0, 0, 0, 0]) for b in batches)

    encoder = BackgroundEncoder(slow_add, max_queued_frames=2)
    frame = lambda i: torch.full((1, 2, 2, 3), i, dtype=torch.uint8)  # noqa: E731
    encoder.submit(frame(0))
    while encoder.queued_frames:  # the thread took frame 0 and waits in slow_add
        threading.Event().wait(0.01)
    encoder.submit(frame(1))
    encoder.submit(frame(2))  # queue full now
    third = threading.Thread(target=encoder.submit, args=(frame(3),))
    third.start()
    third.join(timeout=0.3)
    assert third.is_alive() and encoder.queued_frames == 2  # blocked: no room
    release.set()
    third.join(timeout=10)
    encoder.wait()
    encoder.stop()
    assert not third.is_alive() and added == [0, 1, 2, 3]
