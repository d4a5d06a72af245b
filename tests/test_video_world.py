"""The video-like world (research/miniature/video_world.py): a static scene that objects enter,
cross and leave; every answer is read back from the rendered pixels."""

from typing import Dict, List, Tuple

import numpy as np
import pytest

from research.miniature import video_world as vw

T = vw.TILE
HALF = T // 2
PALETTE = np.array([vw.PALETTE[c] for c in vw.COLORS], dtype=np.float64)


def tiles_of(frame: np.ndarray) -> np.ndarray:
    """(TILES, TILES, T, T, 3) float tiles of one frame."""
    return frame.astype(np.float64).reshape(vw.TILES, T, vw.TILES, T, 3).transpose(0, 2, 1, 3, 4)


def decode(frame: np.ndarray) -> Dict[int, Tuple[int, List[Tuple[int, int]]]]:
    """{object: (colour, tiles)} read back from one rendered frame: an object tile has a
    black/white code in its bottom half (a background tile a dim grey one), the code's bits
    name the object, the top half's nearest palette colour is its colour."""
    found: Dict[int, Tuple[List[int], List[Tuple[int, int]]]] = {}
    tiles = tiles_of(frame)
    for r in range(vw.TILES):
        for c in range(vw.TILES):
            levels = tiles[r, c, HALF:].mean(axis=(0, 2))  # one level per code column
            if not np.all((levels < 45) | (levels > 200)):
                continue  # background
            obj = int(sum(1 << j for j, v in enumerate(levels) if v > 127))
            colour = int(np.argmin(((PALETTE - tiles[r, c, :HALF].mean(axis=(0, 1))) ** 2).sum(1)))
            found.setdefault(obj, ([], []))
            found[obj][0].append(colour)
            found[obj][1].append((r, c))
    out = {}
    for obj, (colours, where) in found.items():
        assert len(set(colours)) == 1, "an object's tiles share one colour"
        out[obj] = (colours[0], sorted(where))
    return out


def timeline(frames: np.ndarray) -> List[Dict[int, Tuple[int, List[Tuple[int, int]]]]]:
    return [decode(f) for f in frames]


def episodes(split: int, seed: int, lengths=(2, 3, 5, 8, 16, 40), per_length: int = 8):
    rng = vw.rng_for(split, seed)
    for length in lengths:
        for _ in range(per_length):
            episode = vw.make_episode(rng, length)
            yield episode, vw.render(episode, rng)


def test_frame_size_and_tokens_per_frame():
    """32-pixel frames of 4-pixel tiles: 8 x 8 SigLIP patches, pooled 2 x 2 by LLaVA-OV into
    16 tokens -- the architecture for the world agrees."""
    from research.miniature import build

    arch = build.Architecture.for_world("video")
    assert (vw.FRAME_SIZE, vw.TILES, vw.FRAME_TOKENS) == (32, 8, 16)
    assert arch.image_size == 32 and ((arch.image_size // arch.patch_size + 1) // 2) ** 2 == vw.FRAME_TOKENS
    assert build.Architecture.for_world("tiled") == build.Architecture()
    episode = vw.make_episode(vw.rng_for(vw.TRAIN, 0), 6)
    frames = vw.render(episode, vw.rng_for(vw.TRAIN, 1), scale=3)
    assert frames.shape == (6, 96, 96, 3) and frames.dtype == np.uint8


def test_episodes_are_deterministic_per_seed():
    def one(split, seed):
        rng = vw.rng_for(split, seed)
        episode = vw.make_episode(rng, 24)
        return episode, vw.render(episode, rng)

    (a, fa), (b, fb) = one(vw.TRAIN, 7), one(vw.TRAIN, 7)
    assert a.visits == b.visits and a.questions == b.questions and np.array_equal(fa, fb)
    assert a.objects == b.objects and a.colors == b.colors
    (c, fc) = one(vw.TRAIN, 8)
    assert not np.array_equal(fa, fc)


def test_train_and_held_out_streams_are_disjoint():
    def signature(split, seed):
        episode = vw.make_episode(vw.rng_for(split, seed), 16)
        return tuple((v.obj, v.color, v.enter, v.leave, tuple(v.path)) for v in episode.visits)

    train = {signature(vw.TRAIN, s) for s in range(60)}
    held = {signature(vw.HELD_OUT, s) for s in range(60)}
    assert len(train) == 60 and len(held) == 60 and not train & held


def test_scene_rules_hold_in_the_pixels():
    """At most one object per lane (two on screen), 2 x 2-tile squares moving one tile per
    frame, distinct entry frames, exits in entry order, needles in exactly one visit."""
    for episode, frames in episodes(vw.TRAIN, 1):
        seen = timeline(frames)
        for f, shown in enumerate(seen):
            assert sorted(shown) == sorted(episode.visits[i].obj for i in episode.on_screen(f))
            assert len(shown) <= 2
            lanes = [where[0][0] // vw.LANE_ROWS for _, where in shown.values()]
            assert len(set(lanes)) == len(lanes)
            for obj, (colour, where) in shown.items():
                (r, c) = where[0]
                assert where == [(r, c), (r, c + 1), (r + 1, c), (r + 1, c + 1)]
                assert r // vw.LANE_ROWS == (r + 1) // vw.LANE_ROWS  # inside its lane
                if f and obj in seen[f - 1]:  # moved exactly one tile horizontally, at most one vertically
                    (r0, c0) = seen[f - 1][obj][1][0]
                    assert abs(c - c0) == 1 and abs(r - r0) <= 1
        enters = [v.enter for v in episode.visits]
        leaves = [v.leave for v in episode.visits]
        assert enters == sorted(set(enters)) and leaves == sorted(leaves)
        assert all(a < b for a, b in zip(leaves, leaves[1:]) if b < episode.length - 1)
        for q in episode.questions:
            for name in q.objects:  # a needle makes one visit; "now" asks about a repeat where it can
                assert episode.objects.count(vw.OBJECTS.index(name)) == 1 or q.kind == "now"


def _moments(seen) -> List[Tuple[int, int]]:
    """(frame, object) of every entry read from the pixels: on screen now, not the frame before."""
    return [(f, obj) for f, shown in enumerate(seen) for obj in shown if f == 0 or obj not in seen[f - 1]]


def check_answer(q, seen) -> bool:
    """Assert ``q``'s answer from the decoded frames ``seen`` alone (the frames a viewer has seen
    when it is asked); returns whether a ``now`` question's object was seen before, in another
    colour."""
    entries = _moments(seen)
    needle = vw.OBJECTS.index(q.objects[0])
    shown_at = [f for f, s in enumerate(seen) if needle in s]
    if q.kind == "now":  # on screen at the last frame seen, in the answer's colour
        last = len(seen) - 1
        assert needle in seen[last] and q.answer == vw.COLORS[seen[last][needle][0]]
        current = [f for f in shown_at if all(needle in seen[g] for g in range(f, last + 1))]
        return any(seen[f][needle][0] != seen[last][needle][0] for f in shown_at if f < current[0])
    first, last = shown_at[0], shown_at[-1]
    assert shown_at == list(range(first, last + 1)) and set(shown_at) <= set(q.frames)
    if q.kind == "color":
        assert q.answer == vw.COLORS[seen[first][needle][0]]
    elif q.kind == "before":  # the last other object seen before the needle entered
        earlier = [f for f in range(first) if seen[f]]
        others = set(seen[earlier[-1]])
        assert len(others) == 1 and q.answer == vw.OBJECTS[others.pop()]
    elif q.kind == "entered_after":  # the first object to enter after the needle's last frame
        after = [obj for f, obj in entries if f > last]
        assert last < len(seen) - 1 and q.answer == vw.OBJECTS[after[0]]
    else:
        other = vw.OBJECTS.index(q.objects[1])
        colours = [seen[next(f for f, s in enumerate(seen) if o in s)][o][0] for o in (needle, other)]
        assert q.answer == ("yes" if colours[0] == colours[1] else "no")
    return False


def test_every_answer_follows_from_the_pixels():
    """Brute force: each question's answer is recomputed from the decoded frames alone; most
    ``now`` questions from 8 frames on ask about an object seen before in another colour."""
    asked, now, repeats = {k: 0 for k in vw.KINDS}, 0, 0
    for episode, frames in episodes(vw.HELD_OUT, 2):
        seen = timeline(frames)
        for q in episode.questions:
            asked[q.kind] += 1
            repeated = check_answer(q, seen)
            if q.kind == "now" and episode.length >= 8:
                now, repeats = now + 1, repeats + repeated
    assert min(asked.values()) >= 20, asked
    assert repeats >= 0.75 * now, (repeats, now)


def test_mid_stream_questions_follow_from_the_frames_seen_so_far():
    """``questions_at(t)``: asked after frame t - 1, answered from the first t decoded frames
    only; the episode is left as it was (the rendered video stays its ground truth)."""
    asked = {k: 0 for k in vw.KINDS}
    rng = vw.rng_for(vw.HELD_OUT, 12)
    for episode, frames in episodes(vw.HELD_OUT, 3, lengths=(8, 16, 40)):
        before = (list(episode.objects), list(episode.colors), [(v.enter, v.leave, v.color) for v in episode.visits])
        seen = timeline(frames)
        t = int(rng.integers(episode.length // 2, episode.length))
        for q in vw.questions_at(rng, episode, t):
            asked[q.kind] += 1
            assert max(q.frames) < t
            check_answer(q, seen[:t])
        assert before == (episode.objects, episode.colors, [(v.enter, v.leave, v.color) for v in episode.visits])
        cut = vw.seen_until(episode, t)
        assert cut.length == t and all(v.leave < t and len(v.path) == len(v.frames) for v in cut.visits)
    assert min(asked.values()) >= 5, asked
    with pytest.raises(ValueError):
        vw.seen_until(episode, 0)


def test_entered_after_is_right_by_construction():
    """``entered_after`` is the first visit entering after the needle's last frame -- not the
    next visit to enter (which may enter while the needle is still on screen) -- and the
    ``left`` token target marks exactly that visit's tokens with the needle."""
    differs = 0
    rng = vw.rng_for(vw.TRAIN, 3)
    for _ in range(200):
        episode = vw.make_episode(rng, 20, kinds=("entered_after",))
        if not episode.questions:
            continue
        (q,) = episode.questions
        needle = vw.OBJECTS.index(q.objects[0])
        at = episode.objects.index(needle)
        nxt = vw.entered_after(episode, at)
        visit = episode.visits[at]
        assert episode.visits[nxt].enter > visit.leave and all(v.enter <= visit.leave for v in episode.visits[:nxt])
        assert q.answer == vw.OBJECTS[episode.objects[nxt]]
        differs += nxt != at + 1
        left = vw.token_labels(episode)["left"][..., needle]  # (N, tokens)
        marked = {(f, k) for f, k in zip(*np.nonzero(left))}
        objects = vw.token_labels(episode)["object"]
        assert marked and all(objects[f, k] == episode.objects[nxt] for f, k in marked)
        assert {f for f, _ in marked} == set(episode.visits[nxt].frames)
    assert differs > 10  # it is a moment, not "the next one in"


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_qwen_tokens_see_the_pixels_the_labels_name(family):
    """A Qwen-shaped video miniature's merged token ``k`` is made of the four 4 x 4 patches of
    the 8 x 8 pixels of world token ``k`` (``token_labels``' raster order): its patches, read
    back from the processor's ``pixel_values_videos``, are those pixels."""
    import torch

    _, layout, pixels = _video_miniature(family)
    episode = vw.make_episode(vw.rng_for(vw.HELD_OUT, 2), 6)
    frames = vw.render(episode, vw.rng_for(vw.HELD_OUT, 3))
    patches = pixels(frames).view(6, vw.FRAME_TOKENS, 2, 2, 3, 4, 4)  # frame, token, patch row, col, C, 4, 4
    back = (patches * 0.5 + 0.5) * 255  # the processor's mean/std 0.5
    for k in range(vw.FRAME_TOKENS):
        i, j = divmod(k, vw.TOKEN_GRID)
        region = torch.from_numpy(frames[:, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8]).float()  # (6, 8, 8, 3)
        region = region.view(6, 2, 4, 2, 4, 3).permute(0, 1, 3, 5, 2, 4)  # frame, patch row, col, C, 4, 4
        assert torch.allclose(back[:, k], region, atol=0.5), k


def test_token_labels_match_the_pixels():
    """Token (i, j) covers tiles 2i..2i+1 x 2j..2j+1 (LLaVA-OV's 2 x 2 pooling, row-major): its
    object target is the object whose square touches it, -1 on background-only tokens."""
    for episode, frames in episodes(vw.TRAIN, 4, lengths=(8, 16), per_length=6):
        labels = vw.token_labels(episode)
        for f, shown in enumerate(timeline(frames)):
            want = np.full(vw.FRAME_TOKENS, -1)
            colours = np.full(vw.FRAME_TOKENS, -1)
            for obj, (colour, where) in shown.items():
                for r, c in where:
                    want[(r // 2) * vw.TOKEN_GRID + c // 2] = obj
                    colours[(r // 2) * vw.TOKEN_GRID + c // 2] = colour
            assert np.array_equal(labels["object"][f], want) and np.array_equal(labels["color"][f], colours)
        for i, visit in enumerate(episode.visits):
            prev = episode.visits[i - 1].obj if i else -1
            for f in visit.frames:
                assert np.all(labels["prev"][f][labels["object"][f] == visit.obj] == prev)


def test_background_is_static_and_objects_are_local():
    """Between consecutive frames a background tile barely changes (slow drift + pixel
    noise), a tile an object moves onto or off changes a lot; most tokens are background."""
    bg_diffs, obj_diffs, background_tokens = [], [], []
    for episode, frames in episodes(vw.HELD_OUT, 5, lengths=(16, 40), per_length=4):
        mask = np.zeros((episode.length, vw.TILES, vw.TILES), dtype=bool)  # tile shows an object
        for visit in episode.visits:
            for f, (r, c) in zip(visit.frames, visit.path):
                mask[f, r : r + 2, c : c + 2] = True
        pixels = frames.astype(np.float64).reshape(-1, vw.TILES, T, vw.TILES, T, 3)
        step = np.abs(np.diff(pixels, axis=0)).mean(axis=(2, 4, 5))  # (N-1, 8, 8) mean |change| of a tile's pixels
        bg_diffs.append(step[~mask[1:] & ~mask[:-1]])
        obj_diffs.append(step[mask[1:] != mask[:-1]])
        background_tokens.append((vw.token_labels(episode)["object"] < 0).mean())
    bg, obj = np.concatenate(bg_diffs), np.concatenate(obj_diffs)
    assert bg.max() < 12 and np.median(bg) < 8, (bg.max(), np.median(bg))  # pixel noise std 6: |diff| ~ 6.8
    assert obj.min() > 30 and np.median(obj) > 60, (obj.min(), np.median(obj))
    assert 0.5 < np.mean(background_tokens) < 0.95
    # without pixel noise the scene's drift alone stays under 3 levels a frame
    episode = vw.make_episode(vw.rng_for(vw.HELD_OUT, 9), 60)
    episode.visits = []
    still = vw.render(episode, None).astype(np.float64)
    assert np.abs(np.diff(still, axis=0)).max() <= 3


def test_chance_kinds_and_words():
    from lmms_rekv.miniature import world

    assert vw.KINDS == ("color", "before", "same", "entered_after", "now") and set(vw.KINDS) == set(vw.TEMPLATES) == set(vw.CHANCE)
    assert vw.CHANCE == {"color": 1 / 8, "before": 1 / 15, "same": 1 / 2, "entered_after": 1 / 15, "now": 1 / 8}
    assert {k: vw.TEMPLATES[k] for k in ("color", "before", "same")} == {k: world.TEMPLATES[k] for k in ("color", "before", "same")}
    assert vw.OBJECTS is world.OBJECTS and vw.Episode is world.Episode and vw.rng_for is world.rng_for
    words = vw.answer_words()
    assert set(words) == set(vw.KINDS) and words["entered_after"] == vw.OBJECTS and words["now"] == vw.COLORS
    text = " ".join(vw.corpus(vw.rng_for(vw.TRAIN, 0), lines=400))
    assert "entered after" in text and " left?" in text
    rng = vw.rng_for(vw.TRAIN, 6)
    answers = [vw.make_episode(rng, 16, kinds=("same",)).questions[0].answer for _ in range(300)]
    assert 0.4 < answers.count("yes") / 300 < 0.6


def test_depth_places_the_first_needle():
    episode = vw.make_episode(vw.rng_for(vw.HELD_OUT, 0), 101, kinds=("color",), depth=0.5)
    (q,) = episode.questions
    enter = min(q.frames)
    assert abs(enter - 50) <= vw.ENTRY_GAP[1] + vw.DURATION[1]
    with pytest.raises(ValueError):
        vw.make_episode(vw.rng_for(vw.HELD_OUT, 0), 0)


def _video_miniature(family: str = "llava_onevision"):
    """(fresh video-world miniature in ``family``'s shape, its prompt layout, frames -> pixels)."""
    from research.miniature import build
    from research.miniature.train import _layout

    arch = build.Architecture.for_world("video", family=family)
    tokenizer = build.build_tokenizer(arch.vocab_size, seed=0, family=family, world_name="video")
    model = build.build_model(arch, tokenizer, seed=0)
    layout, pixels = _layout(arch, tokenizer, "video")
    return model, layout, pixels


def test_crowded_batches_show_the_asked_object_with_another():
    """``crowd=1``: every training video shows the asked object on screen together with another
    object on some frame (short clips otherwise often show it alone, and reading "whatever is on
    screen" answers them). The recipe leaves it off and turns ``bind_aux`` on for this world only."""
    from research.miniature.train import TrainConfig, make_batch

    _, layout, processor = _video_miniature()
    batch = make_batch(vw.rng_for(vw.TRAIN, 0), layout, processor, 3, 24, ("color",), None, 6.0, crowd=1.0)
    for objects, (needle, _) in zip(batch.objects.numpy(), batch.named.tolist()):
        shown = objects == needle  # (L, tokens)
        assert any(shown[f].any() and ((objects[f] >= 0) & ~shown[f]).any() for f in range(len(objects)))
    video, tiled = TrainConfig(world="video").resolved(), TrainConfig().resolved()
    assert video.bind_aux and not tiled.bind_aux and video.crowd == tiled.crowd == 0.0


def _eager_attentions(model, layout, batch):
    """Every layer's attention weights ``(B, heads, T, T)`` as the model computes them (eager),
    on the training prompt (Qwen: the model's own ``get_rope_index`` positions)."""
    import torch

    model.set_attn_implementation("eager")
    inner, video = model.model, batch.ids == layout.video_id
    if layout.qwen is None:
        feats = inner.get_video_features(pixel_values_videos=batch.pixels).pooler_output
        embeds = inner.language_model.embed_tokens(batch.ids).masked_scatter(video[..., None], feats)
        return inner.language_model(inputs_embeds=embeds, attention_mask=batch.mask, output_attentions=True).attentions
    b, grid = batch.ids.shape[0], layout.qwen.grid
    thw = torch.tensor([[batch.pixels.shape[1] // grid ** 2, grid, grid]] * b)
    feats = torch.cat(list(inner.get_video_features(pixel_values_videos=batch.pixels.flatten(0, 1), video_grid_thw=thw).pooler_output))
    embeds = inner.language_model.embed_tokens(batch.ids).masked_scatter(video[..., None], feats)
    extra = {"second_per_grid_ts": torch.ones(b)} if layout.family == "qwen2_5_vl" else {}
    positions, _ = inner.get_rope_index(batch.ids, mm_token_type_ids=video.long() * 2, video_grid_thw=thw,
                                        attention_mask=batch.mask, **extra)
    return inner.language_model(inputs_embeds=embeds, position_ids=positions, attention_mask=batch.mask,
                                output_attentions=True).attentions


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl", "qwen3_vl"])
def test_bind_loss_is_the_attention_the_model_computes(family):
    """The recomputed head-0 attention of ``bind_loss`` equals the model's own (eager)
    attention weights: -log of the mass on the target tokens, summed over the three queries
    (Qwen: M-RoPE, and Qwen3-VL's per-head norms before it)."""
    import torch

    from research.miniature.train import losses, make_batch

    model, layout, processor = _video_miniature(family)
    torch.manual_seed(0)
    with torch.no_grad():  # a non-trivial attention pattern
        for p in model.model.language_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = make_batch(vw.rng_for(vw.TRAIN, 1), layout, processor, 8, 6, vw.KINDS, None, 6.0)
    with torch.no_grad():
        ours = float(losses(model, batch, layout, bind=True)["bind"])
        att = _eager_attentions(model, layout, batch)
    video = batch.ids == layout.video_id
    rows = torch.arange(len(batch.kinds))
    objects = batch.objects.reshape(len(rows), -1)

    def mass(layer, position, tokens):  # (B,) attention of head 0 from ``position`` onto frame tokens ``tokens``
        weights = att[layer][rows, 0, position][video].reshape(len(rows), -1)
        return (weights[:, : weights.shape[1] - layout.newlines] * tokens).sum(-1)

    a, b = batch.named[:, 0], batch.named[:, 1]
    wanted = torch.stack([
        (objects[i] == a[i]) | (objects[i] == b[i]) if k == "same"
        else batch.left[i, ..., a[i]].reshape(-1) > 0 if k == "entered_after"
        else ((batch.objects[i] == a[i]) & batch.asked_frames[i][:, None]).reshape(-1) if k == "now"  # the visit on screen only
        else objects[i] == a[i]
        for i, k in enumerate(batch.kinds)]).reshape(len(rows), -1).float()
    terms = [(0, batch.first, (objects == a[:, None]).float()), (0, batch.anchor, (objects == b[:, None]).float()),
             (2, batch.answer_at - 1, wanted)]
    theirs = 0.0
    for layer, position, tokens in terms:
        has = tokens.sum(-1) > 0
        theirs -= float(torch.log(mass(layer, position, tokens)[has]).mean())
    assert ours == pytest.approx(theirs, rel=1e-4)


def test_training_continues_from_a_saved_miniature(tmp_path):
    """``TrainConfig(init=DIR)`` starts from the saved weights and tokenizer with the saved
    architecture (a step at learning rate 0 leaves every weight as saved), at ``start_frames``;
    ``snapshot`` sees the run so far (here after every step)."""
    from dataclasses import asdict

    import torch

    from research.miniature import build
    from research.miniature.train import TrainConfig, architecture_of, train

    model, layout, _ = _video_miniature()
    arch = build.Architecture.for_world("video")
    build.save_checkpoint(str(tmp_path), model, layout.tokenizer, arch, {}, world_name="video")
    assert architecture_of(model) == arch
    seen = []
    again, tokenizer, log = train(TrainConfig(world="video", init=str(tmp_path), max_steps=1, lr=0.0, weight_decay=0.0,
                                              start_frames=8, batch=2), progress_bar=False,
                                  snapshot=lambda m, t, a, so_far: seen.append((a, so_far["steps"])), every=0.0)
    assert seen == [(arch, 1)] and log["steps"] == 1 and log["history"][0]["frames"] == 8 and log["architecture"] == asdict(arch)
    assert tokenizer.get_vocab() == layout.tokenizer.get_vocab()
    saved = model.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in again.state_dict().items())


def test_video_world_embedder_pairs_and_training(tmp_path):
    """The video world's embedder: a frame is a positive for a question exactly when one of its
    tokens shows a named object; training lowers the loss; the saved model loads by its own name
    (beside the tiled one) and embeds 32-pixel frames."""
    import os

    import torch

    pytest.importorskip("open_clip")
    from lmms_rekv.retrieval.embedder import ClipEmbedder
    from research.miniature.clip import _video_pairs, save_clip, train_clip

    rng = vw.rng_for(vw.TRAIN, 3)
    frames, texts, labels = _video_pairs(rng, 12, 6.0)
    assert frames.shape == (12, vw.FRAME_SIZE, vw.FRAME_SIZE, 3)
    for i, text in enumerate(texts):
        named = {vw.OBJECTS.index(w.strip("?")) for w in text.split() if w.strip("?") in vw.OBJECTS}
        for j in range(12):
            shown = set(decode(frames[j].numpy()))
            assert (labels[i, j] > 0) == bool(named & shown), (text, j)
    model, log = train_clip(minutes=5, max_steps=40, batch=32, progress_bar=False, world_name="video")
    losses = [h["loss"] for h in log["history"]]
    assert log["steps"] == 40 and losses[-1] < 0.7 * losses[0], losses
    config, weights = save_clip(str(tmp_path), model, log)
    assert os.path.basename(config) == "rekv-miniature-clip-video.json"
    loaded = ClipEmbedder(config, weights, torch.device("cpu"))
    assert torch.allclose(loaded.embed_frames(frames[:3]), model.embed_frames(frames[:3]), atol=1e-5)



def test_order_targets_through_fixed_rotations():
    """``order_basis`` is a fixed orthogonal matrix (seeded); the order loss read through identity
    rotations equals the unrotated one, and through the two recipe bases it differs (each target
    in its own directions); ``TrainConfig`` turns it on for the video world only."""
    import torch

    from research.miniature.train import TrainConfig, losses, make_batch, order_basis

    basis = order_basis(128)
    assert torch.allclose(basis @ basis.T, torch.eye(128), atol=1e-5) and torch.equal(basis, order_basis(128))
    assert not torch.allclose(basis, order_basis(128, 20_261_205))
    model, layout, processor = _video_miniature()
    batch = make_batch(vw.rng_for(vw.TRAIN, 2), layout, processor, 8, 4, vw.KINDS, None, 6.0)
    eye = torch.eye(128)
    with torch.no_grad():
        plain = float(losses(model, batch, layout)["order"])
        same = float(losses(model, batch, layout, rotation=(eye, eye))["order"])
        rotated = float(losses(model, batch, layout, rotation=(basis, order_basis(128, 20_261_205)))["order"])
    assert same == pytest.approx(plain, rel=1e-6) and abs(rotated - plain) > 1e-3
    assert TrainConfig(world="video").resolved().order_rotation and not TrainConfig().resolved().order_rotation


def test_the_recipe_chains_its_stages(tmp_path):
    """``run_recipe``: each stage starts from the previous one's saved folder (at learning rate
    0 the final weights are the initial ones, through two stages), the last is written to
    ``out`` with every stage in its log."""
    import json

    import torch

    from research.miniature import build
    from research.miniature.recipe import run_recipe

    model, layout, _ = _video_miniature()
    start = str(tmp_path / "start")
    build.save_checkpoint(start, model, layout.tokenizer, build.Architecture.for_world("video"), {}, world_name="video")
    still = dict(max_steps=1, batch=2, lr=0.0, weight_decay=0.0)
    final, _, log = run_recipe(str(tmp_path / "out"), stages=(dict(still, start_frames=8), dict(still, start_frames=12)),
                               progress_bar=False, init=start)
    assert [s["final_frames"] for s in log["recipe"]] == [8, 12]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in final.state_dict().items())
    with open(tmp_path / "out" / "training_log.json") as fh:
        assert len(json.load(fh)["recipe"]) == 2


def test_a_cut_off_recipe_goes_on_from_its_last_finished_stage(tmp_path):
    """``run_recipe(stage_dir=...)`` keeps each stage's folder and skips the stages already
    there: run again, the first stage is not retrained (its folder untouched) and the second
    starts from it; a Qwen-shaped recipe from scratch gives a folder ``ReKV`` loads."""
    import os

    from lmms_rekv import ReKV
    from research.miniature.recipe import run_recipe

    tiny = dict(max_steps=2, batch=2, start_frames=2, max_frames=2)
    stages = (tiny, tiny)
    _, _, first = run_recipe(str(tmp_path / "out"), stages=stages, progress_bar=False, family="qwen3_vl",
                             stage_dir=str(tmp_path / "stages"))
    stamp = os.path.getmtime(tmp_path / "stages" / "stage1" / "model.safetensors")
    _, _, again = run_recipe(str(tmp_path / "out"), stages=stages, progress_bar=False, family="qwen3_vl",
                             stage_dir=str(tmp_path / "stages"))
    assert os.path.getmtime(tmp_path / "stages" / "stage1" / "model.safetensors") == stamp
    assert again["recipe"][0] == first["recipe"][0] and len(again["recipe"]) == 2
    engine = ReKV.from_pretrained(str(tmp_path / "out"), dtype="float32", device="cpu")
    assert engine.backbone.model_type == "qwen3_vl" and engine.block_tokens == engine.backbone.header_slots + 2 + vw.FRAME_TOKENS
