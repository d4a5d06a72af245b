"""Upstream lmms-eval video tasks are used unchanged: their own YAML, prompt function,
default lmms_eval_specific_kwargs and generation kwargs drive rekv_llava_ov."""

import os

import lmms_eval.tasks as tasks_pkg
import numpy as np
import pytest
from lmms_eval.api.instance import Instance
from lmms_eval.utils import load_yaml_config

from lmms_rekv.io.video import write_video

TASKS = os.path.dirname(tasks_pkg.__file__)
MC = {"question": "what does the man do?", "answer": "B"}
DOCS = {
    "egoschema/egoschema.yaml": dict(MC, option=["A. cooks", "B. cleans", "C. reads", "D. sleeps", "E. runs"], video_idx="v"),
    "egoschema/egoschema_subset.yaml": dict(MC, option=["A. cooks", "B. cleans", "C. reads", "D. sleeps", "E. runs"], video_idx="v"),
    "mlvu/mlvu_dev.yaml": dict(MC, video_name="v.mp4", task_type="plotQA", candidates=["x", "y"], question_id="1"),
    "cgbench/cgbench.yaml": dict(MC, choices=["cooks", "cleans", "reads", "sleeps"], right_answer="B", question_id=1, qid=1, video_uid="v", domain="d",
                                 category="c", sub_category="s", duration=8),
    "activitynetqa/activitynetqa_generation.yaml": dict(MC, video_name="v", answer="cleaning"),
    "videomme/videomme.yaml": dict(MC, options=["A. cooks", "B. cleans", "C. reads", "D. sleeps"], videoID="v", question_id="1", duration="short",
                                   domain="d", sub_category="s", task_type="t"),
    # the long-video tasks a ReKV user runs (lmms-eval 0.7.3), in their documents' own format
    "lvbench/lvbench.yaml": dict(MC, options=["cooks", "cleans", "reads", "sleeps"], video_path="v.mp4", uid="1", question_type=["reasoning"],
                                 time_reference="00:10"),
    "longvideobench/longvideobench_val_v.yaml": dict(MC, option0="cooks", option1="cleans", option2="reads", option3="sleeps", option4="N/A",
                                                     correct_choice=1, id="1", duration_group=600, question_category="E2O",
                                                     video_path="v.mp4", duration=8.0),
    "timescope/timescope.yaml": dict(MC, input="what does the man do?\nA. cooks\nB. cleans\nC. reads\nD. sleeps", type="QA", length=8,
                                     video="v.mp4", id="1"),
}
JUDGED = {"activitynetqa/activitynetqa_generation.yaml"}  # scored by a GPT judge over the network


@pytest.fixture(scope="module")
def lm(tiny_dir):
    from lmms_rekv.integrations.lmms_eval_model import ReKVLlavaOV

    return ReKVLlavaOV(pretrained=tiny_dir, dtype="float32", device="cpu", window_tokens=64, topk_frames=4, chunk_frames=4, fps=2)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    rng = np.random.default_rng(0)
    return write_video(str(tmp_path_factory.mktemp("v") / "v.mp4"), rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), fps=4)


@pytest.mark.parametrize("yaml_path", sorted(DOCS))
def test_upstream_prompt_and_generation_kwargs(lm, video, yaml_path, monkeypatch):
    config = load_yaml_config(os.path.join(TASKS, yaml_path), mode="full")
    kwargs = (config.get("lmms_eval_specific_kwargs") or {}).get("default", {})
    doc = DOCS[yaml_path]
    to_text = config["doc_to_text"]
    context = doc[to_text] if isinstance(to_text, str) else to_text(doc, kwargs)  # a field name or a function
    assert doc["question"].split()[-1].rstrip("?") in context.lower()
    seen = []
    original = lm.engine.backbone.prompt.suffix_ids
    monkeypatch.setattr(lm.engine.backbone.prompt, "suffix_ids", lambda q: seen.append(q) or original(q))
    lm.task_dict = {config["task"]: {"test": [doc]}}
    request = Instance(
        request_type="generate_until", idx=0, metadata={"task": config["task"], "doc_id": 0, "repeats": 1},
        arguments=(context, dict(config.get("generation_kwargs") or {}), lambda d: [video], 0, config["task"], "test"),
    )
    lm.failures.clear()
    (answer,) = lm.generate_until([request])
    assert not lm.failures and isinstance(answer, str) and answer
    assert seen == [context.strip()]
    if kwargs.get("post_prompt") and not isinstance(to_text, str):
        assert kwargs["post_prompt"].strip() in seen[0]
    if yaml_path not in JUDGED:
        scored = config["process_results"](doc, [answer])  # the upstream scorer takes our output as it is
        assert isinstance(scored, dict) and scored


def test_egoschema_mcppl_loglikelihood(lm, video):
    config = load_yaml_config(os.path.join(TASKS, "egoschema/egoschema_mcppl.yaml"), mode="full")
    doc = DOCS["egoschema/egoschema.yaml"]
    choices = config["doc_to_choice"](doc)
    lm.task_dict = {"egoschema_mcppl": {"test": [doc]}}
    requests = [
        Instance(request_type="loglikelihood", idx=i, metadata={"task": "egoschema_mcppl", "doc_id": 0, "repeats": 1},
                 arguments=(doc["question"], f" {choice}", lambda d: [video], 0, "egoschema_mcppl", "test"))
        for i, choice in enumerate(choices)
    ]
    scores = lm.loglikelihood(requests)
    assert len(scores) == len(choices) and all(np.isfinite(s) for s, _ in scores)
    assert len({round(s, 6) for s, _ in scores}) > 1
    unconditional = Instance(request_type="loglikelihood", idx=0, metadata={"task": "egoschema_mcppl", "doc_id": 0, "repeats": 1}, arguments=("", "x"))
    assert lm.loglikelihood([unconditional]) == [(float("-inf"), False)]
