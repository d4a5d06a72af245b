"""Extension points are interfaces with registries: a retrieval method, a token reducer and a
storage backend, each one file in ``tests/extensions/`` plus one registration line, work end to
end in a session and give what a brute-force computation says they must."""

import pytest
import torch

from lmms_rekv.registry import BACKENDS, REDUCERS, RETRIEVERS

QUESTION = "What happens in the video?"


@pytest.fixture
def registered():
    from extensions import dict_backend, first_tokens_reducer, latest_retriever

    for module in (latest_retriever, first_tokens_reducer, dict_backend):
        module.register()
    yield
    RETRIEVERS.unregister("latest")
    REDUCERS.unregister("first")
    BACKENDS.unregister("dict")


def test_a_registered_retriever_picks_the_blocks(load, frames, registered):
    engine = load(window_tokens=40, topk_frames=3, recent_frames=0, retrieval="latest", layer_frames="own")
    session = engine.new_session()
    session.add_frames(frames(9, seed=3))
    answer = session.answer(QUESTION, max_new_tokens=2)
    assert all(s.tolist() == [6, 7, 8] for s in answer.selected)
    session.close()


def test_a_registered_reducer_stores_what_it_keeps(load, frames, registered):
    video = frames(6, seed=4)
    plain, first = load(window_tokens=40, topk_frames=2).new_session(), load(window_tokens=40, topk_frames=2,
                                                                              token_reduction="first", token_keep=0.25).new_session()
    for session in (plain, first):
        session.add_frames(video)
        session.flush()
    keep = first.stats()["stored_block_tokens"]
    assert keep == plain.stats()["stored_block_tokens"] // 4
    for layer in range(plain.state.store.layers):
        for block in range(6):
            for full, kept in zip(plain.state.store.block(layer, block), first.state.store.block(layer, block)):
                assert torch.equal(full[:keep], kept)
    # a question attends to the kept tokens only: 2 retrieved blocks of a quarter of the tokens each
    saved = 2 * (plain.stats()["stored_block_tokens"] - keep)
    assert plain.answer(QUESTION, max_new_tokens=1).context_tokens - first.answer(QUESTION, max_new_tokens=1).context_tokens == saved


def test_a_registered_backend_answers_bit_for_bit_as_memory(load, frames, registered):
    video = frames(10, seed=5)
    answers = {}
    for tier in ("cpu", "dict"):
        session = load(window_tokens=40, topk_frames=4, chunk_frames=4, offload=tier).new_session()
        session.add_frames(video)
        answers[tier] = session.answer(QUESTION, max_new_tokens=3, return_logits=True, eos_token_ids=())
        assert session.stats()["cpu_bytes"] == session.state.store.used_bytes > 0
        session.close()
    assert answers["dict"].token_ids == answers["cpu"].token_ids
    assert all(torch.equal(a, b) for a, b in zip(answers["dict"].logits, answers["cpu"].logits))


def test_unknown_names_are_refused_with_the_registered_ones(registered):
    from lmms_rekv import ReKVConfig

    with pytest.raises(ValueError, match=r"retrieval must be one of .*'latest'.* \(did you mean latest\?\)"):
        ReKVConfig(retrieval="lates")
    with pytest.raises(ValueError, match="already registered"):
        RETRIEVERS.register("internal", object())
    RETRIEVERS.unregister("latest")
    with pytest.raises(ValueError, match="retrieval must be one of"):
        ReKVConfig(retrieval="latest")
    RETRIEVERS.register("latest", object())  # the fixture unregisters it
