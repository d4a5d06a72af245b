"""Issue 16: an encode that fails part-way (a full disk while the disk tier spills, out of
memory in some layer) loses nothing -- the session stays exactly as before the call, the
frames wait, and the next call encodes them: the stream ends bit-identical to one that
never failed."""

from __future__ import annotations

import pytest
import torch
from test_eager import _blocks


class Injected(RuntimeError):
    pass


def _fail_once_at(engine, layer: int):
    """Make decoder ``layer`` raise on its next forward (once); returns the hook handle."""
    module = engine.backbone.text_model.layers[layer]
    fired = []

    def hook(mod, args, kwargs):
        if not fired:
            fired.append(True)
            raise Injected(f"injected failure in layer {layer}")

    return module.register_forward_pre_hook(hook, with_kwargs=True), fired


def _same_stream(session, reference) -> None:
    got, expected = _blocks(session), _blocks(reference)
    assert session.state.store.blocks == reference.state.store.blocks
    assert session.state.stream_tokens == reference.state.stream_tokens
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))
    for mine, theirs in zip(session.state.win_k + session.state.win_v, reference.state.win_k + reference.state.win_v):
        assert torch.equal(mine, theirs)


def _same_answer(session, reference) -> None:
    want = reference.answer("what is happening?", max_new_tokens=3, return_logits=True)
    got = session.answer("what is happening?", max_new_tokens=3, return_logits=True)
    assert got.token_ids == want.token_ids and all(torch.equal(a, b) for a, b in zip(got.logits, want.logits))


@pytest.mark.parametrize("where", ["chunk", "tail", "prefix"])
@pytest.mark.parametrize("layer", [0, 1])
def test_a_failed_encode_leaves_the_session_unchanged_and_loses_no_frame(load, frames, where, layer):
    """14 frames in chunks of 4; the failure hits the prefix (first call), a chunk commit
    or the provisional tail's forward at ``layer``: the call raises, ``frames`` still counts
    every frame, and after the next calls the stored blocks, summaries, window and answer
    logits equal a session that never failed."""
    engine = load(window_tokens=30, topk_frames=2, chunk_frames=4)
    video = frames(14, seed=61)
    reference = engine.new_session()
    reference.add_frames(video)
    session = engine.new_session()
    first, failing = {"prefix": (0, 3), "chunk": (3, 3), "tail": (4, 1)}[where]
    session.add_frames(video[:first]) if first else None
    handle, fired = _fail_once_at(engine, layer)
    try:
        with pytest.raises(Injected) as info:
            session.add_frames(video[first : first + failing])
    finally:
        handle.remove()
    assert fired and session.frames == first + failing
    assert any("wait to be encoded" in note for note in getattr(info.value, "__notes__", []))
    so_far = engine.new_session()
    so_far.add_frames(video[: first + failing])
    _same_answer(session, so_far)  # a question right after the failure encodes what waits
    session.add_frames(video[first + failing :])
    _same_answer(session, reference)
    session.flush()
    reference.flush()
    _same_stream(session, reference)


def test_a_background_failure_keeps_the_frames_it_had_taken(load, frames):
    """In the background encoder a failed encode reports no frame as lost (they wait in
    the session) and the next question answers from every frame."""
    engine = load(window_tokens=30, topk_frames=2, chunk_frames=4)
    video = frames(9, seed=62)
    reference = engine.new_session()
    reference.add_frames(video)
    session = engine.new_session()
    session.add_frames(video[:3])
    handle, fired = _fail_once_at(engine, 1)
    try:
        session.add_frames(video[3:6], block=False)
        with pytest.raises(RuntimeError, match=r"\(Injected: injected failure in layer 1\); 0 submitted frames were not added"):
            session.wait()
    finally:
        handle.remove()
    session.add_frames(video[6:], block=False)
    assert fired and session.frames == 9
    _same_answer(session, reference)
    session.close()
