"""Token reduction before offload (``ReKVConfig.token_reduction`` / ``token_keep``): off -- or
keeping every token -- changes nothing; on, the store holds exactly the tokens the rule picks
(recomputed by brute force from the keys and values the model produced), the summaries average
them, a question's context counts them, the choice does not depend on how frames arrive, and a
saved stream goes on exactly as the unbroken one."""

from __future__ import annotations

import pytest
import torch
from helpers.reference import stream_with_kv

from lmms_rekv import ReKVConfig
from lmms_rekv.storage.reduce import merge_tokens

QUESTION = "what is on the table?"
KINDS = ["temporal", "salient", "merge"]


@pytest.mark.parametrize("kind", KINDS)
def test_keeping_every_token_changes_nothing(load, frames, kind):
    video = frames(9, seed=31)
    plain = load(window_tokens=40, topk_frames=3, chunk_frames=3).new_session()
    kept = load(window_tokens=40, topk_frames=3, chunk_frames=3, token_reduction=kind, token_keep=1.0).new_session()
    for s in (plain, kept):
        s.add_frames(video)
    a = plain.answer(QUESTION, max_new_tokens=4, return_logits=True, eos_token_ids=())
    b = kept.answer(QUESTION, max_new_tokens=4, return_logits=True, eos_token_ids=())
    assert a.token_ids == b.token_ids and all(torch.equal(x, y) for x, y in zip(a.logits, b.logits))
    assert plain.state.store.reducer is None and plain.stats()["stored_block_tokens"] == kept.stats()["stored_block_tokens"] == 16


def _brute_force(kind, keys, values, keep, previous):
    """The tokens ``kind`` keeps of one block ``(T, H, D)`` (``previous``: the block before, or None)."""
    if kind == "merge":
        k, v, _ = merge_tokens(keys[None], values[None], keep)
        return k[0], v[0]
    if kind == "salient":
        scores = torch.stack([values[t].float().norm(dim=-1).sum() for t in range(keys.shape[0])])
    else:
        before = torch.zeros_like(keys) if previous is None else previous
        scores = torch.stack([(keys[t].float() - before[t].float()).norm(dim=-1).sum() for t in range(keys.shape[0])])
    index = sorted(scores.topk(keep).indices.tolist())
    return keys[index], values[index]


@pytest.mark.parametrize("kind", KINDS)
def test_the_store_holds_the_tokens_the_rule_picks(load, frames, kind):
    """9 frames in chunks of 3 (one forward per chunk): every stored block is the rule applied to
    the block the model produced (temporal: against the block before it, across chunk
    boundaries); summaries average the kept keys; 4 of 16 tokens' bytes."""
    engine = load(window_tokens=40, topk_frames=None, chunk_frames=3, eager=False, token_reduction=kind, token_keep=0.25)
    session, full = stream_with_kv(engine, frames(9, seed=32), step=3)
    store = session.state.store
    assert store.blocks == 9 and store.block_tokens == 4 and session.stats()["stored_block_tokens"] == 4
    plain = load(window_tokens=40, topk_frames=None, chunk_frames=3).new_session()
    plain.add_frames(frames(9, seed=32))
    plain.flush()
    assert session.stats()["kv_bytes_per_block"] * 4 == plain.stats()["kv_bytes_per_block"]
    for layer, (keys, values) in full.items():
        for block in range(9):
            want_k, want_v = _brute_force(kind, keys[block], values[block], 4, keys[block - 1] if block else None)
            got_k, got_v = store.block(layer, block)
            assert torch.allclose(got_k, want_k, atol=1e-6) and torch.allclose(got_v, want_v, atol=1e-6), (layer, block)
            assert torch.allclose(store.summaries(layer)[block], want_k.float().mean(0), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_do_not_depend_on_how_frames_arrive_and_a_saved_stream_goes_on(load, frames, kind, tmp_path):
    engine = load(window_tokens=40, topk_frames=3, chunk_frames=3, token_reduction=kind, token_keep=0.25)
    video = frames(11, seed=33)
    whole = engine.new_session()
    whole.add_frames(video)
    trickled = engine.new_session()
    for i in range(7):
        trickled.add_frames(video[i: i + 1])
        trickled.ask(QUESTION, max_new_tokens=2)  # questions on the provisional tail in between
    trickled.save(str(tmp_path / "s"))
    reopened = engine.open_session(str(tmp_path / "s"))
    for s in (trickled, reopened):
        s.add_frames(video[7:])
    for s in (whole, trickled, reopened):
        s.flush()
    for layer in range(whole.state.store.layers):
        for block in range(11):
            for a, b, c in zip(whole.state.store.block(layer, block), trickled.state.store.block(layer, block),
                               reopened.state.store.block(layer, block)):
                assert torch.equal(a, b) and torch.equal(a, c)
    answer = whole.answer(QUESTION, max_new_tokens=3)
    assert answer.token_ids == reopened.answer(QUESTION, max_new_tokens=3).token_ids
    plain = load(window_tokens=40, topk_frames=3, chunk_frames=3).new_session()
    plain.add_frames(video)
    assert plain.answer(QUESTION, max_new_tokens=3).context_tokens - answer.context_tokens == 3 * (16 - 4)  # 3 blocks, 4 tokens kept


def test_merge_averages_similar_tokens_and_keeps_their_order():
    x, y = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    keys = torch.stack([x, x, y, y])[None, :, None, :]  # (1, 4, 1, 2)
    values = torch.arange(4.0)[None, :, None, None].expand(1, 4, 1, 2)
    k, v, slots = merge_tokens(keys, values, 2)
    assert torch.equal(k[0, :, 0], torch.stack([x, y])) and torch.equal(v[0, :, 0, 0], torch.tensor([0.5, 2.5]))
    assert slots.tolist() == [[0, 2]]  # a merged token stands where its earliest member stood


def test_reduction_is_validated_and_accepted_on_every_family(qwen_checkpoint):
    from lmms_rekv import ReKV

    with pytest.raises(ValueError, match="token_keep"):
        ReKVConfig(token_reduction="salient", token_keep=0)
    with pytest.raises(ValueError, match="token_reduction"):
        ReKVConfig(token_reduction="random")
    assert ReKVConfig(token_reduction="salient", token_keep=0.25).stored_tokens(196) == 49
    qwen = ReKV.from_pretrained(qwen_checkpoint("qwen2_vl"), dtype="float32", device="cpu",
                                config=ReKVConfig(token_reduction="salient"))  # every family (tests/families)
    assert qwen.backbone.positions_by_slot and qwen.config.token_reduction == "salient"


def test_the_benchmark_projects_qwen_bytes_and_runs_on_a_qwen_miniature(tmp_path):
    """Qwen2.5-VL-7B: a 720p frame at the video processor's default bounds is 560 x 1008 pixels,
    20 x 36 tokens per 2-frame block, 28 layers x 2 x 4 KV heads x 128 dims x 2 bytes each (+ 2
    bytes per kept token and layer for its slot); the benchmark runs on a Qwen-shaped video
    miniature (random weights) and names that target."""
    from benchmarks.token_reduction import GIB, TARGETS, block_tokens_7b, configurations, projected_gib_per_hour, run
    from research.miniature import build

    assert block_tokens_7b(TARGETS["qwen2_5_vl"]) == 20 * 36
    per_token = 28 * 2 * 4 * 128 * 2
    assert projected_gib_per_hour(1.0, None, family="qwen2_5_vl") == pytest.approx(720 * per_token / 2 * 0.5 * 3600 / GIB)
    kept = projected_gib_per_hour(0.25, None, family="qwen2_5_vl")
    assert kept == pytest.approx(180 * (per_token + 28 * 2) / 2 * 0.5 * 3600 / GIB)
    arch = build.Architecture.for_world("video", family="qwen2_5_vl")
    tokenizer = build.build_tokenizer(arch.vocab_size, seed=0, family="qwen2_5_vl", world_name="video")
    path = build.save_checkpoint(str(tmp_path / "qwen"), build.build_model(arch, tokenizer), tokenizer, arch, {}, world_name="video")
    results = run(path, videos=1, length=4, keeps=[0.5], quants=[None], k=2)
    assert results["target"] == "Qwen2.5-VL-7B" and results["rows"]["salient/0.5"]["projected_7b_gib_per_hour"] < kept * 2.1
    rows = results["rows"]
    assert all(sum(r["n"].values()) == sum(rows["full"]["n"].values()) > 0 for r in rows.values())
    layers = 3  # the miniature's: KV bytes per frame halve, plus each kept token's slot per layer
    assert rows["salient/0.5"]["kv_bytes_per_frame"] == rows["rekv"]["kv_bytes_per_frame"] // 2 + 2 * layers * 8
    assert results["position_strategy"] == "layout"  # the default, recorded
    configs = configurations([0.5], [None], 2, 64, strategy="original")
    assert all(c.get("position_strategy") == "original" for n, c in configs.items() if n != "full") and "position_strategy" not in configs["full"]


def test_the_accuracy_per_byte_benchmark_runs_and_accounts_bytes(tmp_path):
    """``python -m benchmarks.token_reduction`` on the shipped miniature (one held-out video):
    every setting answers every question, internal and (``ext/``, with the world's embedder)
    external, the stored bytes per frame follow the keep ratio, the 7B projection is the
    codec's (18.84 GiB/h exact at 0.5 fps, / 4 at keep 1/4) and the plot is written."""
    from benchmarks.token_reduction import plot, projected_gib_per_hour, run
    from lmms_rekv.miniature import embedder_files, path

    assert round(projected_gib_per_hour(1.0, None), 2) == 18.84
    assert abs(projected_gib_per_hour(0.25, None) - 18.84 / 4) < 0.05
    assert projected_gib_per_hour(0.25, "int4") < projected_gib_per_hour(0.25, "int8") < projected_gib_per_hour(0.25, None)
    pytest.importorskip("open_clip")
    results = run(path(), videos=1, length=16, keeps=[0.5], quants=[None], k=4, clip=list(embedder_files()))
    rows = results["rows"]
    internal = {"rekv", "temporal/0.5", "salient/0.5", "merge/0.5"}
    assert set(rows) == {"full", "rekv/token-score"} | internal | {f"ext/{n}" for n in internal}
    assert all(sum(r["n"].values()) == sum(rows["full"]["n"].values()) > 0 for r in rows.values())
    assert rows["salient/0.5"]["kv_bytes_per_frame"] * 2 == rows["rekv"]["kv_bytes_per_frame"]
    assert "vs_rekv" not in rows["rekv"] and "vs_rekv" not in rows["ext/rekv"]
    for name, reference in (("temporal/0.5", "rekv"), ("ext/merge/0.5", "ext/rekv")):  # paired over the same questions
        assert rows[name]["vs_rekv"]["low"] <= rows[name]["vs_rekv"]["diff"] <= rows[name]["vs_rekv"]["high"]
        assert rows[name]["vs_rekv"]["diff"] == pytest.approx(rows[name]["accuracy"] - rows[reference]["accuracy"])
    plot(results, str(tmp_path / "plot.svg"))
    assert (tmp_path / "plot.svg").read_text().lstrip().startswith("<?xml")
