"""Error that quantized offloaded KV introduces, measured on a model (default: the tiny one).

    python -m research.reliability.quant_eval [--model DIR] [--frames 48] [--questions 8]

For each codec (int8, int4) against exact storage, with every frame retrieved so that all
of the question's context comes from the store: the relative error of every layer's
attention output during the question's prefill, the largest next-token logit difference,
and how many greedy answers (16 tokens) stay identical.
"""

from __future__ import annotations

import argparse
import json
from typing import Dict, List, Optional

import numpy as np
import torch

QUESTIONS = [
    "What is happening in the video?", "What color is the moving square?", "Where is the cup?",
    "Who opens the door?", "What happens after the door opens?", "How many people are there?",
    "What is on the table?", "What does the man pick up first?",
]


def _attention_outputs(engine, session, question: str) -> List[torch.Tensor]:
    """Inputs of every layer's o_proj (= attention outputs) during the question's prefill."""
    seen: Dict[int, torch.Tensor] = {}

    def hook_for(layer):
        def hook(module, inputs):
            seen.setdefault(layer, inputs[0].detach().float().clone())

        return hook

    hooks = [l.self_attn.o_proj.register_forward_pre_hook(hook_for(i)) for i, l in enumerate(engine.language_model.layers)]
    try:
        session.answer(question, max_new_tokens=1)
    finally:
        for h in hooks:
            h.remove()
    return [seen[i] for i in range(len(seen))]


def evaluate(model_dir: str, frames: int = 48, questions: int = 8, seed: int = 0) -> Dict[str, Dict[str, float]]:
    from lmms_rekv import ReKVConfig, ReKVLlavaOneVision

    base = ReKVLlavaOneVision.from_pretrained(model_dir, config=ReKVConfig(window_tokens=64, topk_frames=None, chunk_frames=8), dtype=torch.float32, device="cpu")
    video = np.random.default_rng(seed).integers(0, 256, (frames, 48, 48, 3), dtype=np.uint8)
    sessions = {}
    for kind in (None, "int8", "int4"):
        engine = base.with_config(base.config.replace(kv_quant=kind))
        sessions[kind] = (engine, engine.new_session())
        sessions[kind][1].add_frames(video)
    report = {}
    asked = QUESTIONS[:questions]
    exact_engine, exact = sessions[None]
    reference = {q: (_attention_outputs(exact_engine, exact, q), exact.answer(q, max_new_tokens=16, return_logits=True, eos_token_ids=())) for q in asked}
    for kind in ("int8", "int4"):
        engine, session = sessions[kind]
        rel, logit, same = [], [], 0
        for q in asked:
            ref_attn, ref_answer = reference[q]
            attn = _attention_outputs(engine, session, q)
            rel += [float((a - r).norm() / r.norm()) for a, r in zip(attn, ref_attn)]
            answer = session.answer(q, max_new_tokens=16, return_logits=True, eos_token_ids=())
            logit.append(float((answer.logits[0] - ref_answer.logits[0]).abs().max()))
            same += answer.token_ids == ref_answer.token_ids
        report[kind] = {
            "attention_rel_error_mean": float(np.mean(rel)), "attention_rel_error_max": float(np.max(rel)),
            "first_logit_abs_diff_max": float(np.max(logit)), "identical_answers": same, "questions": len(asked),
            "bytes_per_frame": session.state.store.bytes_per_block, "exact_bytes_per_frame": exact.state.store.bytes_per_block,
        }
    return report


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (default: the embedded tiny model)")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--questions", type=int, default=8)
    args = parser.parse_args(argv)
    from research.tiny import tiny_model_dir

    print(json.dumps(evaluate(args.model or tiny_model_dir(), args.frames, args.questions), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
