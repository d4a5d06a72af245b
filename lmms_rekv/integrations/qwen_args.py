"""lmms-eval ``qwen2_5_vl`` / ``qwen3_vl`` model_args, as ``rekv`` takes them (the one-word switch).

``--model qwen2_5_vl --model_args ARGS`` -> ``--model rekv --model_args ARGS[,ReKV fields]``, and
likewise ``qwen3_vl``. Both names resolve to lmms-eval's *chat* classes
(``models/chat/qwen2_5_vl.py``, ``models/chat/qwen3_vl.py``; the simple ones only with
``--force_simple``), so those are the reference: which one follows from the checkpoint's family
(Qwen2-VL / Qwen2.5-VL -> ``qwen2_5_vl``, Qwen3-VL -> ``qwen3_vl``), and each of its arguments is
honoured *as it honours it* or refused with a one-line reason. Frames are read and resized by
qwen-vl-utils as that class asks (``lmms_rekv.integrations.qwen_frames``); the prompt is the
chat template's own -- ``qwen2_5_vl`` sends no system message, ``qwen3_vl`` sends
``system_prompt`` and passes ``enable_thinking`` to the template (and keeps only the text after
``</think>`` when it is true); answers are not cut at ``until`` and default to 128 new tokens.
``ARGS`` is the table docs/lmms-eval.md shows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

from lmms_rekv.args import ONE_DEVICE, is_device

DEFAULT_MIN_PIXELS = 256 * 28 * 28  # both classes' defaults
DEFAULT_MAX_PIXELS = 1605632
DEFAULT_MAX_FRAMES = 32
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_MAX_NEW_TOKENS = 128  # the chat classes' default when a task sets none

#: checkpoint ``model_type`` -> the lmms-eval model whose arguments apply to it
REFERENCE = {"qwen2_vl": "qwen2_5_vl", "qwen2_5_vl": "qwen2_5_vl", "qwen3_vl": "qwen3_vl", "qwen3_vl_moe": "qwen3_vl"}
FAMILIES = tuple(REFERENCE)

#: name -> (values accepted, None = any; what rekv does with it)
ARGS: Dict[str, Tuple[Optional[Tuple[str, ...]], str]] = {
    "pretrained": (None, "loaded (Qwen2-VL / Qwen2.5-VL: `qwen2_5_vl`'s arguments; Qwen3-VL: `qwen3_vl`'s)"),
    "device": (None, "the device the model runs on"),
    "device_map": (None, "the one device the model runs on (`auto`: cuda:LOCAL_RANK if available, else cpu)"),
    "batch_size": (("1",), "one stream at a time"),
    "use_cache": (("true",), "ReKV always caches (it is the method)"),
    "attn_implementation": (("none", "sdpa", "eager", "flash_attention_2"), "the vision tower's attention (the language model's is ReKV's)"),
    "min_pixels": (None, "the processor's and qwen-vl-utils' lower pixel bound per frame"),
    "max_pixels": (None, "the processor's and qwen-vl-utils' upper pixel bound per frame"),
    "max_num_frames": (None, "`qwen2_5_vl`: qwen-vl-utils reads `min(max_num_frames, frames in the file)` frames, floored to "
                             "an even count; `qwen3_vl`: `max_num_frames` frames (with `fps` or `total_pixels`: at most that many)"),
    "fps": (None, "qwen-vl-utils samples at this rate (unset: `max_num_frames` frames)"),
    "total_pixels": (None, "`qwen3_vl` only: qwen-vl-utils' pixel budget for the whole clip (frames sized to share it)"),
    "system_prompt": (None, "`qwen3_vl`: the system message before every question; `qwen2_5_vl`: accepted and unused, as there"),
    "enable_thinking": (("none", "true", "false"), "`qwen3_vl` only: passed to the chat template; when true only the text after "
                                                   "`</think>` is kept"),
    "interleave_visuals": (("false",), "the video comes before the question"),
    "reasoning_prompt": (None, "accepted and unused, as by lmms-eval's chat classes"),
}

#: why a refused value is refused
REFUSED = {
    "batch_size": "rekv answers one stream at a time",
    "use_cache": "ReKV cannot run without its KV cache",
    "attn_implementation": "not an attention implementation of transformers",
    "interleave_visuals": "interleaving images with the text is not implemented (one video per question)",
}

#: ``qwen3_vl``'s arguments that ``qwen2_5_vl`` does not have
QWEN3_ONLY = ("total_pixels", "enable_thinking")

#: the arguments that say "these are lmms-eval Qwen model_args"
MARKERS = ("min_pixels", "max_pixels", "max_num_frames", "system_prompt", "interleave_visuals", "reasoning_prompt",
           "total_pixels", "enable_thinking")


@dataclass
class QwenArgs:
    """What lmms-eval's ``reference`` model (``qwen2_5_vl`` or ``qwen3_vl``) would do with its
    arguments: frame sampling, pixel bounds, prompt."""

    reference: str = "qwen2_5_vl"
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    total_pixels: Optional[int] = None
    max_num_frames: int = DEFAULT_MAX_FRAMES
    fps: Optional[float] = None
    system_prompt: Optional[str] = DEFAULT_SYSTEM_PROMPT  # sent by qwen3_vl only
    enable_thinking: Optional[bool] = None
    device: Optional[str] = None
    attn_implementation: Optional[str] = None

    @property
    def sampling(self) -> Dict[str, object]:
        """The settings that decide which frames, at which size (part of a cache key)."""
        keys = ("reference", "min_pixels", "max_pixels", "total_pixels", "max_num_frames", "fps")
        return {k: v for k, v in asdict(self).items() if k in keys}

    @property
    def system_message(self) -> Optional[str]:
        """The system message the reference sends (``qwen2_5_vl``: none, the template's default)."""
        return self.system_prompt if self.reference == "qwen3_vl" else None

    @property
    def template_kwargs(self) -> Dict[str, object]:
        return {"enable_thinking": self.enable_thinking} if self.enable_thinking is not None else {}

    def final_answer(self, text: str) -> str:
        """The answer as the reference returns it (``enable_thinking``: the text after ``</think>``)."""
        return text.partition("</think>")[2].strip() if self.enable_thinking else text


def wants_qwen(args: Dict[str, object]) -> bool:
    """Whether ``args`` are lmms-eval Qwen model_args (one of their own names is present)."""
    return any(name in args for name in MARKERS)


def _bool(text: str) -> Optional[bool]:
    return None if text.lower() == "none" else text.lower() == "true"


def translate(args: Dict[str, object], model_type: str) -> Tuple[QwenArgs, Dict[str, object]]:
    """What the Qwen arguments among ``args`` mean for a checkpoint of ``model_type``, and the
    other arguments (``args`` is not changed). Unset ones take lmms-eval's defaults. Raises
    ValueError with a one-line reason for a refused value or another family."""
    if model_type not in REFERENCE:
        raise ValueError(f"lmms-eval Qwen model_args ({', '.join(n for n in MARKERS if n in args)}) need a Qwen2-VL, "
                         f"Qwen2.5-VL or Qwen3-VL checkpoint, not model_type={model_type!r}")
    out = QwenArgs(reference=REFERENCE[model_type])
    rest = {k: v for k, v in args.items() if k not in ARGS or k == "pretrained"}
    for name in [n for n in args if n in ARGS and n != "pretrained"]:
        text = str(args[name]).strip()
        allowed, _ = ARGS[name]
        if name in QWEN3_ONLY and out.reference != "qwen3_vl":
            raise ValueError(f"{name} is not an argument of lmms-eval's qwen2_5_vl (it is qwen3_vl's, for Qwen3-VL checkpoints)")
        if allowed is not None and text.lower() not in allowed:
            reason = REFUSED.get(name, f"one of {', '.join(allowed)}")
            raise ValueError(f"{name}={text!r} is not supported by rekv: {reason}")
        _apply(out, name, text)
    if out.max_num_frames < 1 or out.min_pixels < 1 or out.max_pixels < out.min_pixels:
        raise ValueError(f"max_num_frames must be >= 1 and 1 <= min_pixels <= max_pixels, got {out.max_num_frames}, "
                         f"{out.min_pixels}, {out.max_pixels}")
    return out, rest


def _apply(out: QwenArgs, name: str, text: str) -> None:
    """Set one accepted argument on ``out``."""
    none = text.lower() in ("none", "")
    if name in ("min_pixels", "max_pixels", "max_num_frames"):
        setattr(out, name, int(float(text)))
    elif name == "total_pixels":
        out.total_pixels = None if none else int(float(text))
    elif name == "fps":
        out.fps = None if none else float(text)
    elif name == "system_prompt":
        out.system_prompt = None if none else text
    elif name == "enable_thinking":
        out.enable_thinking = _bool(text)
    elif name in ("device", "device_map"):
        if not is_device(text):
            raise ValueError(f"{name}={text!r} is not supported by rekv: {ONE_DEVICE}")
        out.device = out.device or text
    elif name == "attn_implementation" and not none:
        out.attn_implementation = text
