"""Invariant 2: chunked sink + sliding-window encoding equals a dense explicit-mask forward,
and the stored blocks do not depend on how frames are split across add_frames calls."""

import pytest
import torch
from helpers.reference import dense_forward


def _encode_with_hidden(engine, video, splits):
    outputs = []
    hook = engine.language_model.register_forward_hook(lambda m, i, o: outputs.append(o.last_hidden_state[0]))
    try:
        session = engine.new_session()
        for lo, hi in splits:
            session.add_frames(video[lo:hi])
        session.flush()
    finally:
        hook.remove()
    return session, torch.cat(outputs)


@pytest.mark.parametrize("window,chunk,block", [(24, 3, 1000), (40, 4, 9), (16, 1, 5), (1000, 5, 64)])
def test_windowed_encoding_matches_dense_mask(load, frames, window, chunk, block):
    engine = load(window_tokens=window, topk_frames=None, chunk_frames=chunk, query_block_tokens=block)
    video = frames(11, seed=1)
    session, hidden = _encode_with_hidden(engine, video, [(0, 11)])
    ref, _ = dense_forward(engine, video, window)
    assert hidden.shape == ref.shape
    assert (hidden - ref).abs().max().item() <= 1e-5
    assert session.stats()["window_tokens"] == min(window, 11 * engine.block_tokens)


def test_window_without_sinks_is_a_sliding_window_mask(load, frames, monkeypatch):
    """With an empty prefix the scheme is exactly one forward with a sliding-window mask."""
    engine = load(window_tokens=20, topk_frames=None, chunk_frames=2)
    monkeypatch.setattr(engine.backbone.prompt, "prefix_ids", lambda: [])  # a template with nothing before <video>
    video = frames(6, seed=2)
    session, hidden = _encode_with_hidden(engine, video, [(0, 6)])
    feats = engine.backbone.block_features(engine.processor(torch.from_numpy(video)))
    n = feats.shape[1]
    idx = torch.arange(n)
    mask = (idx[None] <= idx[:, None]) & (idx[None] > idx[:, None] - 20)
    bias = torch.zeros(n, n).masked_fill(~mask, float("-inf"))[None, None]
    with torch.inference_mode():
        ref = engine.language_model(inputs_embeds=feats, attention_mask=bias, use_cache=False).last_hidden_state[0]
    assert (hidden - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("window", [None, 30])
def test_blocks_identical_however_frames_arrive(load, frames, window):
    engine = load(window_tokens=window, topk_frames=None, chunk_frames=4)
    video = frames(13, seed=4)
    stores = []
    for step in (1, 5, 13):
        session = engine.new_session()
        for lo in range(0, 13, step):
            session.add_frames(video[lo : lo + step])
        session.flush()
        stores.append(session.state.store)
    first = stores[0]
    for other in stores[1:]:
        assert other.blocks == first.blocks == 13
        for layer in range(first.layers):
            for f in range(13):
                for a, b in zip(first.block(layer, f), other.block(layer, f)):
                    assert torch.equal(a, b)
