"""The upstream lmms-eval model whose ``--model_args`` a run was given, chosen once at load.

``rekv`` takes its own arguments and, as a drop-in, those of lmms-eval's ``llava_onevision``,
``qwen2_5_vl`` or ``qwen3_vl`` (``llava_ov_args``, ``qwen_args``). What each upstream model
would do differently -- how it samples frames, which dtype and processor bounds it loads with,
whether it cuts answers at ``until``, how many tokens it generates by default, what it keeps of
an answer -- is one object here (`Native`, `LlavaOneVision`, `Qwen`), so the runner and the
lmms-eval class hold no family branches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from . import qwen_args
from .llava_ov_args import translate as translate_llava_ov
from .streams import Sampling, UniformFrames


@dataclass(frozen=True)
class RunSettings:
    """The runner's own model args (what they mean: ``ReKVLlavaOV``'s docstring); read from text
    by ``lmms_rekv.args.build`` like every other setting."""

    fps: float = 0.5
    max_frames: Optional[int] = field(default=None, metadata={"none": ("none", "null", "all", "")})
    max_new_tokens: int = 16
    doc_timeout: Optional[float] = field(default=3600.0, metadata={"none": ("none", "null", "")})  # 0: no limit (__post_init__)
    reuse_streams: bool = True
    stream_tolerance: float = 0.0
    cache_dir: Optional[str] = field(default=None, metadata={"none": ("none", "null", "")})

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.stream_tolerance < 0:
            raise ValueError(f"stream_tolerance must be >= 0 (pixel levels), got {self.stream_tolerance}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1 or all, got {self.max_frames}")
        if self.doc_timeout == 0:  # "0" or 0 (lmms-eval turns the text into a number): no limit
            object.__setattr__(self, "doc_timeout", None)
        if self.cache_dir:
            object.__setattr__(self, "cache_dir", os.path.expanduser(str(self.cache_dir)))


@dataclass
class Native:
    """No upstream arguments: ``rekv``'s own defaults (the time grid at ``fps``, the checkpoint's
    dtype, answers cut at ``until``)."""

    name = "rekv"
    device: Optional[str] = None
    load_kwargs: Dict[str, Any] = field(default_factory=dict)
    cuts_at_until = True
    default_max_new_tokens: Optional[int] = None  # None: the model's ``max_new_tokens`` arg
    default_max_frames: Optional[int] = None  # the cap of the time grid when none is given (llava_onevision's)

    def dtype(self, requested: str) -> str:
        """The dtype to load with when ``requested`` (the ``dtype`` arg) may be ``auto``."""
        return requested

    def sampling(self, engine, run: RunSettings) -> Tuple[Sampling, bool]:
        """How files are read into sessions, and whether a continuing file extends a stream."""
        backbone = engine.backbone
        size_for = None
        if backbone.sizes_by_clip:  # Qwen3-VL: the size depends on the frame count
            size_for = backbone.stream_size
        sampling = Sampling(engine.new_session, run.fps, run.max_frames, engine.config.chunk_frames, run.doc_timeout,
                            run.stream_tolerance, size_for=size_for, keep_prints=run.reuse_streams, uniform=self.uniform(run))
        return sampling, run.reuse_streams

    def uniform(self, run: RunSettings) -> Optional[UniformFrames]:
        """llava_onevision's index rule, where it applies (see `LlavaOneVision`)."""
        return None

    def sampling_key(self, run: RunSettings) -> Optional[dict]:
        """How frames are sampled when not by ``fps``/``max_frames`` (part of a cache key)."""
        return None

    def final_answer(self, text: str) -> str:
        return text


@dataclass
class LlavaOneVision(Native):
    """lmms-eval ``llava_onevision``'s arguments given (``llava_ov_args``): its frame count at
    ``np.linspace`` unless ``fps``/``max_frames`` ask for the time grid, float16 unless ``dtype``."""

    name = "llava_onevision"
    uniform_frames: int = 32
    decode_backend: str = "decord"
    by_time: bool = False  # fps= or max_frames= given: the time grid instead of its index rule

    def dtype(self, requested: str) -> str:
        return "float16" if str(requested) == "auto" else requested

    def uniform(self, run: RunSettings) -> Optional[UniformFrames]:
        return None if self.by_time else UniformFrames(self.uniform_frames, self.decode_backend)

    def sampling_key(self, run: RunSettings) -> Optional[dict]:
        found = self.uniform(run)
        return None if found is None else {"uniform": found.count, "backend": found.backend}


@dataclass
class Qwen(Native):
    """lmms-eval ``qwen2_5_vl``'s or ``qwen3_vl``'s arguments given (``qwen_args``): frames read
    by qwen-vl-utils as that class reads them, each file its own stream, its processor bounds
    and prompt, bfloat16 unless ``dtype``, no cut at ``until``, 128 new tokens by default."""

    args: qwen_args.QwenArgs = field(default_factory=qwen_args.QwenArgs)
    cuts_at_until = False
    default_max_new_tokens: Optional[int] = qwen_args.DEFAULT_MAX_NEW_TOKENS

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.args.reference

    def dtype(self, requested: str) -> str:
        return "bfloat16" if str(requested) == "auto" else requested

    def sampling(self, engine, run: RunSettings) -> Tuple[Sampling, bool]:
        from .qwen_frames import QwenSampling

        return QwenSampling(engine.new_session, run.fps, None, engine.config.chunk_frames, run.doc_timeout,
                            keep_prints=False, args=self.args), False

    def sampling_key(self, run: RunSettings) -> Optional[dict]:
        return self.args.sampling

    def final_answer(self, text: str) -> str:
        return self.args.final_answer(text)


def choose(pretrained: str, args: Dict[str, Any], fps: Optional[float], max_frames: Optional[int]) -> Tuple[Native, Dict[str, Any]]:
    """The upstream whose arguments are among ``args``, for the checkpoint's family (read before
    loading), and the arguments left (``ReKVConfig`` fields); ``args`` is not changed. Raises
    ValueError with a one-line reason."""
    load: Dict[str, Any] = {}
    rest = {k: v for k, v in args.items() if k != "save_converted"}
    if args.get("save_converted") is not None:  # where an lmms-lab checkpoint's conversion is kept
        load["save_converted"] = os.path.expanduser(str(args["save_converted"]))
    if qwen_args.wants_qwen(rest):
        args, rest = qwen_args.translate(rest, _model_type(pretrained))
        if fps is not None:  # their own `fps` (qwen-vl-utils' sampling rate)
            args.fps = float(fps)
        load.update(processor_kwargs={"min_pixels": args.min_pixels, "max_pixels": args.max_pixels},
                    system_prompt=args.system_message, chat_template_kwargs=args.template_kwargs or None)
        if args.attn_implementation is not None:
            load["attn_implementation"] = args.attn_implementation
        return Qwen(device=args.device, load_kwargs=load, args=args), rest
    ov, rest = translate_llava_ov(rest)  # llava_onevision's model_args (drop-in): honoured or refused
    load.update({k: ov[k] for k in ("conv_template", "attn_implementation") if k in ov})
    if "uniform_frames" not in ov:
        return Native(device=ov.get("device"), load_kwargs=load), rest
    return LlavaOneVision(device=ov.get("device"), load_kwargs=load, uniform_frames=int(ov["uniform_frames"]),
                          decode_backend=str(ov["decode_backend"]), by_time=fps is not None or max_frames is not None,
                          default_max_frames=ov.get("max_frames")), rest


def _model_type(pretrained: str) -> str:
    from lmms_rekv.model import model_type_of

    if os.path.isdir(str(pretrained)):
        return model_type_of(str(pretrained))
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(pretrained)).model_type
