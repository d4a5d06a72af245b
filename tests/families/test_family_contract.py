"""The family contract, written once and run on every M-RoPE family (Qwen2-VL, Qwen2.5-VL,
Qwen3-VL; tiny random checkpoints built offline): with an unbounded window and every block
retrieved a session answers as the vanilla model's ``generate`` on its own processor's inputs
(tokens equal, logits within 1e-4) however the frames arrive and whatever the chunk size; the
position strategies the family lists as exact are, the others are not; top-k retrieval keeps
device bytes flat and retrieves whole blocks. What differs per family is data (``SPECS``)."""

from __future__ import annotations

import pytest
import torch
from helpers.mrope_reference import QUESTION, SPECS, vanilla_answer, video_frames


@pytest.fixture(scope="session")
def engines(qwen_engines):
    """``engines(family)(**config)``: that tiny checkpoint with the family's ``SPECS`` config."""
    return lambda family: lambda **config: qwen_engines(family)(**{**SPECS[family].config, **config})


@pytest.mark.parametrize("family", sorted(SPECS))
@pytest.mark.parametrize("frames,chunk,splits", [(12, 2, [(0, 12)]), (12, 6, [(0, 5), (5, 6), (6, 12)]),
                                                 (11, 4, [(0, 3), (3, 11)]), (12, 64, [(0, 3), (3, 12)])])
def test_unbounded_window_every_block_equals_vanilla_generate(engines, family, frames, chunk, splits):
    """An odd last frame: the block padded as the processor pads it."""
    spec = SPECS[family]
    engine = engines(family)(window_tokens=None, topk_frames=None, chunk_frames=chunk)
    video = video_frames(frames, size=spec.size, seed=1)
    session = engine.new_session(fps=spec.fps)
    for lo, hi in splits:
        session.add_frames(video[lo:hi])
    answer = session.answer(QUESTION, max_new_tokens=6, return_logits=True)
    tokens, logits, _ = vanilla_answer(engine, video, QUESTION, 6, fps=spec.fps)
    assert answer.token_ids == [t for t in tokens if t not in engine.generation_settings().eos_token_ids]
    assert len(answer.logits) == len(logits)
    for mine, ref in zip(answer.logits, logits):
        assert (mine - ref).abs().max().item() <= 1e-4
    assert all(torch.equal(sel, torch.arange(-(-frames // 2))) for sel in answer.selected)


@pytest.mark.parametrize("family,strategy", [(f, s) for f in sorted(SPECS) for s in SPECS[f].strategies])
def test_which_strategies_are_exact_with_every_block(engines, family, strategy):
    spec = SPECS[family]
    engine = engines(family)(window_tokens=None, topk_frames=None, chunk_frames=4, position_strategy=strategy)
    video = video_frames(12, size=spec.size, seed=5)
    session = engine.new_session(fps=spec.fps)
    session.add_frames(video)
    answer = session.answer(QUESTION, max_new_tokens=1, return_logits=True)
    _, logits, _ = vanilla_answer(engine, video, QUESTION, 1, fps=spec.fps)
    error = (answer.logits[0] - logits[0]).abs().max().item()
    assert error <= 1e-4 if strategy in spec.exact else error > 1e-3


@pytest.mark.parametrize("family", sorted(SPECS))
def test_top_k_keeps_device_bytes_flat_and_retrieves_whole_blocks(engines, family):
    spec = SPECS[family]
    engine = engines(family)(window_tokens=12, topk_frames=2, chunk_frames=4)
    session = engine.new_session(fps=spec.fps)
    device_bytes = []
    for i in range(5):
        session.add_frames(video_frames(4, size=spec.size, seed=10 + i))
        device_bytes.append(session.stats()["device_bytes"])
        answer = session.answer(QUESTION, max_new_tokens=2)
        assert all(len(sel) == 2 for sel in answer.selected)
    stats = session.stats()
    assert len(set(device_bytes[1:])) == 1 and stats["encoded_frames"] == 20 and stats["blocks"] == 10
