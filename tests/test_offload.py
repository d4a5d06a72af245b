"""Offload: stored blocks are bit-identical to the K/V the attention computed; device bytes
stay bounded while the offload tier grows at the documented bytes per frame."""

import pytest
import torch
from helpers.reference import capture_kv

from lmms_rekv.storage.store import BlockStore


@pytest.mark.parametrize("offload", ["cpu", "device"])
def test_blocks_bit_identical_to_computed_kv(load, frames, offload):
    engine = load(window_tokens=40, topk_frames=None, chunk_frames=3, offload=offload)
    with capture_kv(engine) as captured:
        session = engine.new_session()
        session.add_frames(frames(8, seed=7))
        session.flush()
    store = session.state.store
    t, hkv, d = store.block_tokens, store.kv_heads, store.head_dim
    for idx in range(store.layers):
        # first call is the prefix (sinks); the rest are the chunks, in order
        keys = torch.cat(captured[(idx, "k_proj")][1:]).view(-1, t, hkv, d)
        values = torch.cat(captured[(idx, "v_proj")][1:]).view(-1, t, hkv, d)
        assert keys.shape[0] == store.blocks == 8
        for f in range(8):
            k, v = store.block(idx, f)
            assert k.device.type == ("cpu" if offload == "cpu" else engine.device.type)
            assert torch.equal(k, keys[f]) and torch.equal(v, values[f])
        got_k, got_v = store.gather(idx, torch.tensor([6, 1, 3]), torch.device("cpu"))
        assert torch.equal(got_k, keys[[6, 1, 3]].reshape(-1, hkv, d))
        assert torch.equal(got_v, values[[6, 1, 3]].reshape(-1, hkv, d))


def test_device_bytes_constant_while_cpu_grows_linearly(load, frames):
    engine = load(window_tokens=48, topk_frames=4, chunk_frames=10)
    session = engine.new_session()
    video = frames(200, seed=8, size=(16, 16))
    text = engine.model.config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    per_frame = text.num_hidden_layers * 2 * text.num_key_value_heads * head_dim * 4 * engine.block_tokens
    seen = []
    for lo in range(0, 200, 20):
        session.add_frames(video[lo : lo + 20])
        stats = session.stats()
        seen.append(stats)
        assert stats["frames"] == lo + 20
        assert stats["cpu_bytes"] == (lo + 20) * per_frame == stats["kv_bytes_per_frame"] * (lo + 20)
    assert len({s["device_kv_bytes"] for s in seen}) == 1
    sinks = seen[0]["sink_tokens"]
    expected_device = text.num_hidden_layers * 2 * text.num_key_value_heads * head_dim * 4 * (sinks + 48)
    assert seen[0]["device_kv_bytes"] == expected_device
    for s in seen:  # everything else on the device: the per-frame summaries, nothing pending
        per_frame = s["summary_bytes_per_frame"]
        assert per_frame == text.num_hidden_layers * text.num_key_value_heads * head_dim * 4
        assert s["frames"] * per_frame <= s["summary_device_bytes"] < 2 * max(64, s["frames"]) * per_frame
        assert s["device_bytes"] == s["device_kv_bytes"] + s["summary_device_bytes"] + s["pending_device_bytes"]
    assert session.ask("what happens?", max_new_tokens=3) is not None


def test_store_grows_by_doubling_and_keeps_data():
    store = BlockStore(2, 3, 2, 4, torch.float32, torch.device("cpu"), torch.device("cpu"), initial_capacity=2)
    written = []
    for step in range(5):
        first = store.reserve(2)
        for layer in range(2):
            k = torch.randn(6, 2, 4)
            v = torch.randn(6, 2, 4)
            store.write(layer, first, k, v)
            written.append((layer, first, k, v))
        store.commit(2)
    assert store.blocks == 10 and store.backend.capacity == 16
    for layer, first, k, v in written:
        for i in range(2):
            sk, sv = store.block(layer, first + i)
            assert torch.equal(sk, k.view(2, 3, 2, 4)[i]) and torch.equal(sv, v.view(2, 3, 2, 4)[i])
            assert torch.equal(store.summaries(layer)[first + i], k.view(2, 3, 2, 4)[i].mean(0))
    assert store.bytes_per_block == 2 * 2 * 2 * 4 * 4 * 3


def test_device_memory_bounded_over_a_long_stream(load, frames):
    """2,000+ frames: every device byte is accounted for; the KV on the device is constant,
    pending frames never exceed one chunk, the provisional tail never more than one window
    and one chunk of summaries, and the only growth is the per-frame retrieval summaries at
    their documented rate."""
    engine = load(window_tokens=48, topk_frames=4, chunk_frames=50)
    session = engine.new_session()
    video = frames(37, seed=9, size=(16, 16))
    kv, pending, tail = set(), [], []
    for burst in range(56):  # 2,072 frames
        session.add_frames(video)
        stats = session.stats()
        if stats["encoded_frames"]:  # sinks + a full window from the first chunk on
            kv.add(stats["device_kv_bytes"])
        pending.append(stats["pending_device_bytes"])
        tail.append(stats["tail_device_bytes"])
        assert stats["device_bytes"] == (stats["device_kv_bytes"] + stats["summary_device_bytes"] + stats["pending_device_bytes"]
                                         + stats["tail_device_bytes"] + stats["embedding_device_bytes"])
        assert stats["tail_frames"] == stats["pending_frames"]  # eager: the tail covers every waiting frame
        assert stats["summary_device_bytes"] < 2 * max(64, stats["encoded_frames"]) * stats["summary_bytes_per_frame"]
        if burst % 20 == 19:
            session.ask("what happens?", max_new_tokens=2)
    assert 0 < max(tail) <= min(kv) + 2 * 50 * stats["summary_bytes_per_frame"]
    assert len(kv) == 1 and max(pending) <= 50 * engine.processor(video[:1]).element_size() * engine.processor(video[:1]).numel()
    assert session.frames == 56 * 37


def test_host_summaries_keep_device_bytes_flat_and_answers_unchanged(load, frames):
    """``summary_tier="cpu"``: the retrieval index moves to host RAM, device bytes stop
    growing with the stream, and the answers (tokens, logits, frames chosen per layer) equal
    those scored on the device tier."""
    video = frames(120, seed=9, size=(16, 16))
    sessions = {}
    for tier in ("device", "cpu"):
        engine = load(window_tokens=48, topk_frames=4, chunk_frames=10, summary_tier=tier, layer_frames="own")
        session = sessions[tier] = engine.new_session()
        seen = []
        for lo in range(0, 120, 30):
            session.add_frames(video[lo : lo + 30])
            seen.append(session.stats())
        per_frame = seen[0]["summary_bytes_per_frame"]
        if tier == "cpu":
            assert len({s["device_bytes"] for s in seen}) == 1
            assert all(s["summary_device_bytes"] == 0 for s in seen)
            assert all(s["frames"] * per_frame <= s["index_host_bytes"] < 2 * max(64, s["frames"]) * per_frame for s in seen)
            assert session.state.store.summary_device == torch.device("cpu")
        else:
            assert seen[-1]["device_bytes"] - seen[0]["device_bytes"] >= 64 * per_frame
            assert all(s["index_host_bytes"] == 0 for s in seen)
    answers = {tier: s.answer("what happens?", max_new_tokens=4, return_logits=True, eos_token_ids=()) for tier, s in sessions.items()}
    device, host = answers["device"], answers["cpu"]
    assert host.token_ids == device.token_ids
    assert all(torch.equal(a, b) for a, b in zip(host.logits, device.logits))
    assert [s.tolist() for s in host.selected] == [s.tolist() for s in device.selected]
