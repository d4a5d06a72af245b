"""M-RoPE families (Qwen2-VL, Qwen2.5-VL) through the backbone seam, on tiny random
checkpoints built offline: sizing from the video, closed-form positions against the installed
``get_rope_index``, windowed encoding against a dense reference with 3-D offsets. What every
M-RoPE family must do (exact against vanilla ``generate`` however frames arrive, which position
strategies are exact, flat device bytes): ``tests/families/test_family_contract.py``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers.mrope_reference import QUESTION, Dense3D, vanilla_answer, video_frames

FAMILIES = ("qwen2_vl", "qwen2_5_vl")
FPS = 3.0  # Qwen2.5-VL: 2 * 2 / 3 s per block -> time steps of 1.33 (floored): 0, 1, 2, 4, 5, 6, 8, ...


@pytest.fixture(scope="session")
def qwen_dirs(qwen_checkpoint):
    return {f: qwen_checkpoint(f) for f in FAMILIES}


@pytest.fixture(scope="session")
def loader(qwen_engines):
    """``loader(family)(**config)``: that tiny checkpoint in fp32 on CPU (loaded once)."""
    return qwen_engines


@pytest.fixture(params=FAMILIES)
def load_qwen2(request, loader):
    return loader(request.param)


def test_family_picked_from_the_checkpoint(loader, qwen_dirs, load):
    from lmms_rekv import ReKVLlavaOneVision

    with pytest.raises(ValueError, match="fixed by the llava_onevision checkpoint"):
        load(frame_size=(56, 56))
    with pytest.raises(ValueError, match="needs an M-RoPE family"):
        load(position_strategy="original")

    for family, name in zip(FAMILIES, ("Qwen2VLBackbone", "Qwen2_5_VLBackbone")):
        engine = loader(family)()
        assert type(engine.backbone).__name__ == name and engine.backbone.model_type == family
        assert engine.backbone.frame_size == (56, 56) and engine.block_tokens == 4
        with pytest.raises(ValueError, match="llava_onevision"):
            ReKVLlavaOneVision.from_pretrained(qwen_dirs[family], dtype=torch.float32, device="cpu")
        with pytest.raises(ValueError, match="multiples of 28"):
            loader(family)(frame_size=(50, 56))
    with pytest.raises(ValueError, match="fps"):
        loader("qwen2_5_vl")().new_session()  # Qwen2.5-VL positions are in seconds
    with pytest.raises(ValueError, match="position_strategy"):
        loader("qwen2_vl")(position_strategy="diagonal")


@pytest.mark.parametrize("size", [(60, 60), (50, 120), (130, 70)])  # square, wide, tall: none a multiple of 28
def test_default_config_equals_vanilla_on_the_raw_frames(load_qwen2, size):
    """With the default config a stream's frames get the size the processor gives them (aspect
    kept, its own resize): every block retrieved equals vanilla generate on the raw frames."""
    engine = load_qwen2(window_tokens=None, topk_frames=None, chunk_frames=4)
    video = video_frames(8, size=size, seed=2)
    session = engine.new_session(fps=FPS)
    session.add_frames(video[:3])
    session.add_frames(video[3:])
    answer = session.answer(QUESTION, max_new_tokens=5, return_logits=True)
    tokens, logits, inputs = vanilla_answer(engine, video, QUESTION, 5)
    grid = inputs["video_grid_thw"][0].tolist()
    assert [session.layout.frame_size[0] // 14, session.layout.frame_size[1] // 14] == grid[1:]
    assert answer.token_ids == [t for t in tokens if t not in engine.generation_settings().eos_token_ids]
    assert max((a - b).abs().max().item() for a, b in zip(answer.logits, logits)) <= 1e-4
    assert engine.backbone.frame_size == (56, 56)  # the engine's own adapter is untouched


def test_streams_of_one_engine_have_their_own_sizes(load_qwen2):
    """Two streams of one engine keep their own frame sizes; a later frame of another size
    is resized to its stream's size; an explicit frame_size (per engine or per stream) wins."""
    engine = load_qwen2(window_tokens=None, topk_frames=None, chunk_frames=4)
    wide, tall = engine.new_session(fps=FPS), engine.new_session(fps=FPS)
    wide.add_frames(video_frames(4, size=(50, 120)))
    tall.add_frames(video_frames(4, size=(130, 70)))
    wide.add_frames(video_frames(2, size=(60, 60), seed=3))  # another size: resized to the stream's
    assert (wide.layout.frame_size, tall.layout.frame_size) == ((28, 84), (84, 28))
    assert wide.stats()["frames"] == 6 and wide.ask(QUESTION, max_new_tokens=2) is not None
    fixed = load_qwen2(window_tokens=None, topk_frames=None, frame_size=(56, 56)).new_session(fps=FPS)
    fixed.add_frames(video_frames(4, size=(50, 120)))
    assert fixed.layout.frame_size == (56, 56)
    chosen = engine.new_session(fps=FPS, frame_size=(28, 56))
    chosen.add_frames(video_frames(4, size=(50, 120)))
    assert chosen.layout.frame_size == (28, 56)
    # one family object for every stream, never changed by one: each stream's size is its frozen layout
    assert wide.family is tall.family is chosen.family is engine.backbone and engine.backbone.frame_size == (56, 56)
    assert (wide.layout.grid, wide.layout.block_tokens, wide.layout.processor_resize) == ((1, 3), 3, True)
    assert (chosen.layout.grid, chosen.layout.from_frames) == ((1, 2), False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        wide.layout.frame_size = (56, 56)
    with pytest.deprecated_call(match="session.layout"):  # the former spelling still gives the stream's size
        assert (wide.backbone.frame_size, wide.backbone.model_type) == ((28, 84), engine.backbone.model_type)


def test_explicit_frame_size_resizes_every_frame(load_qwen2):
    """``frame_size`` set: frames of another size are resized to it (the answer equals vanilla
    run on the resized frames)."""
    engine = load_qwen2(window_tokens=None, topk_frames=None, chunk_frames=4, frame_size=(56, 56))
    video = video_frames(4, size=(70, 90), seed=2)
    session = engine.new_session(fps=FPS)
    session.add_frames(video)
    answer = session.answer(QUESTION, max_new_tokens=4, return_logits=True)
    resized = engine.backbone.preprocess(torch.from_numpy(video), session.layout).numpy()
    assert resized.shape == (4, 56, 56, 3)
    _, logits, _ = vanilla_answer(engine, resized, QUESTION, 4)
    assert (answer.logits[0] - logits[0]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("frame_size", [(56, 56), (56, 84), (84, 56)])
def test_closed_form_positions_equal_get_rope_index(load_qwen2, frame_size):
    engine = load_qwen2(frame_size=frame_size)
    bb = engine.backbone
    rng = np.random.default_rng(0)
    video_type = 2  # mm_token_type_ids: 0 text, 1 image, 2 video
    for fps in (0.5, 1.0, 3.0, 7.0):
        layout = bb.layout(fps=fps)
        sinks, blocks, text = (int(v) for v in (rng.integers(1, 9), rng.integers(1, 13), rng.integers(1, 9)))
        types = torch.tensor([[0] * sinks + [video_type] * (blocks * layout.block_tokens) + [0] * text])
        grid = torch.tensor([[blocks, layout.grid[0] * 2, layout.grid[1] * 2]])  # in patches, before the 2x2 merge
        extra = {"second_per_grid_ts": torch.tensor([2 / fps])} if bb.model_type == "qwen2_5_vl" else {}
        expected, _ = engine.model.model.get_rope_index(torch.zeros_like(types), mm_token_type_ids=types, video_grid_thw=grid, **extra)
        every = torch.arange(blocks)
        for strategy in ("layout", "original"):  # the same with every block retrieved
            mine = bb.context_positions(sinks, every, text, torch.device("cpu"), layout, strategy=strategy)
            assert torch.equal(mine, expected[:, 0]), (fps, strategy)


def test_unbounded_window_encoding_positions_are_the_layout(load_qwen2):
    """With an unbounded window, encode-time positions of any chunk equal the full layout's."""
    bb = load_qwen2().backbone
    sinks, blocks, stream = 5, 6, bb.layout(fps=FPS)
    layout = bb.context_positions(sinks, torch.arange(blocks), 0, torch.device("cpu"), stream)[:, sinks:]
    for start, chunk in [(0, 8), (8, 12), (4, 20)]:
        window_keys, chunk_pos, seen = bb.encode_positions(sinks, start, chunk, start, None, torch.device("cpu"), stream)
        assert torch.equal(window_keys, layout[:, :start])
        assert torch.equal(chunk_pos, layout[:, start : start + chunk]) and torch.equal(seen, chunk_pos)


def _dense_reference(engine, video: np.ndarray, window: int):
    """Documented semantics: stream token u (block g, row i, column j) sees the sinks and the
    stream tokens v with u - W < v <= u; a stream key at the true (t, h, w) offset; sink b at
    (S + T(g) - T(g0) - b, S + i - b, S + j - b), g0 = the block of u's oldest window token,
    T the family's block time (Qwen2-VL: g; Qwen2.5-VL: floor(g * 2 * 2 / fps))."""
    bb, layout = engine.backbone, engine.backbone.layout(fps=FPS)
    prefix = bb.prompt.prefix_ids()
    feats = bb.block_features(bb.preprocess(torch.from_numpy(video), layout))
    s, m = len(prefix), feats.shape[1]
    u = torch.arange(m)
    g, inside = u // layout.block_tokens, u % layout.block_tokens
    time = g if bb.model_type == "qwen2_vl" else (g * (2 * torch.tensor(2 / FPS))).long()  # tokens_per_second 2
    pos = torch.stack([time, inside // layout.grid[1], inside % layout.grid[1]])  # (3, M) stream-relative
    n = s + m
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    allowed[s:, s:] &= u[None, :] > u[:, None] - window
    offsets = torch.zeros(3, n, n, dtype=torch.long)
    idx = torch.arange(s)
    offsets[:, :s, :s] = (idx[:, None] - idx[None, :]).expand(3, -1, -1)
    g0 = (u - window + 1).clamp(min=0) // layout.block_tokens
    time0 = g0 if bb.model_type == "qwen2_vl" else (g0 * (2 * torch.tensor(2 / FPS))).long()
    seen = torch.stack([s + time - time0, s + pos[1], s + pos[2]])
    offsets[:, s:, :s] = seen[:, :, None] - idx[None, None, :]
    offsets[:, s:, s:] = pos[:, :, None] - pos[:, None, :]
    embeds = torch.cat([bb.embed(prefix), feats], dim=1)
    with torch.inference_mode(), bb.routed(Dense3D(bb.text_model.rotary_emb, allowed, offsets)):
        return bb.text_model(inputs_embeds=embeds, use_cache=False).last_hidden_state[0]


@pytest.mark.parametrize("window,chunk", [(6, 2), (10, 4), (3, 6)])
def test_windowed_encoding_matches_dense_3d_reference(load_qwen2, window, chunk):
    engine = load_qwen2(window_tokens=window, topk_frames=None, chunk_frames=chunk)
    video = video_frames(12, seed=3)
    outputs = []
    hook = engine.language_model.register_forward_hook(lambda mod, i, o: outputs.append(o.last_hidden_state[0]))
    try:
        session = engine.new_session(fps=FPS)
        session.add_frames(video)
        session.flush()
    finally:
        hook.remove()
    hidden = torch.cat(outputs)
    ref = _dense_reference(engine, video, window)
    assert hidden.shape == ref.shape
    assert (hidden - ref).abs().max().item() <= 1e-5


def test_qwen2_5_needs_the_true_sampling_rate(loader):
    """The stream's fps is part of Qwen2.5-VL's positions: a wrong rate is not vanilla."""
    engine = loader("qwen2_5_vl")(window_tokens=None, topk_frames=None, chunk_frames=4)
    video = video_frames(12, seed=6)
    _, logits, _ = vanilla_answer(engine, video, QUESTION, 1, fps=FPS)
    errors = {}
    for fps in (FPS, 0.5):
        session = engine.new_session(fps=fps)
        session.add_frames(video)
        errors[fps] = (session.answer(QUESTION, max_new_tokens=1, return_logits=True).logits[0] - logits[0]).abs().max().item()
    assert errors[FPS] <= 1e-4 < 1e-3 < errors[0.5]


@pytest.mark.parametrize("model_type,reason", [("qwen3_5", "Gated DeltaNet"), ("qwen3_5_moe", "no per-frame KV"),
                                               ("mystery_vlm", "supported")])
def test_unsupported_families_are_refused_at_load_with_the_reason(tmp_path, model_type, reason):
    import json

    from lmms_rekv import ReKV

    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(ValueError, match=reason):
        ReKV.from_pretrained(str(tmp_path), device="cpu")


def test_odd_last_frame_is_padded_for_the_question_only(load_qwen2, tmp_path):
    """7 frames: the question sees the last frame repeated (as the vanilla processor pads);
    the stream is untouched -- once the 8th frame arrives it equals a session fed 8 frames,
    and a saved session keeps the waiting frames."""
    engine = load_qwen2(window_tokens=None, topk_frames=None, chunk_frames=4)
    video = video_frames(8, seed=7)
    session = engine.new_session(fps=FPS)
    session.add_frames(video[:7])
    answer = session.answer(QUESTION, max_new_tokens=4, return_logits=True)
    _, logits, _ = vanilla_answer(engine, video[:7], QUESTION, 4)
    assert all((a - b).abs().max().item() <= 1e-4 for a, b in zip(answer.logits, logits))
    stats = session.stats()
    # one chunk (2 blocks) committed; frames 4-5 in the provisional tail, frame 6 waits for its partner
    assert stats["blocks"] == 2 and stats["pending_frames"] == 3 and stats["tail_frames"] == 2 and stats["frames"] == 7
    session.save(str(tmp_path / "saved"))
    reopened = engine.open_session(str(tmp_path / "saved"))
    assert reopened.frames == 7 and reopened.fps == FPS
    for s in (session, reopened):
        s.add_frames(video[7:])
    fresh = engine.new_session(fps=FPS)
    fresh.add_frames(video)
    for s in (session, reopened):
        s.flush()
        assert s.state.store.blocks == fresh.state.store.blocks == 4
        for layer in range(fresh.state.store.layers):
            for block in range(4):
                assert all(torch.equal(a, b) for a, b in zip(s.state.store.block(layer, block), fresh.state.store.block(layer, block)))
        assert s.answer(QUESTION, max_new_tokens=3).token_ids == fresh.answer(QUESTION, max_new_tokens=3).token_ids


def test_frame_limit_counts_complete_blocks(load_qwen2):
    engine = load_qwen2(window_tokens=None, topk_frames=None, chunk_frames=4)
    session = engine.new_session(fps=FPS)
    session.add_frames(video_frames(9, seed=8))
    assert [len(session.answer(QUESTION, max_new_tokens=1, frame_limit=n).selected[0]) for n in (2, 5, 8, 9, 100)] == [1, 2, 4, 5, 5]
    with pytest.raises(RuntimeError, match="complete block"):
        session.answer(QUESTION, max_new_tokens=1, frame_limit=1)


def test_external_retrieval_scores_blocks(load_qwen2, tmp_path):
    """External retrieval on 2-frame blocks: each block scored by its frames' mean embedding."""
    from research.tiny import write_tiny_clip_config

    clip = write_tiny_clip_config(str(tmp_path))
    engine = load_qwen2(window_tokens=8, topk_frames=2, chunk_frames=4, retrieval="external", clip_model=clip, clip_pretrained=None,
                        recent_frames=0)
    video = video_frames(11, seed=9)
    session = engine.new_session(fps=FPS)
    session.add_frames(video)
    answer = session.answer(QUESTION, max_new_tokens=1)
    frames = engine.embedder.embed_frames(torch.from_numpy(np.concatenate([video, video[-1:]])))  # padded like the block
    pooled = frames.view(6, 2, -1).mean(dim=1)
    scores = (pooled / pooled.norm(dim=-1, keepdim=True)) @ engine.embedder.embed_text(QUESTION)
    expected = torch.sort(torch.topk(scores, 2).indices).values
    assert all(torch.equal(sel, expected) for sel in answer.selected)


def test_frame_size_outside_the_processor_budget_is_an_error(load_qwen2):
    """The tiny processor's budget is 56 x 84 pixels: a larger fixed size would be re-budgeted
    by the processor, so it is refused instead of silently giving other blocks."""
    with pytest.raises(ValueError, match="pixel budget"):
        load_qwen2(frame_size=(112, 112))
    assert load_qwen2(frame_size=(56, 84)).block_tokens == 6


def test_a_saved_stream_reopens_at_its_own_size(load_qwen2, tmp_path):
    engine = load_qwen2(window_tokens=None, topk_frames=None, chunk_frames=4)
    session = engine.new_session(fps=FPS)
    session.add_frames(video_frames(7, size=(50, 120), seed=5))
    session.save(str(tmp_path / "wide"))
    reopened = engine.open_session(str(tmp_path / "wide"))
    assert reopened.layout.frame_size == session.layout.frame_size == (28, 84)
    assert reopened.ask(QUESTION, max_new_tokens=4) == session.ask(QUESTION, max_new_tokens=4)


def test_stats_count_blocks_and_frames_apart(load_qwen2):
    """A Qwen block is 2 frames: per-block and per-frame KV differ by that factor (the GiB/h
    figure, bytes per frame x fps x 3600, counts frames)."""
    engine = load_qwen2(window_tokens=None, topk_frames=None, chunk_frames=4)
    session = engine.new_session(fps=FPS)
    session.add_frames(video_frames(8))
    stats = session.stats()
    assert (stats["frames"], stats["blocks"]) == (8, 4)
    assert stats["kv_bytes_per_frame"] * 2 == stats["kv_bytes_per_block"] > 0
    assert stats["summary_bytes_per_frame"] * 2 == stats["summary_bytes_per_block"] > 0


def test_a_system_prompt_is_the_processors_system_message(qwen_dirs):
    """``system_prompt``: the prompt the processor builds for [system, user] messages, and the
    answer vanilla generate gives on it."""
    from transformers import AutoProcessor

    from lmms_rekv import ReKV, ReKVConfig

    path = qwen_dirs["qwen2_vl"]
    engine = ReKV.from_pretrained(path, dtype=torch.float32, device="cpu", system_prompt="Answer briefly.",
                                  config=ReKVConfig(window_tokens=None, topk_frames=None, chunk_frames=4))
    video = video_frames(4, seed=8)
    processor = AutoProcessor.from_pretrained(path)
    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], videos=[video], video_metadata=[{"fps": FPS, "frames_indices": list(range(4)), "total_num_frames": 4}],
                       return_tensors="pt", do_sample_frames=False)
    assert torch.equal(engine.backbone.vanilla_input_ids(QUESTION, 4), inputs["input_ids"])
    with torch.inference_mode():
        out = engine.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    session = engine.new_session(fps=FPS)
    session.add_frames(video)
    want = [t for t in out[0, inputs["input_ids"].shape[1]:].tolist() if t not in engine.generation_settings().eos_token_ids]
    assert session.answer(QUESTION, max_new_tokens=4).token_ids == want
    assert engine.with_config(ReKVConfig()).backbone.system_prompt == "Answer briefly."  # kept by with_config
