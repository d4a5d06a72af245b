"""Shared fixtures: tiny random checkpoints (LLaVA-OneVision; Qwen2-VL / Qwen2.5-VL / Qwen3-VL)
built offline once per run, and random frames. The repository root is put on ``sys.path``
*after* site-packages, so the tests import the random-model builders (``research.tiny``) and the
benchmarks from the checkout while ``lmms_rekv`` itself comes from wherever it is installed (a
wheel in ``scripts/test_installed.sh``)."""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# lmms-eval task modules read HF_HOME at import; never touch the user's cache from tests
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="rekv-hf-"))
torch.manual_seed(0)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.append(ROOT)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    from research.tiny import build_tiny_model

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


@pytest.fixture(scope="session")
def qwen_checkpoint(tmp_path_factory):
    """``qwen_checkpoint(family)``: the folder of a tiny random ``qwen2_vl`` / ``qwen2_5_vl`` /
    ``qwen3_vl`` checkpoint (``research.tiny_qwen`` defaults), built on first use, once per run."""
    from research.tiny_qwen import build_tiny_qwen2_vl

    built = {}

    def get(family: str) -> str:
        if family not in built:
            built[family] = build_tiny_qwen2_vl(str(tmp_path_factory.mktemp(f"tiny-{family}") / "model"), family=family)
        return built[family]

    return get


@pytest.fixture(scope="session")
def qwen_engines(qwen_checkpoint):
    """``qwen_engines(family)(**config)``: that tiny Qwen checkpoint in fp32 on CPU (loaded once
    per run) with a ReKVConfig."""
    from lmms_rekv import ReKV, ReKVConfig

    cache = {}

    def for_family(family):
        def _load(**config):
            if family not in cache:
                cache[family] = ReKV.from_pretrained(qwen_checkpoint(family), dtype=torch.float32, device="cpu")
            return cache[family].with_config(ReKVConfig(**config))

        return _load

    return for_family


def make_frames(n: int, seed: int = 0, size=(40, 48)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)


@pytest.fixture
def frames():
    return make_frames


#: modules whose tests go through a user's entry point -- a command, lmms-eval's CLI or
#: evaluator, the README's commands, a benchmark's main -- rather than one part of the package
END_TO_END = {"test_bench", "test_cli_errors", "test_demo", "test_docs", "test_install", "test_live", "test_lmms_eval",
              "test_multi_round", "test_ovobench", "test_quickstart", "test_qwen_dropin", "test_soak", "test_tasks",
              "test_upstream_tasks", "test_llava_reference"}


def pytest_collection_modifyitems(config, items):
    """``e2e`` on the tests of ``END_TO_END``, ``unit`` on the rest: ``pytest -m unit`` checks the
    parts alone (a few minutes), ``pytest -m e2e`` the entry points."""
    for item in items:
        if any(item.get_closest_marker(m) for m in ("slow", "recipe", "reference")):
            continue  # kept out of both: they run by their own marker
        name = item.module.__name__.rsplit(".", 1)[-1] if item.module is not None else ""
        item.add_marker(pytest.mark.e2e if name in END_TO_END else pytest.mark.unit)
