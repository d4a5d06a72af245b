"""lmms-eval's multi-round protocol: a list of per-round answers, each round from its own
visuals, and rounds that continue one stream encode each frame once."""

import dataclasses

import numpy as np
import pytest
from lmms_eval.api.instance import Instance

from lmms_rekv.io.video import read_video, write_video

FPS = 2  # sampling rate of the model below; clips are written at 4 fps


@pytest.fixture(scope="module")
def make_lm(tiny_dir):
    from lmms_rekv.integrations.lmms_eval_model import ReKVLlavaOV

    def make(**extra):
        args = dict(pretrained=tiny_dir, dtype="float32", device="cpu", window_tokens=64, topk_frames=4, chunk_frames=4, fps=FPS)
        return ReKVLlavaOV(**dict(args, **extra))

    return make


@pytest.fixture(scope="module")
def lm(make_lm):
    return make_lm()


def _source(seed=0, seconds=9, size=(40, 48)):
    return np.random.default_rng(seed).integers(0, 256, (seconds * 4, *size, 3), dtype=np.uint8)


def _cuts(tmp_path, source, seconds, name="s", lossless=True):
    """Files ``{name}_{i}.mp4``: the source cut at each of ``seconds`` (as OVO-Bench's chunks)."""
    return [write_video(str(tmp_path / f"{name}_{i}.mp4"), source[: int(s * 4)], fps=4, lossless=lossless) for i, s in enumerate(seconds)]


def _request(lm, rounds, first_visual=None):
    """A multi-round document: round i asks ``rounds[i][1]`` about ``rounds[i][0]``."""

    def doc_to_text(doc, previous_output, round_idx, previous_round_info, lmms_eval_specific_kwargs=None):
        if round_idx >= len(doc["rounds"]):
            return None, None, True, previous_output, None
        visual, question = doc["rounds"][round_idx]
        return ([visual] if visual else None), question, False, previous_output, {"seen": round_idx}

    doc = {"rounds": rounds}
    lm.task_dict = {"t": {"test": [doc]}}
    args = (rounds[0][1], {"max_new_tokens": 5, "until": ["\n"]}, lambda d: [first_visual or d["rounds"][0][0]], doc_to_text, 0, "t", "test")
    return Instance(request_type="generate_until_multi_round", arguments=args, idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1})


def _fresh(lm, path, question):
    session = lm.engine.new_session(fps=FPS)
    session.add_frames(read_video(path, fps=FPS))
    return session.ask(question, max_new_tokens=5, stop=["\n"]).strip()


def _count_encodes(monkeypatch, lm, log):
    """Record ``(frames, committed?)`` of every encoding forward of the sessions ``lm`` makes."""
    real = lm.engine.new_session

    def counting(fps=None):
        session = real(fps=fps)
        encode = session.writer.encode
        session.writer.encode = lambda pixels, state=None: (log.append((pixels.shape[0], state is None)), encode(pixels, state))[1]
        return session

    monkeypatch.setattr(lm.engine, "new_session", counting)


def test_rounds_that_extend_one_stream_encode_each_frame_once(lm, tmp_path, monkeypatch):
    cuts = _cuts(tmp_path, _source(), [3, 5.5, 9])  # 6, 11, 18 frames at 2 fps
    rounds = [(c, f"what is happening at round {i}?") for i, c in enumerate(cuts)]
    log = []
    _count_encodes(monkeypatch, lm, log)
    (answers,) = lm.generate_until_multi_round([_request(lm, rounds)])
    monkeypatch.undo()
    assert isinstance(answers, list) and len(answers) == 3
    # each round answers from its own chunk: equal to a one-shot question on that chunk
    assert answers == [_fresh(lm, c, q) for c, q in rounds]
    committed = [n for n, kept in log if kept]
    assert sum(committed) == 16 and committed == [4] * 4  # every complete chunk of the 18 frames stored once
    provisional = sum(n for n, kept in log if not kept)
    assert provisional <= 3 * 3  # the incomplete last chunk of each round: < chunk_frames frames each
    # without reuse, every round is encoded from zero
    log.clear()
    fresh_lm = lm
    monkeypatch.setattr(fresh_lm.runner, "settings", dataclasses.replace(fresh_lm.runner.settings, reuse_streams=False))
    _count_encodes(monkeypatch, fresh_lm, log)
    assert fresh_lm.generate_until_multi_round([_request(fresh_lm, rounds)]) == [answers]
    assert sum(n for n, kept in log if kept) == 4 + 8 + 16


def test_same_video_earlier_cut_and_another_video(lm, tmp_path):
    """None = the video before; a shorter cut answers as of its last frame; another video is
    a fresh session -- each equal to a one-shot question on that file."""
    source = _source(1)
    long, short = _cuts(tmp_path, source, [8, 4])
    other = write_video(str(tmp_path / "other.mp4"), _source(2, seconds=5), fps=4, lossless=True)
    rounds = [(long, "first?"), (None, "again, same video?"), (short, "as of 4 s?"), (other, "other video?"), (long, "back?")]
    (answers,) = lm.generate_until_multi_round([_request(lm, rounds)])
    visuals = [long, long, short, other, long]
    assert answers == [_fresh(lm, v, q) for v, (_, q) in zip(visuals, rounds)]


def test_a_failed_round_is_empty_and_the_others_are_answered(lm, tmp_path):
    good = _cuts(tmp_path, _source(3), [3, 6])
    rounds = [(good[0], "one?"), (str(tmp_path / "missing_1.mp4"), "two?"), (good[1], "three?")]
    lm.failures.clear()
    (answers,) = lm.generate_until_multi_round([_request(lm, rounds)])
    assert len(answers) == 3 and answers[1] == "" and answers[0] == _fresh(lm, good[0], "one?")
    assert answers[2] == _fresh(lm, good[1], "three?")
    assert len(lm.failures) == 1 and lm.failures[0]["error"].startswith("RoundError: round 1: VideoError: video not found")


def test_doc_to_text_errors_do_not_end_the_run(lm, tmp_path):
    """A task whose doc_to_text raises for a round: that round is empty, the next is asked."""
    clip = _cuts(tmp_path, _source(4), [4])[0]

    def doc_to_text(doc, previous_output, round_idx, previous_round_info):
        if round_idx == 1:
            raise AssertionError("chunk missing")
        if round_idx >= 3:
            return None, None, True, previous_output, None
        return None, f"q{round_idx}?", False, previous_output, None

    lm.task_dict = {"t": {"test": [{}]}}
    args = ("q0?", {"max_new_tokens": 5, "until": ["\n"]}, lambda d: [clip], doc_to_text, 0, "t", "test")
    request = Instance(request_type="generate_until_multi_round", arguments=args, idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1})
    lm.failures.clear()
    (answers,) = lm.generate_until_multi_round([request])
    assert answers == [_fresh(lm, clip, "q0?"), "", _fresh(lm, clip, "q2?")]
    assert [f["error"] for f in lm.failures] == ["RoundError: round 1: AssertionError: chunk missing"]


def test_lossy_chunks_need_a_tolerance(make_lm, tmp_path):
    """Chunks re-encoded separately with a lossy codec decode to slightly different prefix
    frames: exact matching encodes each round afresh; ``stream_tolerance`` reuses them."""
    from lmms_rekv.integrations.streams import FramePrints

    source = _source(5, size=(64, 64))
    source = np.repeat(np.repeat(source[:, ::8, ::8], 8, axis=1), 8, axis=2)  # smooth tiles, as real video
    cuts = _cuts(tmp_path, source, [3, 6, 9], name="lossy", lossless=False)
    first, longer = read_video(cuts[0], fps=FPS), read_video(cuts[2], fps=FPS)[: 6]
    assert not np.array_equal(first, longer)  # the lossy re-encode changed the prefix
    prints = FramePrints(tolerance=4.0)
    for frame in first:
        prints.add(frame)
    assert all(prints.matches(i, frame) for i, frame in enumerate(longer))
    assert not prints.matches(0, read_video(cuts[0], fps=FPS)[3])  # another moment is not the same frame
    rounds = [(c, f"round {i}?") for i, c in enumerate(cuts)]
    for tolerance, fresh in ((0, 3), (4.0, 1)):
        lm = make_lm(stream_tolerance=tolerance)
        opened = []
        real = lm.runner.open
        lm.runner.open = lambda path, start: opened.append(path) or real(path, start)
        (answers,) = lm.generate_until_multi_round([_request(lm, rounds)])
        assert len(answers) == 3 and len(opened) == fresh, (tolerance, opened)


def test_bad_model_args_fail_before_the_model_loads():
    from lmms_rekv.integrations.lmms_eval_model import ReKVLlavaOV

    with pytest.raises(ValueError, match="stream_tolerance must be >= 0"):
        ReKVLlavaOV(pretrained="/no/such/model", stream_tolerance=-1)
