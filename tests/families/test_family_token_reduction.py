"""Token reduction on every M-RoPE family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL; tiny random
checkpoints): keeping every token is exactly the vanilla model (square and non-square frames,
every rule); cut, each kept or merged token stands where its slot stood in the family's own
layout -- checked per layer against the positions transformers' ``get_rope_index`` gives the
whole video, the blocks found in the processor's own prompt ids -- and the store, the stats
and a question's context count the kept tokens only; a saved stream and the disk tier keep
the slots."""

from __future__ import annotations

from typing import List

import pytest
import torch
from helpers.mrope_reference import QUESTION, SPECS, vanilla_answer, video_frames

FAMILIES = sorted(SPECS)
KINDS = ["temporal", "salient", "merge"]


@pytest.fixture(scope="session")
def engines(qwen_engines):
    return lambda family: lambda **config: qwen_engines(family)(**{**SPECS[family].config, **config})


def _stream(engine, family: str, video, **session):
    s = engine.new_session(fps=SPECS[family].fps, frames=len(video), **session)
    s.add_frames(video[:5])
    s.add_frames(video[5:])
    return s


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("square", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_keeping_every_token_is_the_vanilla_model(engines, family, square, kind):
    spec = SPECS[family]
    size = spec.size if square else spec.other_size
    sized = {} if square else {"frame_size": None}  # non-square: the stream sized as the processor sizes it
    engine = engines(family)(window_tokens=None, topk_frames=None, chunk_frames=4, token_reduction=kind, token_keep=1.0, **sized)
    video = video_frames(10, size=size, seed=3)
    session = _stream(engine, family, video)
    answer = session.answer(QUESTION, max_new_tokens=4, return_logits=True)
    tokens, logits, _ = vanilla_answer(engine, video, QUESTION, 4, fps=spec.fps)
    assert answer.token_ids == [t for t in tokens if t not in engine.generation_settings().eos_token_ids]
    assert max((a - b).abs().max().item() for a, b in zip(answer.logits, logits)) <= 1e-4
    assert session.stats()["stored_block_tokens"] == session.layout.block_tokens


def _whole_blocks(engine, ids: torch.Tensor, blocks: int) -> List[torch.Tensor]:
    """Brute force from the processor's prompt ids: each block's token indices in the prompt
    (Qwen2-VL/2.5-VL: its run of pads; Qwen3-VL: its timestamp text, vision start, pads and
    vision end -- the text between the previous block's end and its vision end)."""
    cfg, ids = engine.model.config, ids[0]
    pads = (ids == cfg.video_token_id).nonzero().squeeze(1)
    if engine.backbone.model_type != "qwen3_vl":
        return list(pads.view(blocks, -1))
    ends = (ids == cfg.vision_end_token_id).nonzero().squeeze(1)
    ends = ends[ends > pads[0]][:blocks]  # each block's own vision end (not the template's)
    starts = torch.cat([pads[:1] - 1 - _header(engine, ids, pads[0]), ends[:-1] + 1])
    return [torch.arange(int(a), int(b) + 1) for a, b in zip(starts, ends)]


def _header(engine, ids: torch.Tensor, first_pad) -> int:
    """Tokens of the first block's timestamp text: back from its vision start to the ``<``."""
    at = int(first_pad) - 2  # the token before the vision start
    while not engine.tokenizer.decode(ids[at : first_pad - 1]).startswith("<"):
        at -= 1
    return int(first_pad) - 1 - at


@pytest.mark.parametrize("family,strategy", [(f, s) for f in FAMILIES for s in sorted(SPECS[f].exact)])
@pytest.mark.parametrize("kind", KINDS)
def test_kept_and_merged_tokens_stand_where_they_stood(engines, family, kind, strategy, monkeypatch):
    """Every block retrieved, half of each block's visual tokens kept: each layer's context
    positions are the whole video's (``get_rope_index`` on the processor's ids) at the tokens
    its stored slots stand for; text after the video where the whole layout puts it (every
    strategy the family reproduces vanilla with)."""
    spec = SPECS[family]
    engine = engines(family)(window_tokens=None, topk_frames=None, chunk_frames=4, token_reduction=kind, token_keep=0.5,
                             position_strategy=strategy)
    video = video_frames(10, size=spec.size, seed=4)
    session = _stream(engine, family, video)
    calls = []
    real = engine.backbone.context_positions
    monkeypatch.setattr(engine.backbone, "context_positions", lambda *a, **k: calls.append((k["kept"], real(*a, **k))) or calls[-1][1])
    session.answer(QUESTION, max_new_tokens=2)
    _, _, inputs = vanilla_answer(engine, video, QUESTION, 1, fps=spec.fps)
    ids = inputs["input_ids"]
    types = (ids == engine.model.config.video_token_id).long() * 2
    timing = {k: inputs[k] for k in ("second_per_grid_ts",) if k in inputs}  # Qwen2.5-VL: seconds per block
    whole, _ = engine.model.model.get_rope_index(ids, mm_token_type_ids=types, video_grid_thw=inputs["video_grid_thw"], **timing)
    whole = whole[:, 0]  # (3, N)
    blocks = _whole_blocks(engine, ids, 5)
    sinks, suffix = int(blocks[0][0]), ids.shape[1] - int(blocks[-1][-1]) - 1
    unused = session.layout.block_tokens - torch.tensor([len(b) for b in blocks])  # empty header slots (Qwen3-VL)
    assert len(calls) == engine.model.config.text_config.num_hidden_layers  # one per layer: its own kept tokens
    visual = session.layout.grid[0] * session.layout.grid[1]
    for kept, mine in calls:
        assert kept.shape == (5, session.layout.block_tokens - visual // 2)
        token = kept - unused[:, None]
        expected = [whole[:, :sinks]] + [whole[:, b[t[t >= 0]]] for b, t in zip(blocks, token)]
        expected = torch.cat(expected + [whole[:, ids.shape[1] - suffix :]], dim=1)
        assert torch.equal(mine[:, : expected.shape[1]], expected)
    if kind == "merge":
        assert all(bool((k[:, 1:] > k[:, :-1]).all()) for k, _ in calls)  # one place per merged token, in order


@pytest.mark.parametrize("family", FAMILIES)
def test_the_store_counts_kept_tokens_and_keeps_their_slots(engines, family, tmp_path):
    """A quarter of the visual tokens kept: stored slots, KV bytes (plus 2 bytes per stored token
    and layer for its slot), a question's context; saved and reopened, and on the disk tier,
    the answers are bit-identical."""
    spec = SPECS[family]
    common = dict(window_tokens=None, topk_frames=3, chunk_frames=4)
    video = video_frames(12, size=spec.size, seed=5)
    plain = _stream(engines(family)(**common), family, video)
    cut = _stream(engines(family)(**common, token_reduction="salient", token_keep=0.25), family, video)
    visual = cut.layout.grid[0] * cut.layout.grid[1]
    stored = cut.layout.block_tokens - visual + round(visual / 4)
    assert cut.stats()["stored_block_tokens"] == stored
    layers = len(cut.family.kv_layers())
    kv = plain.stats()["kv_bytes_per_block"] // plain.layout.block_tokens
    assert cut.stats()["kv_bytes_per_block"] == kv * stored + 2 * layers * stored
    a, b = plain.answer(QUESTION, max_new_tokens=3), cut.answer(QUESTION, max_new_tokens=3, return_logits=True)
    assert a.context_tokens - b.context_tokens == 3 * (visual - round(visual / 4))  # 3 blocks retrieved
    cut.save(str(tmp_path / "cut"))
    again = cut.engine.open_session(str(tmp_path / "cut"))
    disk = _stream(engines(family)(**common, token_reduction="salient", token_keep=0.25, offload="disk",
                                   offload_dir=str(tmp_path / "disk")), family, video)
    for other in (again, disk):
        c = other.answer(QUESTION, max_new_tokens=3, return_logits=True)
        assert c.token_ids == b.token_ids and all(torch.equal(x, y) for x, y in zip(c.logits, b.logits))
