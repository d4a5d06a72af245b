"""Hub-block correction (``ReKVConfig.hub_correction``): a block that every query ranks high stops
winning; the corrected selection equals a brute-force recomputation of the documented score from
the stored blocks and independently captured queries; off (or with every block retrieved) it
changes nothing."""

import pytest
import torch
from helpers.reference import answer_capturing_queries

from lmms_rekv import ReKVConfig
from lmms_rekv.retrieval.scoring import frame_scores

QUESTION = "where is the red cup after the door opens?"


def _planted(seed: int = 0):
    """Queries sharing a direction ``u`` (question tokens and template tokens alike) plus each
    token's own direction; block 2 is a hub (``u`` strongly), block 4 the needle (token 1's own
    direction), the rest small noise. Shapes: queries ``(Hq=1, T, D)``, summaries ``(F, 1, D)``."""
    g = torch.Generator().manual_seed(seed)
    dim, tokens = 32, 5
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=g))[0]
    u, own = basis[0], basis[1 : 1 + tokens]
    queries = (2.0 * u + own)[None]  # (1, T, D)
    neutral = (2.0 * u + basis[10:13])[None]  # template tokens: the shared direction, other own directions
    summaries = 0.05 * torch.randn(8, 1, dim, generator=g)
    summaries[2, 0] += 1.2 * u
    summaries[4, 0] += 2.0 * own[1]
    return queries, neutral, summaries


@pytest.mark.parametrize("pool", ["max", "head"])
def test_a_planted_hub_block_stops_winning(pool):
    queries, neutral, summaries = _planted()
    assert int(frame_scores(queries, summaries, pool=pool).argmax()) == 2  # uncorrected: the hub wins
    for hub in ("center", "template"):
        scores = frame_scores(queries, summaries, pool=pool, hub=hub, neutral=neutral)
        assert int(scores.argmax()) == 4, hub  # the block one question token asks for
        assert scores[4] - scores[2] > 1.0, hub  # by a wide margin


def _z_table(store, layer, query_rows, group):
    """``(rows, F)``: each query row's dot product with each block's mean key (KV heads
    repeated), z-normalised over the blocks -- straight from the definition, block by block."""
    table = []
    for q in query_rows.float():
        row = []
        for f in range(store.blocks):
            keys, _ = store.block(layer, f)
            row.append(torch.dot(q, keys.float().repeat_interleave(group, dim=1).mean(dim=0).reshape(-1)))
        table.append(torch.stack(row))
    table = torch.stack(table)
    return (table - table.mean(1, keepdim=True)) / table.std(1, unbiased=False, keepdim=True)


@pytest.mark.parametrize("hub", ["center", "template"])
def test_corrected_selection_equals_brute_force(load, frames, hub):
    engine = load(window_tokens=48, topk_frames=3, chunk_frames=4, query_pool="max", layer_frames="own", hub_correction=hub,
                  recent_frames=0)
    session = engine.new_session()
    session.add_frames(frames(12, seed=5))
    answer, seen = answer_capturing_queries(engine, session, QUESTION, max_new_tokens=2)
    text = engine.model.config.text_config
    group = text.num_attention_heads // text.num_key_value_heads
    start, end = engine.backbone.prompt.question_span(QUESTION)
    offset, prompt = engine.backbone.suffix_offset(), len(engine.prompt_suffix_ids(QUESTION))
    for layer, selected in enumerate(answer.selected):
        question = _z_table(session.state.store, layer, seen[layer][offset + start : offset + end], group)
        reference = question if hub == "center" else _z_table(session.state.store, layer, seen[layer][offset + end : offset + prompt], group)
        scores = question.max(dim=0).values - reference.mean(dim=0)
        assert selected.tolist() == sorted(scores.topk(3).indices.tolist())


def test_off_and_with_every_block_it_changes_nothing(load, frames):
    video = frames(9, seed=2)
    answers = {}
    for hub in (None, "center", "template"):
        session = load(window_tokens=None, topk_frames=None, chunk_frames=4, hub_correction=hub).new_session()
        session.add_frames(video)
        answers[hub] = session.answer(QUESTION, max_new_tokens=6, return_logits=True, eos_token_ids=())
    for hub in ("center", "template"):  # every block retrieved: the correction only reorders, nothing to reorder
        assert answers[hub].token_ids == answers[None].token_ids
        assert all(torch.equal(a, b) for a, b in zip(answers[hub].logits, answers[None].logits))


def test_hub_correction_is_validated():
    with pytest.raises(ValueError, match="hub_correction must be one of"):
        ReKVConfig(hub_correction="prior")
    with pytest.raises(ValueError, match="per-token scores"):
        ReKVConfig(hub_correction="center", query_pool="mean")
    with pytest.raises(ValueError, match="query_span='question'"):
        ReKVConfig(hub_correction="template", query_span="prompt")


@pytest.mark.parametrize("recent", [1, 2])
def test_recent_frames_are_in_the_answer_and_the_rest_is_the_same_ranking(load, frames, recent):
    """``recent_frames=r`` inside ``topk_frames=k``: every layer's selection holds the last r blocks
    and k - r others, and those others are among the k the plain ranking picks (at most r recent
    blocks can outrank them) -- the present moment is added, the ranking is not changed."""
    video = frames(14, seed=21)
    picked = {}
    for r in (0, recent):
        session = load(window_tokens=48, topk_frames=4, chunk_frames=4, recent_frames=r).new_session()
        session.add_frames(video)
        picked[r] = [set(s.tolist()) for s in session.answer(QUESTION, max_new_tokens=2).selected]
        session.close()
    last = set(range(14 - recent, 14))
    for plain, with_recent in zip(picked[0], picked[recent]):
        assert len(with_recent) == 4 and last <= with_recent
        others = with_recent - last
        assert len(others) == 4 - recent and others <= plain
