"""Bad input and impossible settings fail early with clear messages."""

import numpy as np
import pytest
import torch

from lmms_rekv import ReKVConfig, ReKVLlavaOneVision


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(window_tokens=0), "window_tokens"),
        (dict(window_tokens=-5), "window_tokens"),
        (dict(topk_frames=0), "topk_frames"),
        (dict(chunk_frames=0), "chunk_frames"),
        (dict(score="l2"), "score"),
        (dict(retrieval="magic"), "retrieval"),
        (dict(offload="tape"), "offload"),
        (dict(summary_tier="gpu"), "summary_tier"),
        (dict(topk_frames=200, block_tokens=196), "QA budget"),
        (dict(topk_frames=10, qa_budget_tokens=1000, block_tokens=196), "QA budget"),
        (dict(window_tokens=1.5), "window_tokens"),
        (dict(qa_reserve_tokens=-1), "qa_reserve_tokens"),
    ],
)
def test_impossible_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReKVConfig(**kwargs)


def test_config_revalidated_for_the_model(load, tiny_dir):
    engine = load(topk_frames=64)
    assert engine.config.block_tokens == engine.block_tokens == 16
    with pytest.raises(ValueError, match="QA budget"):
        ReKVConfig(topk_frames=64).for_model(block_tokens=196, max_positions=4096)
    # checked against the checkpoint's tokens per frame, not LLaVA-OV's 196: 200 frames x 16
    # tokens fit the default budget, so the config is accepted before the model is known
    big = load(topk_frames=200)
    assert big.config.topk_frames == 200 and big.config.block_tokens == 16
    with pytest.raises(ValueError, match="QA budget"):
        load(topk_frames=2100)  # 2100 x 16 + 512 > 32768


def test_old_frame_names_still_work_and_say_they_are_deprecated(load):
    """A block is one temporal patch (2 frames on Qwen): ``block_tokens`` / ``BlockStore.blocks``
    name it; the former ``frame_tokens`` / ``frames`` keep working with a DeprecationWarning."""
    with pytest.warns(DeprecationWarning, match="block_tokens"):
        assert ReKVConfig(frame_tokens=196).block_tokens == 196
    engine = load()
    with pytest.warns(DeprecationWarning, match="block_tokens"):
        assert engine.frame_tokens == engine.block_tokens == 16
    session = engine.new_session()
    session.add_frames(np.zeros((3, 32, 32, 3), np.uint8))
    session.flush()
    store = session.state.store
    with pytest.warns(DeprecationWarning, match="blocks"):
        assert store.frames == store.blocks == 3
    with pytest.warns(DeprecationWarning, match="bytes_per_block"):
        assert store.bytes_per_frame == store.bytes_per_block > 0
    with pytest.warns(DeprecationWarning, match="summary_bytes_per_block"):
        assert store.summary_bytes_per_frame == store.summary_bytes_per_block > 0
    with pytest.warns(DeprecationWarning, match=r"block\(\)"):
        assert all(torch.equal(a, b) for a, b in zip(store.frame(0, 2), store.block(0, 2)))
    from lmms_rekv.config import (
        QUERY_POOLS,
        RETRIEVAL_MODES,
        did_you_mean,  # the names older code imported from the configuration
    )

    assert did_you_mean("topk", ["topk_frames"]) and "max" in QUERY_POOLS and "internal" in RETRIEVAL_MODES


@pytest.mark.parametrize(
    "bad,error,match",
    [
        (np.zeros((0, 8, 8, 3), np.uint8), ValueError, "no frames"),
        (np.zeros((2, 8, 8, 3), np.float32), TypeError, "uint8"),
        (torch.zeros((2, 8, 8, 3), dtype=torch.int64), TypeError, "uint8"),
        (np.zeros((8, 8, 3), np.uint8), ValueError, "batch"),
        (np.zeros((2, 8, 8), np.uint8), ValueError, "shape"),
        (np.zeros((2, 3, 8, 8), np.uint8), ValueError, "shape"),
        (np.zeros((2, 0, 8, 3), np.uint8), ValueError, "empty"),
        ([[1, 2, 3]], TypeError, "numpy array or torch tensor"),
    ],
)
def test_bad_frames(load, bad, error, match):
    session = load().new_session()
    with pytest.raises(error, match=match):
        session.add_frames(bad)
    assert session.frames == 0


def test_question_before_any_frame(load):
    session = load().new_session()
    with pytest.raises(RuntimeError, match="add_frames"):
        session.ask("what happens?")


def test_empty_question_and_bad_generation(load, frames):
    session = load().new_session()
    session.add_frames(frames(2))
    with pytest.raises(ValueError, match="question"):
        session.ask("   ")
    with pytest.raises(ValueError, match="max_new_tokens"):
        session.ask("what?", max_new_tokens=0)


def test_question_over_budget(load, frames):
    session = load(topk_frames=4, block_tokens=16, qa_budget_tokens=100, qa_reserve_tokens=0).new_session()
    session.add_frames(frames(4))
    with pytest.raises(ValueError, match="QA budget"):
        session.ask("what happens " * 20, max_new_tokens=8)


def test_missing_model_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        ReKVLlavaOneVision.from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError):
        ReKVLlavaOneVision.from_pretrained("no-such-org/no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        ReKVLlavaOneVision.from_pretrained(str(tmp_path / "empty"))


def test_config_table_gives_every_field_and_its_default():
    """The ``ReKVConfig`` table of docs/configuration.md lists every field with the default the code has."""
    import dataclasses
    import os
    import re

    from lmms_rekv import ReKVConfig

    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "configuration.md")).read()
    table = readme.split("## `ReKVConfig`", 1)[1].split("\n\n", 2)[1]
    listed = {}
    for row in table.splitlines()[2:]:
        names, default = row.split("|")[1:3]
        values = [v.strip().strip("`") for v in default.split(",")]
        for name, value in zip(re.findall(r"`(\w+)`", names), values):
            listed[name] = value
    for field in dataclasses.fields(ReKVConfig):
        assert field.name in listed, f"{field.name} missing from the ReKVConfig table of docs/configuration.md"
        value = field.default
        if value is None or field.name == "offload_dir":
            continue  # documented in words ("temp dir", "None = set by the loader")
        text = listed[field.name].strip('"')
        if text.endswith(" GiB"):
            text = str(int(text[:-4]) * 2**30)
        assert text == str(value).replace("'", ""), (field.name, listed[field.name], value)
