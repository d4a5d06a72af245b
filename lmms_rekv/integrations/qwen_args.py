"""lmms-eval ``qwen2_5_vl`` model_args, as ``rekv`` takes them (the one-word switch).

``--model qwen2_5_vl --model_args ARGS`` -> ``--model rekv --model_args ARGS[,ReKV fields]``.
``--model qwen2_5_vl`` runs lmms-eval's *chat* class (``models/chat/qwen2_5_vl.py``; the
simple one only with ``--force_simple``), so that is the reference: each of its arguments is
honoured *as it honours it* or refused with a one-line reason. Frames are read and resized by
qwen-vl-utils within the pixel bounds, ``fps`` or ``nframes`` from ``max_num_frames`` as it
chooses them, positioned at the metadata's sampled rate; the prompt is the chat template's
own (that class sends no system message and no reasoning prompt); answers are not cut at
``until`` and default to 128 new tokens. ``ARGS`` is the table the README shows. ``qwen3_vl``'s
own arguments (``total_pixels``, ``enable_thinking``) are refused: lmms-eval's ``qwen3_vl``
gives the processor every frame's own timestamp, which ReKV's Qwen3-VL blocks do not take yet.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

DEFAULT_MIN_PIXELS = 256 * 28 * 28  # lmms-eval qwen2_5_vl's defaults
DEFAULT_MAX_PIXELS = 1605632
DEFAULT_MAX_FRAMES = 32
DEFAULT_MAX_NEW_TOKENS = 128  # the chat class's default when a task sets none

#: name -> (values accepted, None = any; what rekv does with it)
ARGS: Dict[str, Tuple[Optional[Tuple[str, ...]], str]] = {
    "pretrained": (None, "loaded (any supported family; these arguments need Qwen2-VL or Qwen2.5-VL)"),
    "device": (None, "the device the model runs on"),
    "device_map": (None, "the one device the model runs on (`auto`: cuda:LOCAL_RANK if available, else cpu)"),
    "batch_size": (("1",), "one stream at a time"),
    "use_cache": (("true",), "ReKV always caches (it is the method)"),
    "attn_implementation": (("none", "sdpa", "eager", "flash_attention_2"), "the vision tower's attention (the language model's is ReKV's)"),
    "min_pixels": (None, "the processor's and qwen-vl-utils' lower pixel bound per frame"),
    "max_pixels": (None, "the processor's and qwen-vl-utils' upper pixel bound per frame"),
    "max_num_frames": (None, "qwen-vl-utils reads `min(max_num_frames, frames in the file)` frames, floored to an even count (unless `fps`)"),
    "fps": (None, "qwen-vl-utils samples at this rate (unset: `max_num_frames` frames)"),
    "system_prompt": (None, "accepted and unused, as by lmms-eval's chat qwen2_5_vl (the template's default system message)"),
    "interleave_visuals": (("false",), "the video comes before the question"),
    "reasoning_prompt": (None, "accepted and unused, as by lmms-eval's chat qwen2_5_vl"),
    "total_pixels": (("none",), "qwen3_vl's clip budget"),
    "enable_thinking": (("none", "false"), "qwen3_vl's thinking mode"),
}

#: why a refused value is refused
REFUSED = {
    "batch_size": "rekv answers one stream at a time",
    "use_cache": "ReKV cannot run without its KV cache",
    "attn_implementation": "not an attention implementation of transformers",
    "interleave_visuals": "interleaving images with the text is not implemented (one video per question)",
    "total_pixels": "lmms-eval's qwen3_vl path (per-frame timestamps) is not implemented yet",
    "enable_thinking": "lmms-eval's qwen3_vl path (per-frame timestamps) is not implemented yet",
}

#: the families lmms-eval's qwen2_5_vl arguments apply to
FAMILIES = ("qwen2_vl", "qwen2_5_vl")

#: the arguments that say "these are qwen2_5_vl's model_args"
MARKERS = ("min_pixels", "max_pixels", "max_num_frames", "system_prompt", "interleave_visuals", "reasoning_prompt",
           "total_pixels", "enable_thinking")


def wants_qwen(args: Dict[str, object]) -> bool:
    """Whether ``args`` are lmms-eval Qwen model_args (one of their own names is present)."""
    return any(name in args for name in MARKERS)


def translate(args: Dict[str, object]) -> Dict[str, object]:
    """Take ``qwen2_5_vl``'s arguments out of ``args`` (changed in place) and return what they
    mean for rekv: ``qwen_frames`` (``min_pixels``, ``max_pixels``, ``max_num_frames``,
    ``qwen_fps``), ``device``, ``attn_implementation``. Unset ones take lmms-eval's defaults.
    Raises ValueError naming a refused value."""
    out: Dict[str, object] = {}
    frames: Dict[str, object] = {"min_pixels": DEFAULT_MIN_PIXELS, "max_pixels": DEFAULT_MAX_PIXELS,
                                 "max_num_frames": DEFAULT_MAX_FRAMES, "qwen_fps": None}
    for name in [n for n in args if n in ARGS and n != "pretrained"]:
        value = args.pop(name)
        text = str(value).strip()
        allowed, _ = ARGS[name]
        if allowed is not None and text.lower() not in allowed:
            raise ValueError(f"{name}={text!r} is not supported by rekv: {REFUSED[name]}")
        if name in ("min_pixels", "max_pixels", "max_num_frames"):
            frames[name] = int(float(text))
        elif name == "fps" and text.lower() not in ("none", ""):
            frames["qwen_fps"] = float(text)
        elif name in ("device", "device_map"):
            if text not in ("auto", "cpu", "cuda") and not text.startswith("cuda:"):
                raise ValueError(f"{name}={text!r} is not supported by rekv: one device per process "
                                 "(auto, cpu, cuda or cuda:N); sharding a model over devices is not implemented")
            out.setdefault("device", text)
        elif name == "attn_implementation" and text.lower() != "none":
            out["attn_implementation"] = text
    if frames["max_num_frames"] < 1 or frames["min_pixels"] < 1 or frames["max_pixels"] < frames["min_pixels"]:
        raise ValueError(f"max_num_frames must be >= 1 and 1 <= min_pixels <= max_pixels, got {frames}")
    out["qwen_frames"] = frames
    return out
