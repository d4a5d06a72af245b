"""lmms-lab (LLaVA-NeXT) LLaVA-OneVision checkpoints load by conversion: a tiny random
transformers-format model and its lmms-lab-format twin give bit-identical weights and
identical answers."""

from __future__ import annotations

import json
import os

import pytest
import torch

from lmms_rekv import ReKV, ReKVConfig


@pytest.fixture(scope="module")
def twin(tiny_dir, tmp_path_factory):
    from research.tiny import write_lmms_lab_twin

    return write_lmms_lab_twin(tiny_dir, str(tmp_path_factory.mktemp("lmms-lab") / "llava-onevision-tiny"))


def test_twin_is_lmms_lab_format(twin):
    from lmms_rekv.io.lmms_lab import is_lmms_lab

    with open(os.path.join(twin, "config.json")) as fh:
        cfg = json.load(fh)
    assert cfg["architectures"] == ["LlavaQwenForCausalLM"] and cfg["mm_projector_type"] == "mlp2x_gelu"
    assert is_lmms_lab(twin) and not os.path.exists(os.path.join(twin, "chat_template.jinja"))


def test_converted_weights_are_bit_identical_and_answers_equal(tiny_dir, twin, tmp_path, frames):
    """Bit-identical weights; the converted checkpoint preprocesses by LLaVA-NeXT's rule (what
    lmms-lab checkpoints are made with), which on frames at the tower's size gives the pixels of
    the transformers processor: the answers are then equal."""
    from lmms_rekv.io.preprocess import CheckpointFrames, LlavaNextFrames

    config = ReKVConfig(window_tokens=48, topk_frames=3, chunk_frames=4)
    reference = ReKV.from_pretrained(tiny_dir, config=config, dtype="float32", device="cpu", conv_template="qwen_1_5")
    converted = ReKV.from_pretrained(twin, config=config, dtype="float32", device="cpu", save_converted=str(tmp_path / "hf"))
    assert isinstance(converted.processor, LlavaNextFrames) and isinstance(reference.processor, CheckpointFrames)
    ref_state, got_state = reference.model.state_dict(), converted.model.state_dict()
    missing = [k for k in got_state if k not in ref_state]
    assert not missing
    assert len(got_state) == len(ref_state) - sum("vision_tower.head." in k for k in ref_state)  # the unused pooling head
    assert all(torch.equal(got_state[k], ref_state[k]) for k in got_state)
    assert converted.chat_template == reference.chat_template
    video = frames(10, seed=40, size=(64, 64))  # the tower's size: no resize on either side
    assert torch.allclose(converted.processor(video), reference.processor(video), atol=1e-6, rtol=0)
    for question in ("what is happening?", "what color is the car?"):
        answers = []
        for engine in (reference, converted):
            session = engine.new_session()
            session.add_frames(video)
            answers.append(session.answer(question, max_new_tokens=5, return_logits=True))
        assert answers[0].token_ids == answers[1].token_ids
        assert all(torch.allclose(a, b, atol=1e-5, rtol=0) for a, b in zip(answers[0].logits, answers[1].logits))
    assert os.path.isfile(tmp_path / "hf" / ".converted")


def test_unsupported_lmms_lab_checkpoints_are_refused_with_the_reason(twin, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(twin, bad)
    cfg = json.loads((bad / "config.json").read_text())
    for field, value, reason in (("mm_spatial_pool_mode", "average", "pooled bilinearly"),
                                 ("mm_vision_tower", "openai/clip-vit-large-patch14", "unknown vision tower")):
        (bad / "config.json").write_text(json.dumps(dict(cfg, **{field: value})))
        with pytest.raises(ValueError, match=reason):
            ReKV.from_pretrained(str(bad), dtype="float32", device="cpu", save_converted=str(tmp_path / f"out-{field}"))
    with pytest.raises(ValueError, match="conv_template"):
        ReKV.from_pretrained(twin, dtype="float32", device="cpu", conv_template="vicuna_v1")


def test_rekv_convert_command(twin, tmp_path, tiny_dir, capsys):
    from lmms_rekv.commands.cli import main

    assert main(["convert", twin, str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "llava_onevision"
    assert main(["convert", tiny_dir, str(tmp_path / "no")]) == 2
    assert "not an lmms-lab" in capsys.readouterr().err


@pytest.mark.parametrize("explicit", [False, True], ids=["default-cache", "save_converted"])
def test_a_checkpoint_rewritten_in_place_is_converted_again(twin, tmp_path, monkeypatch, explicit):
    """The conversion is keyed by the checkpoint's content: loading it again unchanged reuses
    the conversion; rewriting its weights in place converts it again (and the default cache
    drops the stale copy)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from lmms_rekv.io import lmms_lab

    monkeypatch.setenv("LMMS_REKV_HOME", str(tmp_path / "home"))
    ckpt = tmp_path / "ckpt"
    shutil.copytree(twin, ckpt)
    out = str(tmp_path / "converted") if explicit else None
    first = lmms_lab.convert(str(ckpt), out)
    stamp = os.stat(os.path.join(first, ".converted")).st_mtime_ns
    assert lmms_lab.convert(str(ckpt), out) == first  # unchanged: reused, not rewritten
    assert os.stat(os.path.join(first, ".converted")).st_mtime_ns == stamp

    tensors = load_file(str(ckpt / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["lm_head.weight"] * 2  # same names and shapes: only the values change
    save_file(tensors, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    second = lmms_lab.convert(str(ckpt), out)
    converted = load_file(os.path.join(second, "model.safetensors"))
    assert torch.equal(converted["language_model.lm_head.weight"], tensors["lm_head.weight"])
    if not explicit:
        assert second != first and not os.path.exists(first)  # the stale conversion is gone
    engine = ReKV.from_pretrained(str(ckpt), dtype="float32", device="cpu", save_converted=out)
    assert torch.equal(engine.model.lm_head.weight, tensors["lm_head.weight"])
