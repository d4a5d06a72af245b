"""Qwen3-VL through the backbone seam, on a tiny random checkpoint built offline: blocks
whose timestamp text varies in length (stored in fixed slots), deepstack rows per chunk,
q/k norms as the pre-RoPE capture points; the processor's prompt ids; closed-form positions
against the installed ``get_rope_index`` (also on a subset of blocks, against the processor
run on only those frames); windowed encoding against a dense reference. What every M-RoPE
family must do (exact against vanilla ``generate``, which position strategies are exact, flat
device bytes): ``tests/families/test_family_contract.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.mrope_reference import QUESTION, Dense3D, vanilla_answer, video_frames

FPS = 0.5  # block g at (4g + 1) s: the timestamp text grows from "<1.0 seconds>" to "<13.0 seconds>" by block 3
SIZE = (64, 64)  # 2 x 2 = 4 visual tokens per block


@pytest.fixture(scope="session")
def qwen3_dir(qwen_checkpoint):
    return qwen_checkpoint("qwen3_vl")


@pytest.fixture(scope="session")
def load3(qwen3_dir):
    """``load3(**config)``: the tiny Qwen3-VL in fp32 on CPU (loaded once), frames 64 x 64."""
    from lmms_rekv import ReKV, ReKVConfig

    base = ReKV.from_pretrained(qwen3_dir, dtype=torch.float32, device="cpu")

    def _load(**config):
        return base.with_config(ReKVConfig(**{"frame_size": SIZE, **config}))

    return _load


def _frames(n: int, seed: int) -> np.ndarray:
    return video_frames(n, size=SIZE, seed=seed)


def test_family_and_its_block_layout(load3, qwen3_dir):
    from lmms_rekv import ReKVLlavaOneVision

    engine = load3()
    bb = engine.backbone
    assert type(bb).__name__ == "Qwen3VLBackbone" and bb.model_type == "qwen3_vl"
    layout = bb.layout(fps=FPS)
    assert layout.tables.rows.visual_tokens == 4 and layout.block_tokens == bb.block_tokens == bb.header_slots + 6
    heads = layout.tables.clock.header_lengths(torch.arange(6), FPS)
    assert len(set(heads.tolist())) > 1  # "<9.0 seconds>" and "<13.0 seconds>" differ: variable-length blocks
    with pytest.raises(ValueError, match="fps"):
        engine.new_session()
    with pytest.raises(ValueError, match="needs an M-RoPE family|supports"):
        load3(position_strategy="consecutive_t").new_session(fps=FPS)  # time is in the text, not the positions
    with pytest.raises(ValueError, match="multiples of 32"):
        load3(frame_size=(48, 64))
    with pytest.raises(ValueError, match="llava_onevision"):
        ReKVLlavaOneVision.from_pretrained(qwen3_dir, dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("frames", [12, 11])
def test_the_prompt_ids_are_the_processors(load3, frames):
    """The blocks' timestamp text and tokens as the processor writes them (an odd last frame:
    the block padded, with its timestamp); the answers are the family contract's
    (``tests/families/test_family_contract.py``)."""
    engine = load3(window_tokens=None, topk_frames=None)
    _, _, inputs = vanilla_answer(engine, _frames(frames, seed=1), QUESTION, 1, fps=FPS)
    assert torch.equal(engine.backbone.vanilla_input_ids(QUESTION, frames, engine.backbone.layout(fps=FPS)), inputs["input_ids"])


def _rope_index(engine, ids: torch.Tensor, blocks: int) -> torch.Tensor:
    grid = engine.backbone.default_layout.grid
    types = (ids == engine.model.config.video_token_id).long() * 2  # mm_token_type_ids: 2 = video
    grid = torch.tensor([[blocks, grid[0] * 2, grid[1] * 2]])  # in patches, before the 2x2 merge
    positions, _ = engine.model.model.get_rope_index(ids, mm_token_type_ids=types, video_grid_thw=grid)
    return positions[:, 0]


@pytest.mark.parametrize("fps", [0.05, 0.5, 3.0])
def test_closed_form_positions_equal_get_rope_index(load3, fps):
    engine = load3()
    bb = engine.backbone
    layout = bb.layout(fps=fps)
    for frames in (2, 9, 24):
        ids = bb.vanilla_input_ids(QUESTION, frames, layout)
        blocks = -(-frames // 2)
        expected = _rope_index(engine, ids, blocks)
        sinks, text = len(bb.prompt.prefix_ids()), len(bb.prompt.suffix_ids(QUESTION))
        padded = blocks - 1 if frames % 2 else None
        for strategy in ("layout", "original"):  # the same with every block retrieved
            mine = bb.context_positions(sinks, torch.arange(blocks), text, torch.device("cpu"), layout.with_padding(padded),
                                        strategy=strategy)
            assert torch.equal(mine, expected), (frames, strategy)


def test_layout_of_a_subset_is_the_processor_on_only_those_frames(load3):
    """Blocks {1, 3, 4} of a stream, re-laid out: the prompt ids (timestamps included) and the
    positions equal the processor's and ``get_rope_index``'s for a video of only their frames."""
    from transformers import AutoProcessor

    engine = load3()
    bb = engine.backbone
    kept = torch.tensor([1, 3, 4])
    frames = [f for g in kept.tolist() for f in (2 * g, 2 * g + 1)]
    processor = AutoProcessor.from_pretrained(engine.source)
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    metadata = [{"fps": FPS, "frames_indices": frames, "total_num_frames": 10}]
    inputs = processor(text=[text], videos=[_frames(6, seed=2)], video_metadata=metadata, return_tensors="pt",
                       do_sample_frames=False)
    ids = inputs["input_ids"]
    layout = bb.layout(fps=FPS)
    mine = bb.prompt.prefix_ids() + [t for g in kept.tolist() for t in bb._block_ids(range(g, g + 1), layout)]
    assert ids[0].tolist() == mine + bb.prompt.suffix_ids(QUESTION)
    sinks, rest = len(bb.prompt.prefix_ids()), len(bb.prompt.suffix_ids(QUESTION))
    positions = bb.context_positions(sinks, kept, rest, torch.device("cpu"), layout, strategy="layout")
    assert torch.equal(positions, _rope_index(engine, ids, len(kept)))


def test_stored_slots_hold_the_tokens_right_aligned(load3):
    """Each block's tokens sit at the end of its slots (unused slots zero); ``block_rows``
    picks exactly them, and the retrieval summary is the mean of the visual tokens' keys."""
    engine = load3(window_tokens=None, topk_frames=None, chunk_frames=4)
    bb = engine.backbone
    session = engine.new_session(fps=FPS)
    session.add_frames(_frames(8, seed=4))
    session.flush()
    store = session.state.store
    layout = session.layout
    heads = layout.tables.clock.header_lengths(torch.arange(4), FPS)
    rows = bb.block_rows(torch.arange(4), torch.device("cpu"), layout)
    assert len(rows) == int((heads + 2 + layout.tables.rows.visual_tokens).sum())
    for block in range(4):
        keys, values = store.block(1, block)
        unused = bb.header_slots - int(heads[block])
        assert not keys[:unused].any() and not values[:unused].any()
        assert keys[unused:].abs().sum(dim=(1, 2)).gt(0).all()
        visual = keys[layout.summary_tokens].float().mean(dim=0)
        assert torch.allclose(store.summaries(1)[block], visual)


def _dense_reference(engine, video: np.ndarray, window: int):
    """Documented semantics: stream token u sees the sinks and the stream tokens v with
    u - W < v <= u; a stream key at the true (t, h, w) offset (positions from the installed
    ``get_rope_index``); sink b at ``P(u) - P_t(o) + S - b`` on every axis, ``o`` the oldest
    token of u's window. Deepstack rows are added as the model adds them."""
    bb = engine.backbone
    prefix = bb.prompt.prefix_ids()
    layout = bb.layout(fps=FPS)
    pixels = bb.preprocess(torch.from_numpy(video), layout)
    inputs = bb.chunk_inputs(pixels, 0, layout)
    s, m = len(prefix), inputs.embeds.shape[1]
    ids = bb.vanilla_input_ids(QUESTION, len(video), layout)[:, : s + m]
    pos = _rope_index(engine, ids, len(video) // 2)[:, s:]  # (3, M) stream positions
    n = s + m
    u = torch.arange(m)
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    allowed[s:, s:] &= u[None, :] > u[:, None] - window
    offsets = torch.zeros(3, n, n, dtype=torch.long)
    idx = torch.arange(s)
    offsets[:, :s, :s] = (idx[:, None] - idx[None, :]).expand(3, -1, -1)
    oldest = (u - window + 1).clamp(min=0)
    seen = pos - pos[0, oldest] + s
    offsets[:, s:, :s] = seen[:, :, None] - idx[None, None, :]
    offsets[:, s:, s:] = pos[:, :, None] - pos[:, None, :]
    embeds = torch.cat([bb.embed(prefix), inputs.embeds], dim=1)
    mask = torch.cat([torch.zeros(1, s, dtype=torch.bool), inputs.lm_kwargs["visual_pos_masks"]], dim=1)
    extra = {"visual_pos_masks": mask, "deepstack_visual_embeds": inputs.lm_kwargs["deepstack_visual_embeds"]}
    with torch.inference_mode(), bb.routed(Dense3D(bb.text_model.rotary_emb, allowed, offsets)):
        return bb.text_model(inputs_embeds=embeds, use_cache=False, **extra).last_hidden_state[0, s:]


@pytest.mark.parametrize("window,chunk", [(7, 2), (20, 4), (3, 6)])
def test_windowed_encoding_matches_dense_3d_reference(load3, window, chunk):
    engine = load3(window_tokens=window, topk_frames=None, chunk_frames=chunk)
    video = _frames(12, seed=3)
    outputs = []
    hook = engine.language_model.register_forward_hook(lambda mod, i, o: outputs.append(o.last_hidden_state[0]))
    try:
        session = engine.new_session(fps=FPS)
        session.add_frames(video)
        session.flush()
    finally:
        hook.remove()
    hidden = torch.cat(outputs[1:])  # outputs[0]: the sinks
    ref = _dense_reference(engine, video, window)
    assert hidden.shape == ref.shape
    assert (hidden - ref).abs().max().item() <= 1e-5


def test_top_k_answer_equals_dense_reference_over_the_retrieved_blocks(load3):
    """A question that retrieves 2 of 6 blocks: first-token logits equal one dense forward
    over the whole prompt where the question sees only the sinks, those blocks' tokens and
    itself, at the ``layout`` positions (stream tokens at their ``get_rope_index`` ones)."""
    engine = load3(window_tokens=None, topk_frames=2, chunk_frames=4)
    bb = engine.backbone
    video = _frames(12, seed=6)
    session = engine.new_session(fps=FPS)
    session.add_frames(video)
    answer = session.answer(QUESTION, max_new_tokens=1, return_logits=True)
    kept = answer.selected[0]
    assert all(torch.equal(sel, kept) for sel in answer.selected) and len(kept) == 2

    prefix, suffix = bb.prompt.prefix_ids(), bb.prompt.suffix_ids(QUESTION)
    stream = bb.layout(fps=FPS)
    inputs = bb.chunk_inputs(bb.preprocess(torch.from_numpy(video), stream), 0, stream)
    s, m, q = len(prefix), inputs.embeds.shape[1], len(suffix)
    n = s + m + q
    true = _rope_index(engine, bb.vanilla_input_ids(QUESTION, 12, stream), 6)  # (3, N)
    block_of = torch.repeat_interleave(torch.arange(6), stream.tables.clock.header_lengths(torch.arange(6), FPS) + 6)
    seen = torch.cat([torch.ones(s, dtype=torch.bool), torch.isin(block_of, kept), torch.ones(q, dtype=torch.bool)])
    layout = bb.context_positions(s, kept, q, torch.device("cpu"), stream)  # (3, S + kept tokens + Q)
    question_frame = true.clone()  # positions as the question sees them
    question_frame[:, seen] = layout
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    allowed[s + m :] &= seen[None, :]
    offsets = true[:, :, None] - true[:, None, :]
    offsets[:, s + m :] = question_frame[:, s + m :, None] - question_frame[:, None, :]
    embeds = torch.cat([bb.embed(prefix), inputs.embeds, bb.embed(suffix)], dim=1)
    mask = torch.zeros(1, n, dtype=torch.bool)
    mask[:, s : s + m] = inputs.lm_kwargs["visual_pos_masks"]
    extra = {"visual_pos_masks": mask, "deepstack_visual_embeds": inputs.lm_kwargs["deepstack_visual_embeds"]}
    with torch.inference_mode(), bb.routed(Dense3D(bb.text_model.rotary_emb, allowed, offsets)):
        hidden = bb.text_model(inputs_embeds=embeds, use_cache=False, **extra).last_hidden_state[0, -1]
        logits = engine.model.lm_head(hidden).float()
    assert (answer.logits[0] - logits).abs().max().item() <= 1e-4


def test_odd_last_frame_is_padded_for_the_question_only(load3, tmp_path):
    """7 frames: the question sees the last block padded (timestamp of the repeated frame);
    the stream is untouched -- with the 8th frame it equals a session fed 8 frames, also
    after save / open_session."""
    engine = load3(window_tokens=None, topk_frames=None, chunk_frames=4)
    video = _frames(8, seed=7)
    session = engine.new_session(fps=FPS)
    session.add_frames(video[:7])
    answer = session.answer(QUESTION, max_new_tokens=3, return_logits=True)
    _, logits, _ = vanilla_answer(engine, video[:7], QUESTION, 3, fps=FPS)
    assert all((a - b).abs().max().item() <= 1e-4 for a, b in zip(answer.logits, logits))
    session.save(str(tmp_path / "saved"))
    reopened = engine.open_session(str(tmp_path / "saved"))
    fresh = engine.new_session(fps=FPS)
    fresh.add_frames(video)
    for s in (session, reopened):
        s.add_frames(video[7:])
        s.flush()
        for layer in range(fresh.state.store.layers):
            for block in range(4):
                assert all(torch.equal(a, b) for a, b in zip(s.state.store.block(layer, block), fresh.state.store.block(layer, block)))
        assert s.answer(QUESTION, max_new_tokens=3).token_ids == fresh.answer(QUESTION, max_new_tokens=3).token_ids


def test_frames_at_their_own_times_equal_vanilla_with_that_metadata(load3, tmp_path):
    """Frames sampled unevenly (qwen-vl-utils rounds ``linspace`` indices of a 30 fps file):
    a session given their times equals ``generate`` on the processor given that metadata
    (timestamps from ``frames_indices / fps``), also after save / open_session; 11 frames, so
    the last block is padded and its time is its one frame's."""
    engine = load3(window_tokens=None, topk_frames=None, chunk_frames=4)
    indices = np.linspace(0, 449, 11).round().astype(int).tolist()  # 15 s at 30 fps: every block's time is uneven
    times = [i / 30.0 for i in indices]
    video = _frames(11, seed=5)
    session = engine.new_session(fps=(len(indices) - 1) / (times[-1] - times[0]), frame_times=times)
    session.add_frames(video)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(engine.source)
    turn = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    meta = [{"fps": 30.0, "frames_indices": indices, "total_num_frames": 450}]
    inputs = processor(text=[text], videos=[video], video_metadata=meta, return_tensors="pt", do_sample_frames=False)
    assert torch.equal(session.family.vanilla_input_ids(QUESTION, 11, session.layout), inputs["input_ids"])
    with torch.inference_mode():
        out = engine.model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    session.save(str(tmp_path / "timed"))
    for s in (session, engine.open_session(str(tmp_path / "timed"))):
        answer = s.answer(QUESTION, max_new_tokens=4, return_logits=True)
        assert all((a - b[0]).abs().max().item() <= 1e-4 for a, b in zip(answer.logits, out.logits))
    evenly = engine.new_session(fps=session.fps)
    evenly.add_frames(video)
    assert not torch.equal(evenly.family.vanilla_input_ids(QUESTION, 11, evenly.layout), inputs["input_ids"])


def test_an_oversized_timestamp_is_refused(load3):
    bb = load3().backbone
    with pytest.raises(ValueError, match="slots"):
        bb.layout(fps=1.0).tables.clock.header_lengths(torch.tensor([10**8]), 1.0)


def test_qwen3_vl_moe_equals_vanilla_generate(tmp_path):
    """Qwen3-VL-MoE (expert MLPs, the same attention and layout): exact on its own tiny checkpoint."""
    from lmms_rekv import ReKV, ReKVConfig
    from research.tiny_qwen import build_tiny_qwen3_vl

    path = build_tiny_qwen3_vl(str(tmp_path / "moe"), moe=True)
    engine = ReKV.from_pretrained(path, dtype=torch.float32, device="cpu").with_config(
        ReKVConfig(window_tokens=None, topk_frames=None, chunk_frames=4, frame_size=SIZE))
    assert type(engine.backbone).__name__ == "Qwen3VLMoeBackbone"
    video = _frames(9, seed=8)
    session = engine.new_session(fps=FPS)
    session.add_frames(video)
    answer = session.answer(QUESTION, max_new_tokens=4, return_logits=True)
    tokens, logits, _ = vanilla_answer(engine, video, QUESTION, 4, fps=FPS)
    assert answer.token_ids == [t for t in tokens if t not in engine.generation_settings().eos_token_ids]
    assert all((a - b).abs().max().item() <= 1e-4 for a, b in zip(answer.logits, logits))


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_lmms_eval_model_answers_as_a_session_on_the_sampled_frames(family, tmp_path, qwen_checkpoint):
    """The lmms-eval model (``rekv``) on an M-RoPE checkpoint: its answer to a video document
    equals a session fed the frames it samples, at the rate it sampled them."""
    from lmms_eval.api.instance import Instance

    from lmms_rekv.integrations.lmms_eval_model import ReKVLlavaOV
    from lmms_rekv.io.video import iter_video_timed, write_video
    path = qwen_checkpoint(family)
    size = "64x64" if family == "qwen3_vl" else "56x56"
    lm = ReKVLlavaOV(pretrained=path, dtype="float32", device="cpu", window_tokens=16, topk_frames=2, chunk_frames=4,
                     fps=1, frame_size=size)
    video = write_video(str(tmp_path / "clip.mp4"), video_frames(28, size=(48, 48), seed=9), fps=4)  # 7 s
    lm.task_dict = {"t": {"test": [{"q": QUESTION, "visual": video}]}}
    args = (QUESTION, {"max_new_tokens": 5, "until": []}, lambda d: [d["visual"]], 0, "t", "test")
    [response] = lm.generate_until([Instance(request_type="generate_until", arguments=args, idx=0,
                                             metadata={"task": "t", "doc_id": 0, "repeats": 1})])
    timed = list(iter_video_timed(video, 1.0))
    assert len(timed) == 7  # an odd count: the last block is padded for the question
    session = lm.engine.new_session(fps=1.0)
    session.add_frames(np.stack([f for _, f in timed]))
    assert response == session.ask(QUESTION, max_new_tokens=5) and response


@pytest.mark.parametrize("size", [(60, 60), (50, 120), (130, 70), (160, 120)])  # square, wide, tall; budget binds
def test_default_config_sizes_by_the_clip_budget_and_equals_vanilla(qwen3_dir, size):
    """No frame_size: a stream whose frame count is known (``new_session(frames=n)``, as in
    lmms-eval) gets the size the processor's per-clip budget gives those n frames; every block
    retrieved equals vanilla generate on the raw frames. A live stream (count unknown) is
    sized as a clip of one temporal patch (``LIVE_FRAMES``)."""
    from lmms_rekv import ReKV, ReKVConfig

    engine = ReKV.from_pretrained(qwen3_dir, dtype=torch.float32, device="cpu", config=ReKVConfig(window_tokens=None, topk_frames=None,
                                                                                                  chunk_frames=4))
    video = video_frames(12, size=size, seed=4)
    session = engine.new_session(fps=FPS, frames=len(video))
    session.add_frames(video[:5])
    session.add_frames(video[5:])
    answer = session.answer(QUESTION, max_new_tokens=5, return_logits=True)
    tokens, logits, inputs = vanilla_answer(engine, video, QUESTION, 5, fps=FPS)
    unit = engine.backbone.unit // 2  # the vision patch: grids count patches
    assert [s // unit for s in session.layout.frame_size] == inputs["video_grid_thw"][0, 1:].tolist()
    assert answer.token_ids == [t for t in tokens if t not in engine.generation_settings().eos_token_ids]
    assert max((a - b).abs().max().item() for a, b in zip(answer.logits, logits)) <= 1e-4
    live = engine.new_session(fps=FPS)
    live.add_frames(video[:2])
    assert live.layout.frame_size == engine.backbone.stream_size(*size, 2)
    if size == (160, 120):  # 12 frames at full size exceed the clip budget: smaller than a 2-frame clip's
        assert session.layout.frame_size < live.layout.frame_size


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_lmms_eval_model_default_config_equals_vanilla_on_a_wide_video(family, tmp_path, qwen_checkpoint):
    """No frame_size: the lmms-eval model sizes each video as the family's processor would (Qwen3-VL:
    from the frame count it will sample, read from the container before decoding) and, with
    every block retrieved, answers exactly as vanilla generate on the frames it samples."""
    from lmms_eval.api.instance import Instance

    from lmms_rekv.integrations.lmms_eval_model import ReKVLlavaOV
    from lmms_rekv.io.video import iter_video_timed, write_video
    path = qwen_checkpoint(family)
    lm = ReKVLlavaOV(pretrained=path, dtype="float32", device="cpu", window_tokens="none", topk_frames="none", chunk_frames=4, fps=1)
    video = write_video(str(tmp_path / "wide.mp4"), video_frames(32, size=(48, 112), seed=9), fps=4, lossless=True)  # 8 s
    lm.task_dict = {"t": {"test": [{"visual": video}]}}
    args = (QUESTION, {"max_new_tokens": 5, "until": []}, lambda d: [d["visual"]], 0, "t", "test")
    [response] = lm.generate_until([Instance(request_type="generate_until", arguments=args, idx=0,
                                             metadata={"task": "t", "doc_id": 0, "repeats": 1})])
    frames = np.stack([f for _, f in iter_video_timed(video, 1.0)])
    tokens, _, inputs = vanilla_answer(lm.engine, frames, QUESTION, 5, fps=1.0)
    eos = lm.engine.generation_settings().eos_token_ids
    assert response == lm.engine.tokenizer.decode([t for t in tokens if t not in eos]).strip()
    assert inputs["video_grid_thw"][0, 2] > inputs["video_grid_thw"][0, 1]  # wide: the aspect is kept
