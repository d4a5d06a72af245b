"""Invariant 1: with an unbounded window and every frame retrieved, ReKV is vanilla LLaVA-OV."""

import pytest
import torch
from helpers.reference import dense_generate

QUESTION = "what is the man doing in the kitchen?"


def _uneven_chunks(session, frames):
    for lo, hi in [(0, 1), (1, 6), (6, 7), (7, 13), (13, len(frames))]:
        session.add_frames(frames[lo:hi])


RETRIEVAL_VARIANTS = [{}, {"query_pool": "max", "layer_frames": "first"}, {"query_pool": "head", "score": "cosine"}]


def vanilla_generate(engine, tiny_dir, video, question, max_new_tokens):
    """The unpatched model answering from the checkpoint's own processor (``AutoProcessor``:
    its chat template, ``<video>`` expanded, its video processor's pixels) -- the reference."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_dir)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    inputs = processor(text=processor.apply_chat_template(messages, add_generation_prompt=True), videos=[video],
                       return_tensors="pt")
    assert inputs["input_ids"].tolist() == engine.vanilla_input_ids(question, len(video)).tolist()
    with torch.inference_mode():
        out = engine.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, output_logits=True,
                                    return_dict_in_generate=True)
    tokens = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    eos = set(engine.generation_settings().eos_token_ids)
    if tokens and tokens[-1] in eos:
        tokens = tokens[:-1]
    return tokens, out.logits


def assert_same_answer(engine, answer, tokens, logits):
    assert answer.token_ids == tokens
    assert len(answer.token_ids) >= 5  # a real multi-token comparison
    for ours, theirs in zip(answer.logits, logits):
        assert torch.allclose(ours, theirs[0].float(), atol=1e-4, rtol=0)
    assert answer.text == engine.tokenizer.decode(tokens, skip_special_tokens=True)


@pytest.mark.parametrize("variant", RETRIEVAL_VARIANTS, ids=lambda v: "-".join(map(str, v.values())) or "default")
def test_unbounded_matches_vanilla_generate(load, tiny_dir, frames, variant):
    """Every retrieval variant that retrieves every frame (here topk = frames) is exact."""
    engine = load(window_tokens=None, topk_frames=14 if variant else None, chunk_frames=4, **variant)
    video = frames(14)
    session = engine.new_session()
    _uneven_chunks(session, video)
    answer = session.answer(QUESTION, max_new_tokens=10, return_logits=True)
    assert_same_answer(engine, answer, *vanilla_generate(engine, tiny_dir, video, QUESTION, 10))


@pytest.mark.parametrize("size", [(100, 100), (48, 96), (96, 40), (37, 53), (64, 64)],
                         ids=["square", "wide", "tall", "odd", "no-resize"])
def test_user_frames_answer_as_the_checkpoints_own_processor(load, tiny_dir, frames, size):
    """uint8 frames of any size: the pixels are the checkpoint's video processor's (its resize,
    rescale and normalization), so ReKV with every frame equals AutoProcessor + generate."""
    engine = load(window_tokens=None, topk_frames=None, chunk_frames=3)
    video = frames(7, seed=sum(size), size=size)
    session = engine.new_session()
    session.add_frames(video[:4])
    session.add_frames(video[4:])
    answer = session.answer(QUESTION, max_new_tokens=8, return_logits=True, eos_token_ids=())
    tokens, logits = vanilla_generate(engine, tiny_dir, video, QUESTION, 8)
    assert_same_answer(engine, answer, tokens, logits)


def test_windowed_with_every_frame_matches_dense_reference(load, frames):
    window = 40  # 2.5 frames of 16 tokens: much smaller than the 12-frame video
    engine = load(window_tokens=window, topk_frames=None, chunk_frames=5, query_block_tokens=7)
    video = frames(12, seed=3)
    session = engine.new_session()
    session.add_frames(video[:7])
    session.add_frames(video[7:])
    answer = session.answer(QUESTION, max_new_tokens=6, return_logits=True, eos_token_ids=())
    tokens, logits = dense_generate(engine, video, window, QUESTION, 6)
    assert answer.token_ids == tokens
    for ours, ref in zip(answer.logits, logits):
        assert torch.allclose(ours, ref, atol=1e-4, rtol=0)
    # the window really mattered: an unbounded-window answer differs
    full = load(window_tokens=None, topk_frames=None, chunk_frames=5).new_session()
    full.add_frames(video)
    other = full.answer(QUESTION, max_new_tokens=6, return_logits=True, eos_token_ids=())
    assert not torch.allclose(other.logits[0], answer.logits[0], atol=1e-3)


def test_loglikelihood_matches_vanilla_forward(load, frames):
    engine = load(window_tokens=None, topk_frames=None, chunk_frames=4)
    video = frames(6, seed=9)
    session = engine.new_session()
    session.add_frames(video)
    question, continuation = "which option is right? A. red B. blue", "B. blue"
    ours, greedy = session.loglikelihood(question, continuation)

    cont = engine.tokenize(continuation)
    ids = torch.cat([engine.vanilla_input_ids(question, len(video)), torch.tensor([cont])], dim=1)
    pixels = engine.processor(torch.from_numpy(video))
    with torch.inference_mode():
        logits = engine.model(input_ids=ids, pixel_values_videos=pixels[None]).logits[0].float()
    logprobs = torch.log_softmax(logits[-len(cont) - 1 : -1], dim=-1)
    target = torch.tensor(cont)
    expected = float(logprobs.gather(1, target[:, None]).sum())
    assert abs(ours - expected) < 1e-4
    assert greedy == bool((logprobs.argmax(-1) == target).all())
    # a continuation equal to the greedy answer is reported as greedy
    answer = session.answer(question, max_new_tokens=3, eos_token_ids=())
    text = engine.tokenizer.decode(answer.token_ids)
    if engine.tokenize(text) == answer.token_ids:
        assert session.loglikelihood(question, text)[1]
