"""The miniature's external embedder: a tiny open_clip model trained on the world, shipped
beside the miniature, loaded by open_clip itself and by the engine (``clip_model="miniature"``)."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmms_rekv import ReKVConfig, ReKVLlavaOneVision
from lmms_rekv.miniature import shipped_path, world
from lmms_rekv.retrieval.embedder import ClipEmbedder
from research.miniature.clip import needle_hit_rate, shipped_clip, train_clip

pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def embedder():
    return ClipEmbedder("miniature", None, torch.device("cpu"))


def test_shipped_embedder_is_plain_open_clip(embedder):
    """Loaded with open_clip's own factory from the shipped files, it embeds exactly alike."""
    import open_clip

    config, weights = shipped_clip()
    open_clip.add_model_config(config)
    model = open_clip.create_model(os.path.splitext(os.path.basename(config))[0], pretrained=weights).eval()
    tokens = open_clip.get_tokenizer(os.path.splitext(os.path.basename(config))[0])(["What color was the cup?"])
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokens), dim=-1)[0]
    assert torch.allclose(text, embedder.embed_text("What color was the cup?"), atol=1e-6)
    log = json.load(open(os.path.join(os.path.dirname(weights), "training_log.json")))
    assert log["steps"] > 100 and "held_out_needle_hit_top4" in log


def test_shipped_embedder_finds_the_named_objects(embedder):
    """Held out, 64-frame videos: the frames of the objects a question names are among the 4
    closest to it (a random choice of 4 frames: 6 % for one needle, 0.3 % for two)."""
    rates = needle_hit_rate(embedder, lengths=(64,), videos=20, seed=7)
    assert min(rates[kind]["64"] for kind in world.KINDS) >= 0.9, rates


def test_engine_retrieves_with_the_shipped_embedder(embedder):
    """``retrieval="external", clip_model="miniature"``: every layer loads the 4 frames closest
    to the question under the shipped embedder, computed here directly."""
    engine = ReKVLlavaOneVision.from_pretrained(
        shipped_path(), config=ReKVConfig(window_tokens=16, topk_frames=4, retrieval="external", clip_model="miniature", recent_frames=0),
        dtype=torch.float32, device="cpu")
    rng = world.rng_for(world.HELD_OUT, 31)
    episode = world.make_episode(rng, 32)
    frames = world.render(episode.objects, episode.colors, rng)
    session = engine.new_session()
    session.add_frames(frames)
    q = episode.questions[0]
    answer = session.answer(q.text, max_new_tokens=2)
    scores = embedder.embed_frames(torch.from_numpy(frames)) @ embedder.embed_text(q.text)
    expected = sorted(scores.topk(4).indices.tolist())
    assert all(s.tolist() == expected for s in answer.selected)


def test_clip_training_lowers_the_loss():
    _, log = train_clip(minutes=5, max_steps=40, batch=32, progress_bar=False)
    losses = [h["loss"] for h in log["history"]]
    assert log["steps"] == 40 and np.mean(losses[-1:]) < 0.7 * losses[0], losses
