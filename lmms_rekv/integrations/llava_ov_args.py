"""lmms-eval ``llava_onevision`` model_args, as ``rekv_llava_ov`` takes them.

Each of ``llava_onevision``'s arguments is either honoured (translated to ours) or refused
with a one-line reason; none is silently ignored. ``ARGS`` is the table docs/lmms-eval.md shows.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

#: name -> (values accepted, None = any; what rekv_llava_ov does with it)
ARGS: Dict[str, Tuple[Optional[Tuple[str, ...]], str]] = {
    "pretrained": (None, "loaded; lmms-lab (LLaVA-NeXT) checkpoints are converted on load"),
    "conv_template": (("qwen_1_5",), "the chat template used for prompts"),
    "max_frames_num": (None, "that many frames, uniform over the video (unless `fps` is given: then a cap)"),
    "mm_spatial_pool_stride": (("2",), "the stride the transformers model pools frames with"),
    "mm_spatial_pool_mode": (("bilinear",), "the pooling the transformers model applies"),
    "device_map": (None, "the one device the model runs on (`auto`: cuda:LOCAL_RANK if available, else cpu)"),
    "attn_implementation": (("sdpa", "eager", "flash_attention_2"), "the vision tower's attention (the language model's is ReKV's)"),
    "video_decode_backend": (("decord", "pyav"), "frames are decoded with PyAV either way"),
    "token_strategy": (("single",), "one `<video>` placeholder per video"),
    "truncation": (("true",), "prompts are never truncated"),
    "use_cache": (("true",), "ReKV always caches (it is the method)"),
    "truncate_context": (("false",), "the context is bounded by retrieval (`topk_frames`), never truncated"),
    "model_name": (None, "a label only: the family comes from the checkpoint's config.json"),
    "customized_config": (("none",), "no JSON config overrides: give ReKV fields as model_args"),
}

#: why a refused value is refused
REFUSED = {
    "conv_template": "only the qwen_1_5 conversation is implemented",
    "mm_spatial_pool_stride": "the transformers LLaVA-OneVision model pools video frames with stride 2",
    "mm_spatial_pool_mode": "the transformers LLaVA-OneVision model pools video frames bilinearly",
    "attn_implementation": "not an attention implementation of transformers",
    "video_decode_backend": "frames are decoded with PyAV",
    "token_strategy": "one placeholder per frame ('multiple') is not implemented",
    "truncation": "prompt truncation is not implemented",
    "use_cache": "ReKV cannot run without its KV cache",
    "truncate_context": "context truncation is not implemented (retrieval bounds the context)",
    "customized_config": "JSON config overrides are not supported; give ReKV fields as model_args",
}

#: ``fps`` used with ``max_frames_num`` alone: high enough that the cap sets the rate
UNIFORM_FPS = 1000.0


def translate(args: Dict[str, object]) -> Dict[str, object]:
    """Take ``llava_onevision``'s arguments out of ``args`` (changed in place) and return
    what they mean for ``rekv_llava_ov``: ``conv_template``, ``max_frames``, ``fps``,
    ``device``, ``attn_implementation``. Raises ValueError naming a refused value."""
    out: Dict[str, object] = {}
    for name in [n for n in args if n in ARGS and n != "pretrained"]:
        value = args.pop(name)
        allowed, _ = ARGS[name]
        text = str(value).strip()
        if allowed is not None and text.lower() not in allowed:
            raise ValueError(f"{name}={text!r} is not supported by rekv_llava_ov: {REFUSED[name]}")
        if name == "conv_template":
            out["conv_template"] = text
        elif name == "max_frames_num":
            out["max_frames"] = int(text)
            out.setdefault("fps", UNIFORM_FPS)
        elif name == "device_map":
            if text not in ("auto", "cpu", "cuda") and not text.startswith("cuda:"):
                raise ValueError(f"device_map={text!r} is not supported by rekv_llava_ov: one device per process "
                                 "(auto, cpu, cuda or cuda:N); sharding a model over devices is not implemented")
            out["device"] = text
        elif name == "attn_implementation":
            out["attn_implementation"] = text
    return out
