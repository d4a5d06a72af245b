"""Invariant 3: per-layer selection equals a brute-force recomputation of the score from the
stored blocks and independently captured question queries; time order preserved."""

import pytest
import torch

from lmms_rekv.retrieval import frame_scores
from reference import answer_capturing_queries
from lmms_rekv.selection import SelectionPolicy, select

QUESTION = "where is the red cup after the door opens?"


def _brute_force(store, layer, query_tokens, score, topk, group):
    """Concatenate heads, repeat kv heads, average tokens -- the score straight from its definition."""
    q = query_tokens.float().mean(dim=0)  # (Hq * D,)
    scores = []
    for f in range(store.frames):
        keys, _ = store.frame(layer, f)  # (T, Hkv, D)
        k = keys.float().repeat_interleave(group, dim=1).mean(dim=0).reshape(-1)
        s = torch.dot(q, k)
        if score == "cosine":
            s = s / (q.norm() * k.norm())
        scores.append(s)
    scores = torch.stack(scores)
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))[:topk]
    return sorted(order), scores


@pytest.mark.parametrize("score", ["dot", "cosine"])
def test_selection_equals_brute_force(load, frames, score):
    engine = load(window_tokens=48, topk_frames=3, chunk_frames=4, score=score)
    session = engine.new_session()
    session.add_frames(frames(12, seed=5))
    answer, seen = answer_capturing_queries(engine, session, QUESTION, max_new_tokens=2)
    store = session.state.store
    text = engine.model.config.text_config
    group = text.num_attention_heads // text.num_key_value_heads
    picks = []
    for layer, selected in enumerate(answer.selected):
        expected, scores = _brute_force(store, layer, seen[layer][1:], score, 3, group)
        assert selected.tolist() == expected
        assert selected.tolist() == sorted(selected.tolist())
        # the library's vectorised score matches the definition too
        q_mean = seen[layer][1:].float().mean(0).view(text.num_attention_heads, -1)
        assert torch.allclose(frame_scores(q_mean, store.summaries(layer), score), scores, rtol=1e-5, atol=1e-5)
        picks.append(tuple(expected))
    assert len(set(picks)) > 1, "layers should be able to pick different frames"


def test_select_frames_keeps_time_order_and_handles_all():
    scores = torch.tensor([0.1, 5.0, -1.0, 3.0, 4.0])
    assert select(scores, SelectionPolicy(topk=3)).tolist() == [1, 3, 4]
    assert select(scores, SelectionPolicy(topk=None)).tolist() == [0, 1, 2, 3, 4]
    assert select(scores, SelectionPolicy(topk=9)).tolist() == [0, 1, 2, 3, 4]


def test_store_unchanged_by_questions(load, frames):
    engine = load(window_tokens=32, topk_frames=4, chunk_frames=3)
    session = engine.new_session()
    session.add_frames(frames(10, seed=6))
    session.flush()
    store = session.state.store
    arenas = lambda: (*store.backend.rows(0, 10).values(), store.all_summaries())
    before = [t.clone() for t in arenas()]
    window = [t.clone() for t in session.state.win_k]
    first = session.answer(QUESTION, max_new_tokens=5, eos_token_ids=())
    session.answer("what color is the car?", max_new_tokens=5)
    again = session.answer(QUESTION, max_new_tokens=5, eos_token_ids=())
    assert first.token_ids == again.token_ids
    for a, b in zip(before, arenas()):
        assert torch.equal(a, b)
    for a, b in zip(window, session.state.win_k):
        assert torch.equal(a, b)
