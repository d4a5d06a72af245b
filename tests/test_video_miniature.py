"""The video-world miniatures (``research/miniature/video-miniature/``, LLaVA-OV-shaped, and
``video-miniature-qwen2_5_vl/``): trained weights that meet their full-attention gate on
held-out videos, an embedder for the same world, and the recipe
that reproduces them (slow)."""

import json
import os

import pytest
import torch

from research.miniature import video_world as vw
from research.miniature.train import evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINT = os.path.join(ROOT, "research", "miniature", "video-miniature")
QWEN_CHECKPOINT = os.path.join(ROOT, "research", "miniature", "video-miniature-qwen2_5_vl")
EMBEDDER = os.path.join(CHECKPOINT, "clip")
GATE = 0.9


def _load(path: str):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


def _trained_length(path: str) -> int:
    with open(os.path.join(path, "training_log.json")) as fh:
        return json.load(fh)["final_frames"]


@pytest.mark.parametrize("checkpoint", [CHECKPOINT, QWEN_CHECKPOINT], ids=["llava_onevision", "qwen2_5_vl"])
def test_video_miniature_meets_its_gate_at_its_trained_length(checkpoint):
    """Full attention, 100 held-out videos per kind at the length the curriculum ended on:
    every kind >= 90 % (chance 1/8, 1/15, 1/2, 1/15, 1/8)."""
    model, tokenizer = _load(checkpoint)
    length = _trained_length(checkpoint)
    results = evaluate(model, tokenizer, [length], videos=100, seed=0, world_name="video")
    assert set(results) == set(vw.KINDS)
    assert min(row[str(length)] for row in results.values()) >= GATE, results


def test_video_embedder_finds_the_named_objects():
    """The embedder trained on the video world: at 16 frames the named objects' visits are among
    the 4 frames closest to the question far more often than among 4 random frames (the visit on
    screen for ``now``)."""
    pytest.importorskip("open_clip")
    from lmms_rekv.retrieval.embedder import ClipEmbedder
    from research.miniature.clip import video_hit_rate

    config = os.path.join(EMBEDDER, "rekv-miniature-clip-video.json")
    embedder = ClipEmbedder(config, os.path.join(EMBEDDER, "open_clip_model.safetensors"), torch.device("cpu"))
    from research.miniature.recipe import BACKWARD

    rates = video_hit_rate(embedder, lengths=(16,), videos=40, seed=5, kinds=BACKWARD)  # the kinds it was trained on
    for kind, row in rates.items():
        found, drawn = row["16"]
        assert found >= 0.85 and found > drawn + 0.15, (kind, found, drawn)
    found, drawn = video_hit_rate(embedder, lengths=(16,), videos=40, seed=5, kinds=("now",))["now"]["16"]
    assert found > drawn + 0.15, (found, drawn)  # "now": never trained on, its object's earlier visit competes


def test_hub_study_asks_every_variant_the_same_questions_end_and_mid_stream():
    """``research.miniature.hub_study`` on two held-out videos: every variant answers the same
    questions (end of stream and ``@mid``), the baselines that see k frames attend to k of them,
    ReKV's top-k to k blocks, full attention to all; the per-question outcomes are kept."""
    pytest.importorskip("open_clip")
    from research.miniature import hub_study

    names = ["full", "rekv", "recent1", "window-only", "external+recent1", "last-k", "uniform-k"]
    report = hub_study.run(CHECKPOINT, videos=2, lengths=[8], k=4, variants=names)
    rows = report["results"]["8"]
    outcomes = rows.pop("_outcomes")
    kinds = outcomes["kinds"]
    assert any(kd.endswith("@mid") for kd in kinds) and any("@" not in kd for kd in kinds)
    assert all(len(outcomes[name]) == len(kinds) == rows[name]["n"] for name in names)
    assert rows["full"]["block_share"] == 1.0
    for name in names[1:]:
        assert rows[name]["block_share"] == 0.5, name  # 4 of 8 blocks at the end of the stream
    assert hub_study.subset("last-k", 6, 4).tolist() == [2, 3, 4, 5]
    assert hub_study.subset("uniform-k", 8, 4).tolist() == [0, 2, 5, 7]


@pytest.mark.recipe
def test_retraining_the_video_miniature_meets_the_gate(tmp_path):
    """The recipe (``python -m research.miniature recipe``), from another seed, on 2 CPU cores
    (about 130 minutes): every kind >= 90 % held-out with full attention at the final length."""
    from research.miniature.recipe import run_recipe

    model, tokenizer, log = run_recipe(str(tmp_path / "model"), seed=1, progress_bar=False)
    length = log["final_frames"]
    results = evaluate(model, tokenizer, [length], videos=100, seed=1, world_name="video")
    assert min(row[str(length)] for row in results.values()) >= GATE, results
