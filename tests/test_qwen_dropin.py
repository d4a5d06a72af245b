"""``--model rekv`` as a drop-in for lmms-eval's own ``qwen2_5_vl`` (the chat class the CLI
runs): the same model_args, and -- with an unbounded window and every block retrieved -- the
same per-document predictions as lmms-eval's model on the same documents, through the real
CLI (with ``max_num_frames`` and with ``fps``)."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lmms_rekv.io.video import write_video

QUESTIONS = ["what is shown?", "what color is it?", "who is there?", "where is it?", "how many are there?"]
SIZES = [(48, 64), (96, 64), (64, 64), (40, 128), (72, 64)]  # wide, tall, square (widths decord reads from raw AVI)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from lmms_rekv.tools.tiny_qwen import build_tiny_qwen2_vl

    root = tmp_path_factory.mktemp("qwen-dropin")
    # lmms-eval's qwen2_5_vl always loads bfloat16; a checkpoint with confident logits (init_std
    # 0.4) keeps bf16 rounding from deciding greedy ties, on either side
    model = build_tiny_qwen2_vl(str(root / "model"), family="qwen2_5_vl", init_std=0.4)
    rng = np.random.default_rng(7)
    docs = []
    for i, (question, size) in enumerate(zip(QUESTIONS, SIZES)):
        video = write_video(str(root / "videos" / f"v{i}.avi"), rng.integers(0, 256, (12 + 4 * i, *size, 3), dtype=np.uint8),
                            fps=4, lossless=True)  # decord (theirs) and PyAV read lossless AVI alike
        docs.append({"id": i, "video": video, "question": question})
    task = root / "tasks" / "qwen_docs"
    task.mkdir(parents=True)
    json.dump(docs, open(task / "docs.json", "w"))
    (task / "utils.py").write_text("def doc_to_visual(doc):\n    return [doc['video']]\n\n\n"
                                   "def doc_to_text(doc, lmms_eval_specific_kwargs=None):\n    return doc['question']\n\n\n"
                                   "def process_results(doc, results):\n    return {'answered': float(bool(results[0].strip()))}\n")
    (task / "qwen_docs.yaml").write_text(
        f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {task / 'docs.json'}\ntask: qwen_docs\ntest_split: test\n"
        "output_type: generate_until\ndoc_to_visual: !function utils.doc_to_visual\ndoc_to_text: !function utils.doc_to_text\n"
        "doc_to_target: question\nprocess_results: !function utils.process_results\n"
        "generation_kwargs:\n  max_new_tokens: 8\n  temperature: 0\n  do_sample: false\n"
        "metric_list:\n  - metric: answered\n    aggregation: mean\n    higher_is_better: true\n")
    return root, model


def _predictions(root, model_name, model_args, out):
    env = dict(os.environ, HF_HOME=str(root / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("LMMS_REKV_FAILURES", None)
    head = [sys.executable, "-m", "lmms_rekv.integrations.run_eval"] if model_name == "rekv" else [sys.executable, "-m", "lmms_eval"]
    cmd = head + ["--model", model_name, "--model_args", model_args, "--tasks", "qwen_docs", "--include_path", str(root / "tasks"),
                  "--output_path", str(out), "--log_samples", "--verbosity", "DEBUG"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    (path,) = glob.glob(str(out / "*" / "*_samples_qwen_docs.jsonl"))
    return {s["doc_id"]: s["filtered_resps"].strip() for s in map(json.loads, open(path))}


@pytest.mark.parametrize("sampling", ["max_num_frames=6", "fps=3,max_pixels=401408"])
def test_rekv_with_every_block_equals_lmms_eval_qwen2_5_vl(setup, sampling):
    root, model = setup
    args = f"pretrained={model},device=cpu,device_map=cpu,{sampling}"
    name = sampling.split("=")[0]
    theirs = _predictions(root, "qwen2_5_vl", args, root / f"theirs-{name}")
    ours = _predictions(root, "rekv", f"{args},window_tokens=none,topk_frames=none", root / f"ours-{name}")
    assert len(theirs) == len(QUESTIONS) and all(theirs.values())
    assert ours == theirs


def test_qwen_args_honoured_or_refused_with_the_reason():
    from lmms_rekv.integrations import qwen_args

    args = {"max_num_frames": "16", "max_pixels": "401408", "min_pixels": "3136", "fps": "1", "system_prompt": "Be brief.",
            "interleave_visuals": "False", "reasoning_prompt": "\\nThink.", "device_map": "cpu", "use_cache": "True",
            "batch_size": "1", "attn_implementation": "sdpa", "window_tokens": "64"}
    out = qwen_args.translate(args)
    assert args == {"window_tokens": "64"}  # every qwen2_5_vl argument taken, ours left
    assert out == {"device": "cpu", "attn_implementation": "sdpa",
                   "qwen_frames": {"min_pixels": 3136, "max_pixels": 401408, "max_num_frames": 16, "qwen_fps": 1.0}}
    for arg, reason in (("interleave_visuals=True", "interleaving"), ("batch_size=4", "one stream at a time"),
                        ("total_pixels=1000", "qwen3_vl"), ("device_map=balanced", "one device per process")):
        name, value = arg.split("=")
        with pytest.raises(ValueError, match=reason):
            qwen_args.translate({name: value})


def test_qwen_args_on_another_family_fail_before_loading(tiny_dir):
    from lmms_rekv.integrations.lmms_eval_model import ReKVLlavaOV

    with pytest.raises(ValueError, match="need a Qwen2-VL or Qwen2.5-VL checkpoint"):
        ReKVLlavaOV(pretrained=tiny_dir, device="cpu", max_num_frames=8)
