"""lmms-eval ``llava_onevision`` model_args, as ``rekv_llava_ov`` takes them.

Each of ``llava_onevision``'s arguments is either honoured (translated to ours) or refused
with a one-line reason; none is silently ignored. ``ARGS`` is the table docs/lmms-eval.md shows.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from lmms_rekv.args import ONE_DEVICE, is_device

#: name -> (values accepted, None = any; what rekv_llava_ov does with it)
ARGS: Dict[str, Tuple[Optional[Tuple[str, ...]], str]] = {
    "pretrained": (None, "loaded; lmms-lab (LLaVA-NeXT) checkpoints are converted on load"),
    "conv_template": (("qwen_1_5",), "the chat template used for prompts"),
    "max_frames_num": (None, "that many frames at `np.linspace(0, frames - 1, max_frames_num, dtype=int)` of the "
                              "decoded frames, as llava_onevision reads them (with `fps`: a cap on the time grid instead)"),
    "mm_spatial_pool_stride": (("2",), "the stride the transformers model pools frames with"),
    "mm_spatial_pool_mode": (("bilinear",), "the pooling the transformers model applies"),
    "device_map": (None, "the one device the model runs on (`auto`: cuda:LOCAL_RANK if available, else cpu)"),
    "attn_implementation": (("sdpa", "eager", "flash_attention_2"), "the vision tower's attention (the language model's is ReKV's)"),
    "video_decode_backend": (("decord", "pyav"), "which of llava_onevision's readers picks the frame indices (decord: "
                                                 "its frame count; pyav: the container's, capped); decoded with PyAV"),
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

#: llava_onevision's defaults that matter when any of its arguments is given
DEFAULT_MAX_FRAMES_NUM = 32
DEFAULT_DTYPE = "float16"  # its builder loads float16 and casts the pixels with .half()


def translate(args: Dict[str, object]) -> Tuple[Dict[str, object], Dict[str, object]]:
    """What ``llava_onevision``'s arguments among ``args`` mean for ``rekv_llava_ov`` --
    ``conv_template``, ``max_frames``, ``device``, ``attn_implementation``, and, when any of
    them is given (the drop-in), ``uniform_frames`` (llava_onevision's frame count, 32 unless
    given), ``decode_backend`` and ``dtype`` (its float16) -- and the other arguments (``args``
    is not changed). Raises ValueError naming a refused value."""
    out: Dict[str, object] = {}
    given = [n for n in args if n in ARGS and n != "pretrained"]
    if given:
        out.update(uniform_frames=DEFAULT_MAX_FRAMES_NUM, decode_backend="decord", dtype=DEFAULT_DTYPE)
    for name in given:
        value = args[name]
        allowed, _ = ARGS[name]
        text = str(value).strip()
        if allowed is not None and text.lower() not in allowed:
            raise ValueError(f"{name}={text!r} is not supported by rekv_llava_ov: {REFUSED[name]}")
        if name == "conv_template":
            out["conv_template"] = text
        elif name == "max_frames_num":
            if int(text) < 1:
                raise ValueError(f"max_frames_num must be >= 1, got {text}")
            out["max_frames"] = out["uniform_frames"] = int(text)
        elif name == "video_decode_backend":
            out["decode_backend"] = text.lower()
        elif name == "device_map":
            if not is_device(text):
                raise ValueError(f"device_map={text!r} is not supported by rekv_llava_ov: {ONE_DEVICE}")
            out["device"] = text
        elif name == "attn_implementation":
            out["attn_implementation"] = text
    return out, {k: v for k, v in args.items() if k not in given}
