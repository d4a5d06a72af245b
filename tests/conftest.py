"""Shared fixtures: a tiny random LLaVA-OneVision checkpoint built offline once per run."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# lmms-eval task modules read HF_HOME at import; never touch the user's cache from tests
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="rekv-hf-"))
torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    from lmms_rekv.tools.tiny import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="session")
def load(tiny_dir):
    """``load(**config)``: the tiny model in fp32 on CPU with a ReKVConfig."""
    from lmms_rekv import ReKVConfig, ReKVLlavaOneVision

    cache = {}

    def _load(**config):
        model = cache.get("model")
        if model is None:
            model = cache["model"] = ReKVLlavaOneVision.from_pretrained(tiny_dir, dtype=torch.float32, device="cpu")
        return model.with_config(ReKVConfig(**config))

    return _load


def make_frames(n: int, seed: int = 0, size=(40, 48)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)


@pytest.fixture
def frames():
    return make_frames
