"""``rekv_llava_ov`` against lmms-eval's OWN ``llava_onevision`` (LLaVA-NeXT's ``llava`` package, an
unmodified copy in ``../shared/reference``), through the real CLI on both sides: the same
``--model_args`` on a tiny lmms-lab checkpoint, 8 lossless documents whose frame counts make
``np.linspace`` rounding matter and whose sizes need resizing, ReKV with every block retrieved.
The reference runs in its own venv (``scripts/reference_venv.sh``: transformers 4.51.3, which
LLaVA-NeXT needs); ``.ci/run`` runs this file as its own stage (``pytest -m reference``)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("REKV_SHARED", os.path.join(ROOT, "..", "shared"))
LLAVA_ARGS = "conv_template=qwen_1_5,device=cpu,device_map=auto,max_frames_num=8"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    if not os.path.isdir(os.path.join(SHARED, "reference", "llava-next", "llava")):
        pytest.skip(f"no LLaVA-NeXT reference at {SHARED}/reference/llava-next (set REKV_SHARED)")
    from helpers.llava_reference import reference_missing, write_documents

    if reference_missing():
        proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "reference_venv.sh")], capture_output=True, text=True,
                              env=dict(os.environ, REKV_SHARED=SHARED), timeout=1200)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    from research.tiny import build_tiny_lmms_lab_reference

    root = tmp_path_factory.mktemp("llava-reference")
    checkpoint = build_tiny_lmms_lab_reference(str(root / "llava-onevision-qwen2-tiny"), hf_home=str(root / "hf"))
    _, docs = write_documents(root)
    return root, checkpoint, docs


def _ours(root, checkpoint, model_args: str, name: str) -> dict:
    """``rekv-eval --model rekv_llava_ov`` on the same documents: doc_id -> prediction."""
    out = root / name
    env = dict(os.environ, HF_HOME=str(root / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               LMMS_REKV_HOME=str(root / "rekv-home"))
    env.pop("LMMS_REKV_FAILURES", None)
    cmd = [sys.executable, "-m", "lmms_rekv.integrations.run_eval", "--model", "rekv_llava_ov", "--model_args",
           f"pretrained={checkpoint},{model_args}", "--tasks", "llava_docs", "--include_path", str(root / "tasks"),
           "--output_path", str(out), "--log_samples", "--verbosity", "DEBUG"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    (path,) = glob.glob(str(out / "*" / "*_samples_llava_docs.jsonl"))
    return {s["doc_id"]: s["filtered_resps"].strip() for s in map(json.loads, open(path))}


def test_frames_and_pixels_are_llava_onevisions(setup):
    """Frame indices (its decord ``load_video``) and pixel values (LLaVA-NeXT's
    ``SigLipImageProcessor``, transformers 4.51.3) equal ours bit for bit."""
    from helpers.llava_reference import reference_indices, reference_pixel_values

    from lmms_rekv.io.preprocess import LlavaNextFrames
    from lmms_rekv.io.video import iter_video_uniform, uniform_indices

    _, _, docs = setup
    for doc in docs[:2]:
        assert reference_indices(doc["video"], 8).tolist() == uniform_indices(doc["video"], 8)
    frames = np.stack([f for _, f in iter_video_uniform(docs[3]["video"], 8)])  # 97 x 130: odd, wide
    assert torch.equal(LlavaNextFrames()(frames), reference_pixel_values(frames))


def test_rekv_llava_ov_answers_as_llava_onevision_in_float32(setup):
    from helpers.llava_reference import run_reference

    root, checkpoint, docs = setup
    theirs = run_reference(root, checkpoint, "max_frames_num=8", dtype="float32")
    ours = _ours(root, checkpoint, f"{LLAVA_ARGS},dtype=float32,window_tokens=none,topk_frames=none", "ours-float32")
    assert len(theirs) == len(docs) and all(theirs.values())
    assert ours == theirs


def test_float16_as_llava_onevision_runs_it(setup):
    """Its own precision (float16 is the drop-in's default): the predictions compared and
    reported; greedy decoding from float16 logits may flip a near tie late in an answer."""
    from helpers.llava_reference import run_reference

    root, checkpoint, docs = setup
    theirs = run_reference(root, checkpoint, "max_frames_num=8", dtype="float16")
    ours = _ours(root, checkpoint, f"{LLAVA_ARGS},window_tokens=none,topk_frames=none", "ours-float16")
    same = sum(ours[d] == theirs[d] for d in theirs)
    print(f"float16: {same}/{len(theirs)} identical; differing: "
          + "; ".join(f"doc {d}: ours {ours[d]!r} theirs {theirs[d]!r}" for d in theirs if ours[d] != theirs[d]))
    assert len(theirs) == len(docs) and same >= len(docs) - 2
    first_tokens = sum(ours[d][:1] == theirs[d][:1] for d in theirs)
    assert first_tokens == len(docs)  # the first token of every answer agrees
