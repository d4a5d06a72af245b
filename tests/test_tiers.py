"""Memory tiers: disk offload under a RAM budget, quantized blocks, persisted sessions."""

import json
import os
import typing

import numpy as np
import pytest
import torch
from helpers.reference import stream_with_kv

from lmms_rekv.engine.statistics import StreamStats
from lmms_rekv.storage.backends import CorruptSegmentError
from lmms_rekv.storage.quant import make_codec

QUESTION = "what is on the table?"


TIERS = [dict(offload="cpu"), dict(offload="device"), dict(offload="disk", ram_budget_bytes=3 * 8192)]


@pytest.mark.parametrize("tier", TIERS, ids=lambda t: t["offload"])
def test_store_load_round_trip_is_bit_exact(load, frames, tier, tmp_path):
    engine = load(window_tokens=40, topk_frames=None, chunk_frames=3, eager=False, offload_dir=str(tmp_path), **tier)  # one forward per chunk
    session, exact = stream_with_kv(engine, frames(17, seed=20))
    store = session.state.store
    if tier["offload"] == "disk":
        stats = session.stats()
        assert stats["disk_bytes"] > 3 * stats["cpu_bytes"] and stats["cpu_bytes"] <= 3 * 8192
    for layer, (keys, values) in exact.items():
        for f in range(17):
            k, v = store.block(layer, f)
            assert torch.equal(k, keys[f]) and torch.equal(v, values[f])
        order = torch.tensor([16, 0, 5, 6, 7, 2, 15])
        got_k, got_v = store.gather(layer, order, torch.device("cpu"))
        assert torch.equal(got_k, keys[order].reshape(got_k.shape)) and torch.equal(got_v, values[order].reshape(got_v.shape))
    folder = store.backend.folder if tier["offload"] == "disk" else None
    session.close()
    if folder:
        assert not os.path.exists(folder)


def _bound(x, dim, bits):
    """Half a quantization step of each element's group, plus float16 rounding slack."""
    span = x.float().amax(dim=dim, keepdim=True) - x.float().amin(dim=dim, keepdim=True)
    magnitude = x.float().abs().amax(dim=dim, keepdim=True)
    return span / (2 * (2**bits - 1)) + 2e-3 * magnitude + 1e-6


@pytest.mark.parametrize("kind,bits", [("int8", 8), ("int4", 4)])
@pytest.mark.parametrize("tier", TIERS, ids=lambda t: t["offload"])
def test_quantized_blocks_meet_the_bound(load, frames, kind, bits, tier, tmp_path):
    engine = load(window_tokens=40, topk_frames=None, chunk_frames=3, eager=False, kv_quant=kind, offload_dir=str(tmp_path), **tier)
    session, exact = stream_with_kv(engine, frames(9, seed=21))
    store = session.state.store
    for layer, (keys, values) in exact.items():
        for f in range(9):
            k, v = store.block(layer, f)
            assert ((k - keys[f]).abs() <= _bound(keys[f], 0, bits)).all()  # per channel: over tokens
            assert ((v - values[f]).abs() <= _bound(values[f], 2, bits)).all()  # per token: over channels
        # summaries (used for retrieval) stay exact
        assert torch.allclose(store.summaries(layer), keys.float().mean(1), atol=1e-6)
    assert store.bytes_per_block < make_codec(None, store.block_tokens, store.kv_heads, store.head_dim, torch.float32).bytes_per_block(store.layers) / (3 if bits == 8 else 5)
    assert isinstance(session.ask(QUESTION, max_new_tokens=3), str)


@pytest.mark.parametrize("kind", [None, "int8", "int4"])
@pytest.mark.parametrize("tier", TIERS, ids=lambda t: t["offload"])
def test_gather_all_layers_at_once_equals_per_layer_gather(load, frames, kind, tier, tmp_path):
    """External retrieval reads one set of blocks for every layer in one batched read
    (``gather_all``, stored fields with a leading layer dim): identical to per-layer reads,
    also for quantized blocks (their ranges broadcast over the right dims)."""
    engine = load(window_tokens=40, topk_frames=None, chunk_frames=3, kv_quant=kind, offload_dir=str(tmp_path), **tier)
    session, _ = stream_with_kv(engine, frames(9, seed=24))
    store, order = session.state.store, torch.tensor([8, 0, 3, 4])
    keys, values = store.gather_all(order, torch.device("cpu"))
    for layer in range(store.layers):
        k, v = store.gather(layer, order, torch.device("cpu"))
        assert torch.equal(keys[layer], k) and torch.equal(values[layer], v)


def test_a_session_saved_before_its_first_chunk_reopens(load, frames, tmp_path):
    """5 frames with chunk_frames=8: nothing committed yet (all provisional), saved and reopened
    with the same answer; the stats say where the frames are."""
    engine = load(window_tokens=40, topk_frames=3, chunk_frames=8)
    session = engine.new_session()
    session.add_frames(frames(5, seed=25))
    stats = session.stats()
    assert (stats["frames"], stats["encoded_frames"], stats["provisional_frames"], stats["waiting_frames"]) == (5, 0, 5, 0)
    assert set(stats) == set(typing.get_type_hints(StreamStats)) and json.loads(json.dumps(stats)) == stats  # typed, plain JSON
    session.save(str(tmp_path / "early"))
    reopened = engine.open_session(str(tmp_path / "early"))
    assert reopened.ask(QUESTION, max_new_tokens=4) == session.ask(QUESTION, max_new_tokens=4)
    with pytest.raises(FileNotFoundError, match="no saved session"):
        engine.open_session(str(tmp_path / "never-saved"))


def test_codec_bytes_for_the_real_7b():
    exact = make_codec(None, 196, 4, 128, torch.float16).bytes_per_block(28)
    assert exact == 11239424  # 10.72 MiB
    int8 = make_codec("int8", 196, 4, 128, torch.float16).bytes_per_block(28)
    int4 = make_codec("int4", 196, 4, 128, torch.float16).bytes_per_block(28)
    assert int8 < exact / 1.9 and int4 < exact / 3.7


@pytest.mark.parametrize("tier", TIERS, ids=lambda t: t["offload"])
def test_persisted_session_reopens_identically(load, frames, tier, tmp_path):
    engine = load(window_tokens=40, topk_frames=3, chunk_frames=3, offload_dir=str(tmp_path / "spill"), **tier)
    session = engine.new_session()
    session.add_frames(frames(13, seed=22))
    before = session.answer(QUESTION, max_new_tokens=5, return_logits=True, eos_token_ids=())
    session.save(str(tmp_path / "entry"))
    reopened = engine.open_session(str(tmp_path / "entry"))
    after = reopened.answer(QUESTION, max_new_tokens=5, return_logits=True, eos_token_ids=())
    assert after.token_ids == before.token_ids
    assert all(torch.equal(a, b) for a, b in zip(after.logits, before.logits))
    assert reopened.stats()["frames"] == 13
    # streaming goes on from the reopened state exactly as from the original
    more = frames(4, seed=23)
    session.add_frames(more)
    reopened.add_frames(more)
    assert session.ask(QUESTION, max_new_tokens=4) == reopened.ask(QUESTION, max_new_tokens=4)


def test_corrupt_entry_is_detected(load, frames, tmp_path):
    engine = load(window_tokens=40, topk_frames=3, chunk_frames=3)
    session = engine.new_session()
    session.add_frames(frames(6, seed=24))
    folder = str(tmp_path / "entry")
    session.save(folder)
    segment = os.path.join(folder, "seg_000000.bin")
    data = bytearray(open(segment, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(segment, "wb").write(bytes(data))
    with pytest.raises(CorruptSegmentError, match="checksum"):
        engine.open_session(folder)
    open(segment, "wb").write(bytes(data[:100]))  # a partially written segment
    with pytest.raises(CorruptSegmentError, match="partially written"):
        engine.open_session(folder)
    os.remove(os.path.join(folder, "manifest.json"))  # an unfinished save
    with pytest.raises(CorruptSegmentError, match="no manifest"):
        engine.open_session(folder)


def test_disk_tier_rejects_a_truncated_segment_while_streaming(load, frames, tmp_path):
    engine = load(window_tokens=40, topk_frames=None, chunk_frames=2, offload="disk", ram_budget_bytes=2 * 8192, offload_dir=str(tmp_path))
    session = engine.new_session()
    session.add_frames(frames(10, seed=25))
    backend = session.state.store.backend
    first = os.path.join(backend.folder, backend.segments[0].file)
    with open(first, "r+b") as fh:
        fh.truncate(10)
    with pytest.raises(CorruptSegmentError):
        session.ask(QUESTION, max_new_tokens=2)


@pytest.fixture(scope="module")
def wide_dir(tmp_path_factory):
    """A tiny model with 64 tokens per frame and 4 kv heads: 128 KiB of KV per frame."""
    from research.tiny import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("wide") / "model"), hidden=128, heads=4, kv_heads=4, image_size=128)


def _rss() -> int:
    """Resident bytes of live memory: freed heap pages are handed back first (glibc
    ``malloc_trim``), so what earlier tests freed does not blur the figure."""
    import ctypes
    import gc

    import psutil

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    return psutil.Process().memory_info().rss


def test_long_stream_on_disk_keeps_rss_bounded(wide_dir, tmp_path):
    from lmms_rekv import ReKVConfig, ReKVLlavaOneVision

    def engine(**tier):
        cfg = ReKVConfig(window_tokens=256, topk_frames=4, chunk_frames=50, block_tokens=64, **tier)
        return ReKVLlavaOneVision.from_pretrained(wide_dir, config=cfg, dtype="float32", device="cpu")

    budget = 16 * 2**20
    disk = engine(offload="disk", ram_budget_bytes=budget, offload_dir=str(tmp_path)).new_session()
    rng = np.random.default_rng(0)
    chunk = rng.integers(0, 256, (50, 16, 16, 3), dtype=np.uint8)
    samples = []
    for i in range(40):  # 2,000 frames
        disk.add_frames(np.roll(chunk, i, axis=0))
        if i in (9, 39):
            samples.append(_rss())
    stats = disk.stats()
    stored = stats["kv_bytes_per_frame"] * 2000
    assert stats["frames"] == 2000 and stored > 10 * budget
    assert stats["cpu_bytes"] <= budget and stats["disk_bytes"] + stats["cpu_bytes"] == stored
    growth = samples[1] - samples[0]  # RSS from frame 500 to 2000, while 1,500 frames of KV were added
    assert growth < 0.25 * (stored * 3 / 4), (growth, stored)
    answer_disk = disk.answer(QUESTION, max_new_tokens=6, return_logits=True, eos_token_ids=())
    cpu = engine(offload="cpu").new_session()
    for i in range(40):
        cpu.add_frames(np.roll(chunk, i, axis=0))
    answer_cpu = cpu.answer(QUESTION, max_new_tokens=6, return_logits=True, eos_token_ids=())
    assert answer_disk.token_ids == answer_cpu.token_ids
    assert all(torch.equal(a, b) for a, b in zip(answer_disk.logits, answer_cpu.logits))
    assert [s.tolist() for s in answer_disk.selected] == [s.tolist() for s in answer_cpu.selected]
    disk.close()
    assert os.listdir(tmp_path) == []


def test_disk_reads_with_read_ahead_match_memory(load, frames, tmp_path):
    """Sparse, unordered and gap-spanning index sets read the same from disk as from RAM."""
    disk = load(window_tokens=40, topk_frames=None, chunk_frames=3, offload="disk", ram_budget_bytes=4 * 8192, offload_dir=str(tmp_path))
    cpu = load(window_tokens=40, topk_frames=None, chunk_frames=3)
    video = frames(30, seed=26)
    stores = []
    for engine in (disk, cpu):
        session = engine.new_session()
        session.add_frames(video)
        session.flush()
        stores.append(session.state.store)
    assert stores[0].backend.disk_frames >= 24
    for index in ([0, 2, 7, 3, 29], [5, 6, 7, 8, 9, 10], [1, 4, 9, 14, 19, 28], [28, 27, 26, 1]):
        got = stores[0].gather(1, torch.tensor(index), torch.device("cpu"))
        want = stores[1].gather(1, torch.tensor(index), torch.device("cpu"))
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    all_k, all_v = stores[0].gather_all(torch.tensor([3, 17, 25]), torch.device("cpu"))
    assert torch.equal(all_k[1], stores[1].gather(1, torch.tensor([3, 17, 25]), torch.device("cpu"))[0])
