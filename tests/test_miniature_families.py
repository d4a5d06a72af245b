"""The miniature in the Qwen families' shapes (real Qwen2-VL / Qwen2.5-VL / Qwen3-VL classes,
one-frame temporal patches): training runs and lowers the loss, the saved folder loads
through ``ReKV.from_pretrained``, and the training forward (the model's own
``get_rope_index`` positions over the training prompt) gives the logits the engine gives
with an unbounded window and every frame -- so what the training teaches is what the
engine's exact path sees."""

from __future__ import annotations

import pytest
import torch

from lmms_rekv.miniature import world
from research.miniature import build
from research.miniature.families import TRAIN_FPS
from research.miniature.train import Batch, TrainConfig, _layout, forward, train


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_shaped_miniature_trains_and_matches_the_engine(family, tmp_path):
    from lmms_rekv import ReKV, ReKVConfig

    arch = build.Architecture(family=family)
    cfg = TrainConfig(minutes=5, max_steps=30, warmup_steps=5, batch=16, seed=3, threads=None)
    model, tokenizer, log = train(cfg, arch, progress_bar=False)
    losses = [h["loss"] for h in log["history"]]
    assert log["steps"] == 30 and losses[-1] < 0.7 * losses[0], losses
    path = build.save_checkpoint(str(tmp_path / family), model, tokenizer, arch, log)

    engine = ReKV.from_pretrained(path, dtype=torch.float32, device="cpu").with_config(
        ReKVConfig(window_tokens=None, topk_frames=None, chunk_frames=4))
    assert engine.backbone.model_type == family and engine.backbone.frames_per_block == 1
    layout, pixels = _layout(arch, tokenizer)
    episode = world.make_episode(world.rng_for(world.HELD_OUT, 6), 6)
    frames = world.render(episode.objects, episode.colors, world.rng_for(world.HELD_OUT, 7))
    for q in episode.questions:
        ids, answer_at, anchor, first = layout.sequence(6, q)
        assert ids[:answer_at] == engine.backbone.vanilla_input_ids(q.text, 6, engine.backbone.layout(fps=TRAIN_FPS))[0].tolist()
        one = torch.tensor
        batch = Batch(pixels(frames)[None], one([ids[:answer_at]]), torch.ones(1, answer_at, dtype=torch.long),
                      one([answer_at]), one([anchor]), one([first]), one([episode.objects]), one([episode.colors]), [q.kind],
                      one([[0, 0]]))
        with torch.no_grad():
            hidden, visual = forward(engine.model, batch, layout.video_id, layout=layout)
            theirs = engine.model.lm_head(hidden[0, -1]).float()
        assert visual.shape == (1, 6, layout.frame_tokens, hidden.shape[-1])
        session = engine.new_session(fps=TRAIN_FPS)
        session.add_frames(frames)
        ours = session.answer(q.text, max_new_tokens=1, return_logits=True).logits[0]
        assert (ours - theirs).abs().max().item() <= 1e-4


def test_position_study_compares_strategies_on_the_same_retrieved_frames(tmp_path):
    """One video through the position study on a (briefly trained) Qwen2.5-VL-shaped
    miniature: every strategy the family supports, the references and the wrong-rate rows are
    measured, and the strategies retrieved the same frames (they differ only in placement)."""
    from research.miniature.accuracy import Bench
    from research.miniature.position_study import PositionSettings, markdown, run_video, summary

    arch = build.Architecture(family="qwen2_5_vl")
    model, tokenizer, log = train(TrainConfig(minutes=5, max_steps=3, warmup_steps=2, batch=4, seed=1), arch, progress_bar=False)
    path = build.save_checkpoint(str(tmp_path / "m"), model, tokenizer, arch, log)
    settings = PositionSettings(lengths=(12,), videos=1, clip_model=None)
    bench = Bench(path, settings, str(tmp_path))
    rng = world.rng_for(world.HELD_OUT, 3)
    episode = world.make_episode(rng, 12)
    tallies = {}
    run_video(bench, episode, world.render(episode.objects, episode.colors, rng), tallies, 12)
    modes = {m for m, _, _ in tallies}
    strategies = ("layout", "original", "consecutive_t", "1d")
    assert modes == {"full", "uniform/k4", "windowed_all", *strategies, *(f"{s} @0.25fps" for s in strategies)}
    for kind in world.KINDS:
        hits = {tuple(tallies[(s, 12, kind)].hits) for s in strategies}
        assert len(hits) == 1, (kind, hits)
    results = {"family": "qwen2_5_vl", "model": path, "seconds": 1.0, "settings": {**settings.__dict__, "lengths": [12]},
               "cells": [{"mode": m, "length": n, "kind": k, **t.summary()} for (m, n, k), t in tallies.items()]}
    assert "| consecutive_t @0.25fps |" in markdown(results)
    assert "| qwen2_5_vl | 1d @0.25fps |" in summary([results])
