"""External (open_clip) and hybrid retrieval, and the adaptive selection policies."""

import builtins

import pytest
import torch
import torch.nn.functional as F
from helpers.reference import answer_capturing_queries

from lmms_rekv.retrieval.scoring import frame_scores
from lmms_rekv.retrieval.selection import SelectionPolicy, fuse, mass_count, select
from research.tiny import write_tiny_clip_config

QUESTION = "where is the red cup?"


@pytest.fixture(scope="module")
def clip_json(tmp_path_factory):
    return write_tiny_clip_config(str(tmp_path_factory.mktemp("clip")))


def _engine(load, clip_json, **config):
    base = dict(window_tokens=48, topk_frames=3, chunk_frames=4, clip_model=clip_json, clip_pretrained=None,
                query_pool="mean", query_span="prompt", layer_frames="own",  # brute forces below score with the mean query
                recent_frames=0)  # ... and rank every block (recency: test_hub.py)
    engine = load(**{**base, **config})
    if engine.config.uses_embeddings:
        engine.embedder  # built once per engine
    return engine


def test_external_selection_is_cosine_topk_shared_by_layers(load, clip_json, frames, monkeypatch):
    engine = _engine(load, clip_json, retrieval="external")
    calls = []
    original = engine.embedder.embed_frames
    monkeypatch.setattr(engine.embedder, "embed_frames", lambda f: calls.append(f.shape[0]) or original(f))
    session = engine.new_session()
    video = frames(11, seed=10)
    session.add_frames(video[:4])
    session.add_frames(video[4:])
    first = session.answer(QUESTION, max_new_tokens=3)
    session.answer("what color is the car?", max_new_tokens=3)
    assert sum(calls) == 11  # once per frame, not per question
    stats = session.stats()
    assert stats["embedding_bytes"] == 11 * 32 * 4
    # brute force: cosine between independently computed embeddings
    frames_emb = F.normalize(engine.embedder.model.encode_image(_clip_pixels(engine, video)).float(), dim=-1)
    text = F.normalize(engine.embedder.model.encode_text(engine.embedder.tokenizer([QUESTION])).float(), dim=-1)[0]
    cos = frames_emb @ text
    expected = sorted(cos.topk(3).indices.tolist())
    assert torch.allclose(session.embeddings, frames_emb, atol=1e-5)
    for selected in first.selected:
        assert selected.tolist() == expected


def _clip_pixels(engine, video):
    x = torch.from_numpy(video).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=engine.embedder.size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 255)
    return (x / 255.0 - engine.embedder.mean) / engine.embedder.std


class PlantedEmbedder:
    """Frame f embeds to e_{f mod 4} unless it is planted (then e_4); questions embed to e_4."""

    def __init__(self, planted_value=250):
        self.planted_value, self.frames = planted_value, 0

    def embed_frames(self, frames):
        x = torch.as_tensor(frames)
        planted = x.float().mean(dim=(1, 2, 3)) > 200
        out = torch.zeros(x.shape[0], 5)
        ids = torch.arange(self.frames, self.frames + x.shape[0]) % 4
        out[torch.arange(x.shape[0]), ids] = 1.0
        out[planted] = F.one_hot(torch.tensor(4), 5).float()
        self.frames += x.shape[0]
        return out

    def embed_text(self, text):
        return F.one_hot(torch.tensor(4), 5).float()


@pytest.mark.parametrize("mode,extra", [("external", {}), ("hybrid", {"hybrid_alpha": 0.8}), ("hybrid", {"hybrid_rule": "rrf", "hybrid_alpha": 0.9})])
def test_planted_frames_are_retrieved(load, frames, mode, extra):
    engine = load(window_tokens=48, topk_frames=2, chunk_frames=4, retrieval=mode, recent_frames=0, **extra)
    engine.embedder = PlantedEmbedder()
    video = frames(12, seed=11)
    video[[3, 9]] = 255  # the planted frames
    session = engine.new_session()
    session.add_frames(video)
    answer = session.answer(QUESTION, max_new_tokens=2)
    for selected in answer.selected:
        assert selected.tolist() == [3, 9]


@pytest.mark.parametrize("summary_tier", ["device", "cpu"])
def test_hybrid_equals_brute_force_fusion(load, clip_json, frames, summary_tier):
    engine = _engine(load, clip_json, retrieval="hybrid", hybrid_alpha=0.3, topk_frames=4, summary_tier=summary_tier)
    session = engine.new_session()
    session.add_frames(frames(12, seed=12))
    assert session.stats()["embedding_device_bytes" if summary_tier == "device" else "index_host_bytes"] >= 12 * 32 * 4
    answer, seen = answer_capturing_queries(engine, session, QUESTION, max_new_tokens=2)
    text = engine.model.config.text_config
    external = session.embeddings @ engine.embedder.embed_text(QUESTION)
    for layer, selected in enumerate(answer.selected):
        query = seen[layer][1:].float().mean(0).view(text.num_attention_heads, -1)
        internal = frame_scores(query, session.state.store.summaries(layer), "dot")
        z = lambda s: (s - s.mean()) / s.std(unbiased=False)  # noqa: E731
        fused = 0.3 * z(external) + 0.7 * z(internal)
        assert selected.tolist() == sorted(fused.topk(4).indices.tolist())


def test_adaptive_mass_peaked_few_flat_budget():
    policy = SelectionPolicy(topk=10, adaptive="mass", mass=0.9, temperature=0.1, min_frames=1)
    peaked = torch.zeros(100)
    peaked[[17, 60]] = 10.0
    assert select(peaked, policy).tolist() == [17, 60]
    flat = torch.ones(100)
    assert len(select(flat, policy)) == 10
    noisy = torch.randn(100, generator=torch.Generator().manual_seed(0))
    assert len(select(noisy, policy)) <= 10
    assert mass_count(peaked, 0.9, 0.1) == 2
    assert len(select(peaked, SelectionPolicy(topk=10, adaptive="mass", min_frames=5))) == 5


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("policy", [
    SelectionPolicy(topk=8, recent=3),
    SelectionPolicy(topk=8, recent=2, group=3),
    SelectionPolicy(topk=9, adaptive="mass", recent=4, group=2, min_frames=6),
    SelectionPolicy(topk=5, group=4),
])
def test_budget_recency_and_groups(policy, seed):
    scores = torch.randn(37, generator=torch.Generator().manual_seed(seed))
    chosen = select(scores, policy).tolist()
    assert len(chosen) <= policy.topk
    assert chosen == sorted(set(chosen))
    assert set(range(37 - policy.recent, 37)) <= set(chosen)
    head = 37 - policy.recent
    rest = [c for c in chosen if c < head]
    for c in rest:  # whole groups of the frames before the recent ones
        start = c - c % policy.group
        assert all(g in chosen for g in range(start, min(start + policy.group, head)))
    if policy.adaptive is None:  # fixed: as many whole groups as the budget allows
        units = -(-head // policy.group)
        expected = min((policy.topk - policy.recent) // policy.group, units)
        assert len({c // policy.group for c in rest}) == expected


def test_group_scores_are_group_means():
    scores = torch.tensor([0.0, 0.0, 5.0, 5.0, 1.0, 9.0, -3.0])
    # groups of 2: means 0, 5, 5, -3 -> the two best groups are frames 2-3 and 4-5
    assert select(scores, SelectionPolicy(topk=4, group=2)).tolist() == [2, 3, 4, 5]
    assert fuse(scores, scores, "rrf", 0.5).argmax() == 5


def test_adaptive_session_respects_budget_and_recency(load, frames):
    engine = load(window_tokens=48, topk_frames=5, chunk_frames=4, adaptive="mass", recent_frames=2, adaptive_min_frames=3)
    session = engine.new_session()
    session.add_frames(frames(14, seed=13))
    answer = session.answer(QUESTION, max_new_tokens=4)
    counts = [len(s) for s in answer.selected]
    assert all(3 <= c <= 5 for c in counts)
    assert all({12, 13} <= set(s.tolist()) for s in answer.selected)
    assert answer.text == session.ask(QUESTION, max_new_tokens=4)


def test_layers_may_load_different_counts(load, frames):
    """Adaptive counts differ per layer; each layer's positions stay consecutive."""
    engine = load(window_tokens=None, topk_frames=None, chunk_frames=4)
    video = frames(8, seed=14)
    full = engine.new_session()
    full.add_frames(video)
    reference = full.answer(QUESTION, max_new_tokens=4, return_logits=True, eos_token_ids=())
    # a selector that loads every frame on layer 0 and every frame on layer 1: same as full
    session = engine.new_session()
    session.add_frames(video)
    session.answerer.selector = lambda question, view: (lambda layer, query: torch.arange(8))
    same = session.answer(QUESTION, max_new_tokens=4, return_logits=True, eos_token_ids=())
    assert same.token_ids == reference.token_ids
    assert torch.allclose(same.logits[0], reference.logits[0], atol=1e-5)
    # now layer 1 loads only 3 frames: a different but valid answer
    session.answerer.selector = lambda question, view: (lambda layer, query: torch.arange(8) if layer == 0 else torch.tensor([1, 4, 6]))
    other = session.answer(QUESTION, max_new_tokens=4, return_logits=True, eos_token_ids=())
    assert [len(s) for s in other.selected] == [8, 3]
    assert not torch.allclose(other.logits[0], reference.logits[0], atol=1e-3)


def test_missing_open_clip_names_the_extra(load, tiny_dir, frames, monkeypatch):
    from lmms_rekv import ReKVConfig, ReKVLlavaOneVision

    real_import = builtins.__import__

    def no_open_clip(name, *args, **kwargs):
        if name == "open_clip" or name.startswith("open_clip."):
            raise ImportError("No module named 'open_clip'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_open_clip)
    with pytest.raises(ImportError, match=r"lmms-rekv\[clip\]"):
        ReKVLlavaOneVision.from_pretrained(tiny_dir, config=ReKVConfig(retrieval="external", topk_frames=4, block_tokens=16), dtype="float32", device="cpu")
    session = load(topk_frames=3, window_tokens=48).new_session()  # internal still works
    session.add_frames(frames(4))
    assert isinstance(session.ask(QUESTION, max_new_tokens=2), str)


def test_external_config_validation():
    from lmms_rekv import ReKVConfig

    with pytest.raises(ValueError, match="hybrid_alpha"):
        ReKVConfig(retrieval="hybrid", hybrid_alpha=1.5)
    with pytest.raises(ValueError, match="adaptive"):
        ReKVConfig(adaptive="entropy")
    with pytest.raises(ValueError, match="recent_frames"):
        ReKVConfig(topk_frames=4, recent_frames=5)
    with pytest.raises(ValueError, match="group_frames"):
        ReKVConfig(topk_frames=4, recent_frames=2, group_frames=3)
    with pytest.raises(ValueError, match="adaptive_mass"):
        ReKVConfig(adaptive="mass", adaptive_mass=0)


def test_model_args_reach_the_config(tiny_dir, clip_json, tmp_path):
    import numpy as np
    from lmms_eval.api.instance import Instance

    from lmms_rekv import ReKVConfig
    from lmms_rekv.integrations.lmms_eval_model import ReKVLlavaOV
    from lmms_rekv.io.video import write_video

    lm = ReKVLlavaOV(
        pretrained=tiny_dir, dtype="float32", device="cpu", fps="2", window_tokens="none", topk_frames="3",
        retrieval="hybrid", clip_model=clip_json, clip_pretrained="none", hybrid_alpha="0.7", hybrid_rule="rrf",
        adaptive="mass", recent_frames="1", group_frames="2", chunk_frames="4",
    )
    cfg = lm.engine.config
    assert (cfg.window_tokens, cfg.topk_frames, cfg.clip_pretrained, cfg.hybrid_alpha, cfg.group_frames) == (None, 3, None, 0.7, 2)
    rng = np.random.default_rng(0)
    path = write_video(str(tmp_path / "v.mp4"), rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8), fps=4)
    lm.task_dict = {"t": {"test": [{}]}}
    request = Instance(request_type="generate_until", idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1},
                       arguments=("what?", {"max_new_tokens": 3}, lambda d: [path], 0, "t", "test"))
    assert lm.generate_until([request])[0] and not lm.failures
    with pytest.raises(ValueError, match="unknown ReKVConfig field"):
        ReKVConfig.from_strings(topk=3)
    with pytest.raises(ValueError, match="cannot read"):
        ReKVConfig.from_strings(topk_frames="many")
