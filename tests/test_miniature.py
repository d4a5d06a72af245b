"""The trained miniature: its world, its training loop, the shipped weights and their accuracy."""

import json
import os

import numpy as np
import pytest
import torch

from lmms_rekv.miniature import WEIGHTS, shipped_path, world
from research.miniature import build
from research.miniature.accuracy import Bench, ask, random_hit_rate
from research.miniature.train import Layout, TrainConfig, evaluate, forward, make_batch, train

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def decode_frame(frame: np.ndarray):
    """(object, colour) read back from a rendered frame: nearest palette colour of the tiles'
    top halves, and the bits of their bottom halves."""
    scale = frame.shape[0] // world.FRAME_SIZE
    small = frame.reshape(world.FRAME_SIZE, scale, world.FRAME_SIZE, scale, 3).mean(axis=(1, 3))
    tiles = small.reshape(4, world.TILE, 4, world.TILE, 3).mean(axis=(0, 2))  # average tile (4, 4, 3)
    palette = np.array([world.PALETTE[c] for c in world.COLORS])
    color = int(np.argmin(((palette - tiles[:2].reshape(-1, 3).mean(0)) ** 2).sum(1)))
    bits = tiles[2:].mean(axis=(0, 2))
    return int(sum((1 << j) for j, v in enumerate(bits) if v > 127)), color


@pytest.mark.parametrize("scale", [1, 8])
def test_frames_show_their_object_and_colour(scale):
    rng = world.rng_for(world.HELD_OUT, 5)
    episode = world.make_episode(rng, 40)
    frames = world.render(episode.objects, episode.colors, rng, scale=scale)
    assert frames.shape == (40, 16 * scale, 16 * scale, 3) and frames.dtype == np.uint8
    assert [decode_frame(f) for f in frames] == list(zip(episode.objects, episode.colors))


def test_episode_questions_are_answered_by_the_video():
    """Brute force over many episodes: needles appear once, every answer follows from the frames."""
    rng = world.rng_for(world.TRAIN, 1)
    for length in (2, 3, 16, 64, 300):
        for _ in range(20):
            ep = world.make_episode(rng, length, kinds=tuple(world.TEMPLATES))  # every kind, trained or not
            assert [q.kind for q in ep.questions] == list(world.TEMPLATES)
            for q in ep.questions:
                names = [world.OBJECTS[o] for o in ep.objects]
                for obj in q.objects:
                    assert names.count(obj) == 1  # a needle is shown exactly once
                first = names.index(q.objects[0])
                if q.kind == "color":
                    assert q.answer == world.COLORS[ep.colors[first]] and q.frames == (first,)
                elif q.kind == "after":
                    assert q.answer == names[first + 1] and q.frames == (first, first + 1)
                elif q.kind == "before":
                    assert q.answer == names[first - 1] and q.frames == (first,)
                else:
                    second = names.index(q.objects[1])
                    assert q.answer == ("yes" if ep.colors[first] == ep.colors[second] else "no")
    depth_ep = world.make_episode(world.rng_for(world.HELD_OUT, 0), 101, kinds=("color",), depth=0.5)
    assert depth_ep.questions[0].frames == (50,)


def test_mid_stream_questions_are_answered_by_the_frames_seen_so_far():
    """``questions_at(t)``: about objects shown once in the first t decoded frames, answered from
    them alone; the episode is unchanged."""
    rng, asked = world.rng_for(world.HELD_OUT, 6), {k: 0 for k in world.TEMPLATES}
    for length in (8, 16, 40):
        for _ in range(10):
            ep = world.make_episode(rng, length)
            frames = world.render(ep.objects, ep.colors, rng)
            before = (list(ep.objects), list(ep.colors))
            t = int(rng.integers(length // 2, length))
            seen = [decode_frame(f) for f in frames[:t]]  # (object, colour) per frame
            names = [world.OBJECTS[o] for o, _ in seen]
            for q in world.questions_at(rng, ep, t, kinds=tuple(world.TEMPLATES)):
                asked[q.kind] += 1
                assert all(names.count(obj) == 1 for obj in q.objects) and max(q.frames) < t
                first = names.index(q.objects[0])
                if q.kind == "color":
                    assert q.answer == world.COLORS[seen[first][1]]
                elif q.kind == "after":
                    assert q.answer == names[first + 1]
                elif q.kind == "before":
                    assert q.answer == names[first - 1]
                else:
                    second = names.index(q.objects[1])
                    assert q.answer == ("yes" if seen[first][1] == seen[second][1] else "no")
            assert (ep.objects, ep.colors) == before
    assert min(asked.values()) >= 10, asked
    with pytest.raises(ValueError):
        world.questions_at(rng, ep, length + 1)


def test_same_questions_are_balanced_and_chance_levels():
    rng = world.rng_for(world.TRAIN, 2)
    answers = [world.make_episode(rng, 16, kinds=("same",)).questions[0].answer for _ in range(400)]
    assert 0.4 < answers.count("yes") / 400 < 0.6
    assert world.CHANCE == {"color": 1 / 8, "after": 1 / 15, "before": 1 / 15, "same": 0.5}
    assert set(world.KINDS) <= set(world.TEMPLATES) == set(world.CHANCE)
    assert random_hit_rate(16, 4, 1) == pytest.approx(4 / 16) and random_hit_rate(16, 4, 2) == pytest.approx(12 / 240)


def test_world_words_are_single_tokens():
    tokenizer = build.build_tokenizer(build.Architecture().vocab_size)
    ids = build.word_ids(tokenizer)
    assert len(set(ids["object_q"].values())) == 16 and len(set(ids["answer"].values())) == 26


def test_training_lowers_the_loss():
    cfg = TrainConfig(minutes=5, max_steps=40, warmup_steps=5, batch=16, seed=3)
    model, tokenizer, log = train(cfg, progress_bar=False)
    losses = [h["loss"] for h in log["history"]]
    assert log["steps"] == 40 and losses[-1] < 0.7 * losses[0], losses


def test_gather_loss_reads_the_answering_position_after_the_last_attention():
    """``gather``: for ``same`` questions the early loss gains the multi-label BCE of both
    named colours read (tied colour embeddings) from the answering position's residual after
    the last layer's attention -- recomputed here from that layer's post-attention norm's
    input (another capture point) -- and leaves no hook behind."""
    import torch.nn.functional as F

    from lmms_rekv.io.preprocess import CheckpointFrames
    from research.miniature.train import losses

    arch = build.Architecture()
    tokenizer = build.build_tokenizer(arch.vocab_size, seed=0)
    model = build.build_model(arch, tokenizer, seed=0)
    layout = Layout(tokenizer, (arch.image_size // arch.patch_size // 2) ** 2)
    batch = make_batch(np.random.default_rng(0), layout, CheckpointFrames.square(arch.image_size), 6, 12, world.KINDS, None, 6.0)
    last = model.model.language_model.layers[-1]
    seen = []
    probe = last.post_attention_layernorm.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        plain = losses(model, batch, layout, hop=True)["early"]
        hooks_before = dict(last.self_attn._forward_hooks)  # transformers adds its own on the first forward
        gathered = losses(model, batch, layout, hop=True, gather=True)["early"]
    probe.remove()
    assert dict(last.self_attn._forward_hooks) == hooks_before
    two = torch.tensor([k == "same" for k in batch.kinds])
    assert 0 < int(two.sum()) < len(two)
    rows, pos = torch.arange(len(two))[two], batch.answer_at[two] - 1
    colours = seen[1][rows, pos] @ model.model.language_model.embed_tokens.weight[layout.color_ids].T
    wanted = F.one_hot(batch.named_colors[two], len(world.COLORS)).amax(dim=1).float()
    assert torch.allclose(gathered - plain, F.binary_cross_entropy_with_logits(colours, wanted), atol=1e-5)


# -- the shipped checkpoint -----------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped():
    from lmms_rekv import ReKVConfig, ReKVLlavaOneVision

    return ReKVLlavaOneVision.from_pretrained(shipped_path(), config=ReKVConfig(window_tokens=None, topk_frames=None), dtype=torch.float32, device="cpu")


def test_shipped_checkpoint_is_trained_and_documented():
    log = json.load(open(os.path.join(WEIGHTS, "training_log.json")))
    assert log["steps"] > 100 and log["parameters"] < 1_000_000
    assert os.path.getsize(os.path.join(WEIGHTS, "model.safetensors")) < 4 * 1024 * 1024
    assert json.load(open(os.path.join(WEIGHTS, "world.json")))["objects"] == list(world.OBJECTS)


def test_project_full_attention_equals_plain_transformers(shipped):
    """Full attention through the session == a plain transformers forward of the same prompt."""
    from transformers import LlavaOnevisionForConditionalGeneration

    plain = LlavaOnevisionForConditionalGeneration.from_pretrained(WEIGHTS, dtype=torch.float32).eval()
    rng = world.rng_for(world.HELD_OUT, 11)
    episode = world.make_episode(rng, 24)
    frames = world.render(episode.objects, episode.colors, rng)
    session = shipped.new_session()
    session.add_frames(frames)
    for q in episode.questions:
        ours = session.answer(q.text, max_new_tokens=1, return_logits=True).logits[0]
        ids = shipped.vanilla_input_ids(q.text, len(frames))
        pixels = shipped.processor(frames)[None]
        with torch.no_grad():
            theirs = plain(input_ids=ids, pixel_values_videos=pixels).logits[0, -1]
        assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def _readme_figure(mode: str, kind: str, length: int) -> float:
    """The accuracy the README's table gives (from benchmarks/miniature-retrieval/results.json)."""
    path = os.path.join(os.path.dirname(README), "benchmarks", "miniature-retrieval", "results.json")
    cells = json.load(open(path))["cells"]
    return next(c["accuracy"] for c in cells if c["mode"] == mode and c["kind"] == kind and c["length"] == length)


def test_full_attention_held_out_gate():
    """The shipped miniature answers >= 90 % of a fixed held-out set of every kind of question
    with full attention at its trained lengths (8 and 16 frames)."""
    model_dir = shipped_path()
    from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    results = evaluate(model, tokenizer, [8, 16], videos=50, seed=0)
    assert min(v for row in results.values() for v in row.values()) >= 0.9, results


def test_rekv_regression_guard(tmp_path):
    """ReKV's default scoring (the tuned internal retrieval, top-4, 4-frame window), ranking
    every block as the figure was measured (``recent_frames=0``), on the retrieval study's own
    first held-out videos (64 frames) stays at or above the README's figure for the colour
    question minus 15 points."""
    from lmms_rekv import ReKVConfig
    from research.miniature.accuracy import TUNED
    from research.miniature.retrieval_study import StudySettings, video_rng

    settings = StudySettings(lengths=(64,), videos=10)
    bench = Bench(shipped_path(), settings, str(tmp_path))
    defaults = {k: getattr(ReKVConfig(), k) for k in TUNED if k != "recent_frames"}
    rng = video_rng(settings, 64)
    right = 0
    for _ in range(settings.videos):
        episode = world.make_episode(rng, 64)
        session = bench.encode(world.render(episode.objects, episode.colors, rng), settings.window_frames, embed=True)
        (q,) = [q for q in episode.questions if q.kind == "color"]
        right += ask(session, q, topk_frames=settings.k, retrieval="internal", recent_frames=0, **defaults)[0]
    assert dict(defaults, recent_frames=0) == TUNED
    assert right / settings.videos >= _readme_figure("max/question/first", "color", 64) - 0.15 - 1e-9, right


def test_layout_matches_the_engine_prompt(shipped):
    """The training layout is exactly the prompt the engine builds for vanilla LLaVA-OV."""
    layout = Layout(shipped.tokenizer, shipped.block_tokens)
    q = world.make_episode(world.rng_for(world.HELD_OUT, 0), 8).questions[0]
    ids, answer_at, *_ = layout.sequence(8, q)
    assert ids[:answer_at] == shipped.vanilla_input_ids(q.text, 8)[0].tolist()
    batch = make_batch(world.rng_for(world.HELD_OUT, 0), layout, shipped.processor, 8, 2, ("color",), None, 6.0)
    hidden, visual = forward(shipped.model, batch, layout.video_id)
    assert visual.shape == (2, 8, shipped.block_tokens, hidden.shape[-1])
