"""lmms-eval's OWN ``llava_onevision`` model (LLaVA-NeXT's ``llava`` package) as a reference for
tests: documents and an lmms-eval task to run it on, the CLI run itself, and what it does to a
video (frame indices, pixel values). Everything of the reference runs in ``.venv-reference``
(``scripts/reference_venv.sh``: transformers 4.51.3, LLaVA-NeXT), in a subprocess; the
checkpoint comes from ``research.tiny.build_tiny_lmms_lab_reference(ckpt, hf_home)`` with
``hf_home = <root>/hf`` (the default here). A helper module, not a test module.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from lmms_rekv.io.video import write_video

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE_PYTHON = os.path.join(ROOT, ".venv-reference", "bin", "python")
LAUNCHER = os.path.join(ROOT, "tests", "llava_reference_launch.py")
TASK = "llava_docs"

QUESTIONS = ["what is shown?", "what color is it?", "who is there?", "where is it?", "how many are there?",
             "what happens first?", "is the door open?", "what is on the table?"]
# (height, width): wide, tall, square, odd heights; all resized to 384x384. Widths decord reads
# from raw AVI as PyAV does: even, and not 48 or 72 (decord fails on those, "The size must
# exactly match", and lmms-eval then answers without the video)
SIZES = [(48, 64), (96, 64), (64, 64), (97, 130), (40, 128), (131, 50), (100, 100), (120, 160)]
# np.linspace(0, n - 1, 8, dtype=int) truncates where a time grid would round differently
FRAME_COUNTS = [9, 13, 16, 21, 27, 31, 37, 40]


def reference_missing() -> Optional[str]:
    """Why the reference cannot run here (for ``pytest.skip``), or None."""
    if not os.path.isfile(os.path.join(ROOT, ".venv-reference", ".reference-complete")):
        return "no .venv-reference (scripts/reference_venv.sh builds it from shared/reference/llava-next)"
    return None


def _env(hf_home: Optional[str] = None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if hf_home:
        env["HF_HOME"] = str(hf_home)
    for name in ("LMMS_REKV_FAILURES", "PYTHONPATH", "REKV_REFERENCE_DTYPE", "REKV_REFERENCE_PROBE"):
        env.pop(name, None)
    return env


def _python(code: str, *args: str, timeout: int = 300) -> None:
    reason = reference_missing()
    if reason:
        raise RuntimeError(reason)
    proc = subprocess.run([REFERENCE_PYTHON, "-c", code, *args], env=_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"reference subprocess failed:\n{(proc.stdout + proc.stderr)[-4000:]}")


def write_documents(root, n: int = 8) -> Tuple[str, List[dict]]:
    """``n`` lossless random videos under ``root/videos`` (rawvideo AVI: decord and PyAV decode
    them identically; assorted sizes, 9 to 40 frames at 4 fps), one question each, and the
    lmms-eval task folder ``root/tasks/llava_docs`` (json dataset, generate_until,
    ``max_new_tokens: 8``, greedy). Returns ``(task_dir, docs)``."""
    root = Path(root)
    rng = np.random.default_rng(11)
    docs = []
    for i in range(n):
        k = i % len(SIZES)
        frames = rng.integers(0, 256, (FRAME_COUNTS[k], *SIZES[k], 3), dtype=np.uint8)
        video = write_video(str(root / "videos" / f"v{i}.avi"), frames, fps=4, lossless=True)
        docs.append({"id": i, "video": video, "question": QUESTIONS[i % len(QUESTIONS)]})
    task = root / "tasks" / TASK
    task.mkdir(parents=True, exist_ok=True)
    with open(task / "docs.json", "w") as fh:
        json.dump(docs, fh)
    (task / "utils.py").write_text("def doc_to_visual(doc):\n    return [doc['video']]\n\n\n"
                                   "def doc_to_text(doc, lmms_eval_specific_kwargs=None):\n    return doc['question']\n\n\n"
                                   "def process_results(doc, results):\n    return {'answered': float(bool(results[0].strip()))}\n")
    (task / f"{TASK}.yaml").write_text(
        f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {task / 'docs.json'}\ntask: {TASK}\ntest_split: test\n"
        "output_type: generate_until\ndoc_to_visual: !function utils.doc_to_visual\ndoc_to_text: !function utils.doc_to_text\n"
        "doc_to_target: question\nprocess_results: !function utils.process_results\n"
        "generation_kwargs:\n  max_new_tokens: 8\n  temperature: 0\n  do_sample: false\n"
        "metric_list:\n  - metric: answered\n    aggregation: mean\n    higher_is_better: true\n")
    return str(task), docs


def run_reference(root, checkpoint: str, model_args_extra: str = "", dtype: str = "float32",
                  hf_home: Optional[str] = None, timeout: int = 900) -> Dict[int, str]:
    """Run lmms-eval's CLI with its own ``llava_onevision`` (``.venv-reference``) on the
    ``llava_docs`` task of ``write_documents(root)``; returns doc_id -> filtered prediction.

    ``dtype="float32"``: the model and the video pixels forced to float32 from outside
    (``tests/llava_reference_launch.py``); ``"float16"``: unchanged, lmms-eval's default. Either
    way the precision that ran is checked (model parameters and every pixel tensor the vision
    tower received). ``hf_home`` (default ``root/hf``) holds the tower's HF cache entry."""
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype={dtype!r}: float16 or float32")
    reason = reference_missing()
    if reason:
        raise RuntimeError(reason)
    root, checkpoint = Path(root).resolve(), os.path.abspath(checkpoint)
    out = Path(tempfile.mkdtemp(dir=root, prefix=f"reference-{dtype}-"))
    probe = out / "probe.jsonl"
    model_args = f"pretrained={checkpoint},conv_template=qwen_1_5,device=cpu,device_map=auto"
    if model_args_extra:
        model_args += "," + model_args_extra.strip(",")
    env = _env(hf_home or root / "hf")
    env.update(REKV_REFERENCE_DTYPE=dtype, REKV_REFERENCE_PROBE=str(probe))
    cmd = [REFERENCE_PYTHON, LAUNCHER, "--model", "llava_onevision", "--model_args", model_args, "--tasks", TASK,
           "--include_path", str(root / "tasks"), "--output_path", str(out / "results"), "--log_samples",
           "--verbosity", "DEBUG"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=str(out))
    (out / "log.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"reference run failed (log: {out / 'log.txt'}):\n{(proc.stdout + proc.stderr)[-5000:]}")
    paths = glob.glob(str(out / "results" / "*" / f"*_samples_{TASK}.jsonl"))
    if len(paths) != 1:
        raise RuntimeError(f"reference run wrote {len(paths)} samples files (log: {out / 'log.txt'})")
    with open(paths[0]) as fh:
        predictions = {s["doc_id"]: s["filtered_resps"].strip() for s in map(json.loads, fh)}
    events = [json.loads(line) for line in open(probe)] if probe.is_file() else []
    want = f"torch.{dtype}"
    models = [e["model"] for e in events if "model" in e]
    pixels = [e["pixels"] for e in events if "pixels" in e]
    if models != [[want]] or len(pixels) < len(predictions) or set(pixels) != {want}:
        raise RuntimeError(f"the reference did not run in {dtype}: model parameter dtypes {models}, pixel dtypes {sorted(set(pixels))} "
                           f"over {len(pixels)} vision-tower calls for {len(predictions)} documents")
    return predictions


_INDICES = """
import sys
import numpy as np
import lmms_eval.models.simple.llava_onevision as lo

seen = []

class Reader(lo.VideoReader):
    def get_batch(self, indices):
        seen.append(list(indices))
        return super().get_batch(indices)

lo.VideoReader = Reader
lo.Llava_OneVision.load_video(None, sys.argv[1], int(sys.argv[2]))
np.save(sys.argv[3], np.asarray(seen[0], dtype=np.int64))
"""

_PIXELS = """
import sys
import numpy as np
from llava.model.multimodal_encoder.siglip_encoder import SigLipImageProcessor

frames = np.load(sys.argv[1])
pixels = SigLipImageProcessor().preprocess(frames, return_tensors="pt")["pixel_values"]
np.save(sys.argv[2], pixels.float().numpy())
"""


def reference_indices(path: str, max_frames_num: int) -> np.ndarray:
    """The frame indices lmms-eval's ``llava_onevision`` decodes from ``path`` (its own
    ``load_video``: decord, ``np.linspace(0, len(vr) - 1, max_frames_num, dtype=int)``), run
    in ``.venv-reference``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "indices.npy")
        _python(_INDICES, str(path), str(int(max_frames_num)), out)
        return np.load(out)


def reference_pixel_values(frames_uint8: np.ndarray):
    """LLaVA-NeXT's ``SigLipImageProcessor().preprocess(frames, return_tensors='pt')['pixel_values']``
    of ``(N, H, W, 3)`` uint8 frames as a float32 ``torch.Tensor`` ``(N, 3, 384, 384)`` (before
    lmms-eval's ``.half()``), run in ``.venv-reference``."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "frames.npy"), os.path.join(tmp, "pixels.npy")
        np.save(src, np.ascontiguousarray(frames_uint8, dtype=np.uint8))
        _python(_PIXELS, src, out)
        return torch.from_numpy(np.load(out))
