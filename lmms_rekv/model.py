"""`ReKVLlavaOneVision`: a loaded LLaVA-OneVision checkpoint plus the ReKV engine."""

from __future__ import annotations

import json
import logging
import math
import os
from typing import List, Optional, Sequence, Tuple, Union

import torch

from .attention import Rope
from .config import ReKVConfig
from .generation import GenerationSettings
from .preprocess import FrameProcessor

logger = logging.getLogger(__name__)

DTypeLike = Union[str, torch.dtype, None]


def resolve_dtype(dtype: DTypeLike, device: torch.device) -> torch.dtype:
    """``None``/"auto" -> fp16 on CUDA, fp32 elsewhere; names like "bfloat16" or "bf16" accepted."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    names = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}
    name = names.get(str(dtype), str(dtype))
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"unknown dtype {dtype!r}")
    return value


def resolve_source(path_or_id: str) -> str:
    """A local directory for ``path_or_id``: the path itself, ``"miniature"`` (the shipped
    trained miniature), or the hub snapshot of an id."""
    if os.path.isdir(path_or_id):
        return path_or_id
    if path_or_id == "miniature":  # the trained miniature shipped with the package
        from .miniature import shipped_path

        return shipped_path()
    if path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") > 1 or os.path.exists(path_or_id):
        raise FileNotFoundError(f"model directory not found: {path_or_id!r}")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path_or_id)
    except Exception as exc:  # offline, unknown repo, ...
        raise FileNotFoundError(
            f"{path_or_id!r} is not a local directory and could not be fetched from the hub: {exc}"
        ) from exc


def load_chat_template(path: str, tokenizer) -> str:
    """The processor's chat template (``chat_template.jinja``/``.json``), else the tokenizer's."""
    jinja = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja) as fh:
            return fh.read()
    for name in ("chat_template.json", "processor_config.json"):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            with open(file) as fh:
                template = json.load(fh).get("chat_template")
            if template:
                return template
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    raise ValueError(f"no chat template found in {path} (chat_template.jinja, chat_template.json or tokenizer)")


def render_prompt(tokenizer, chat_template: str, question: str) -> str:
    """A chat template rendered for one user turn ``[video, question]`` + generation prompt."""
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    return tokenizer.apply_chat_template(conversation, chat_template=chat_template, add_generation_prompt=True, tokenize=False)


def split_prompt(tokenizer, chat_template: str, question: str, video_token: str = "<video>") -> Tuple[str, str]:
    """(text before the video token, text after it) of the rendered prompt."""
    text = render_prompt(tokenizer, chat_template, question)
    if text.count(video_token) != 1:
        raise ValueError(f"chat template must place exactly one {video_token} in the prompt: {text!r}")
    before, after = text.split(video_token)
    return before, after


class ReKVLlavaOneVision:
    """LLaVA-OneVision with ReKV streaming video QA. Create sessions with ``new_session()``."""

    def __init__(self, model, tokenizer, chat_template: str, processor: FrameProcessor, config: ReKVConfig, source: str = ""):
        from lmms_rekv.patches import patch_for

        self.model, self.tokenizer, self.chat_template, self.processor = model, tokenizer, chat_template, processor
        self.source = source
        self.language_model = model.model.language_model
        vision = model.config.vision_config
        grid = vision.image_size // vision.patch_size
        self.frame_tokens = math.ceil(grid / 2) ** 2
        text = model.config.text_config
        self.config = config.for_model(self.frame_tokens, getattr(text, "max_position_embeddings", None))
        self.video_token = tokenizer.convert_ids_to_tokens(model.config.video_token_id)
        self.patch = patch_for(model)
        self.rope = Rope(self.language_model)
        self._prefix_ids: Optional[List[int]] = None
        self._embedder = None

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str,
        config: Optional[ReKVConfig] = None,
        dtype: DTypeLike = None,
        device: Union[str, torch.device, None] = None,
        **model_kwargs,
    ) -> "ReKVLlavaOneVision":
        """Load a llava-hf LLaVA-OneVision directory or hub id (config.json, safetensors,
        tokenizer files, chat template, preprocessor_config.json)."""
        from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration

        config = config or ReKVConfig()
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = resolve_dtype(dtype, device)
        path = resolve_source(path_or_id)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"{path} has no config.json: not a model directory")
        model = LlavaOnevisionForConditionalGeneration.from_pretrained(path, dtype=dtype, **model_kwargs)
        model.to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        template = load_chat_template(path, tokenizer)
        processor = FrameProcessor.from_dir(path, model.config.vision_config.image_size)
        logger.info("loaded %s (%s, %s)", path_or_id, dtype, device)
        engine = cls(model, tokenizer, template, processor, config, source=path_or_id)
        if engine.config.uses_embeddings:
            engine.embedder  # load the open_clip model now: a missing extra fails here, not mid-stream
        return engine

    def with_config(self, config: ReKVConfig) -> "ReKVLlavaOneVision":
        """Another engine over the same loaded weights with different ReKV settings."""
        return type(self)(self.model, self.tokenizer, self.chat_template, self.processor, config, source=self.source)

    @property
    def embedder(self):
        """The external-retrieval embedder, loaded once per engine on first use."""
        if self._embedder is None:
            from .embedder import ClipEmbedder

            cfg = self.config
            self._embedder = ClipEmbedder(cfg.clip_model, cfg.clip_pretrained, self.device, cfg.clip_batch_size)
        return self._embedder

    @embedder.setter
    def embedder(self, value) -> None:
        self._embedder = value

    def new_session(self):
        """A new stream with its own KV store."""
        from .session import ReKVSession

        return ReKVSession(self)

    def open_session(self, folder: str):
        """A session reopened from a folder written by ``session.save`` (checksums verified)."""
        from .persist import load_session

        return load_session(self, folder)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    # -- prompts --------------------------------------------------------------------------
    def render(self, question: str) -> str:
        """The model's chat template for one user turn ``[video, question]`` + generation prompt."""
        return render_prompt(self.tokenizer, self.chat_template, question)

    def split_prompt(self, question: str) -> Tuple[str, str]:
        """(text before the video token, text after it) of the rendered prompt."""
        return split_prompt(self.tokenizer, self.chat_template, question, self.video_token)

    def tokenize(self, text: str) -> List[int]:
        """Token ids of ``text`` without special tokens added."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_prefix_ids(self) -> List[int]:
        """Tokens before the video (the sinks); independent of the question."""
        if self._prefix_ids is None:
            self._prefix_ids = self.tokenize(self.split_prompt("?")[0])
        return self._prefix_ids

    def prompt_suffix_ids(self, question: str) -> List[int]:
        """Tokens after the video: the question and the rest of the template."""
        before, after = self.split_prompt(question)
        if self.tokenize(before) != self.prompt_prefix_ids():
            raise ValueError("the chat template's text before the video depends on the question")
        return self.tokenize(after)

    def question_span(self, question: str) -> Tuple[int, int]:
        """``(start, end)``: the tokens of ``prompt_suffix_ids(question)`` that overlap the
        question's own text (the rest is chat template)."""
        after = self.split_prompt(question)[1]
        at = after.find(question)
        if at < 0:
            raise ValueError("the chat template does not render the question verbatim")
        offsets = self.tokenizer(after, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        inside = [i for i, (a, b) in enumerate(offsets) if a < at + len(question) and b > at]
        return inside[0], inside[-1] + 1

    def vanilla_input_ids(self, question: str, frames: int) -> torch.Tensor:
        """``(1, T)`` prompt ids as vanilla LLaVA-OV sees them (``<video>`` expanded to
        ``frames * frame_tokens + 1`` video tokens)."""
        video = [self.model.config.video_token_id] * (frames * self.frame_tokens + 1)
        ids = self.prompt_prefix_ids() + video + self.prompt_suffix_ids(question)
        return torch.tensor([ids], device=self.device)

    # -- model pieces ---------------------------------------------------------------------
    def frame_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` pixels -> ``(1, N * frame_tokens, hidden)`` visual tokens (no newline)."""
        out = self.model.model.get_video_features(pixel_values_videos=pixels[None])
        return out.pooler_output[:, :-1]

    def newline_embedding(self) -> torch.Tensor:
        """``(1, 1, hidden)`` the video's ``image_newline``."""
        return self.model.model.image_newline.to(self.dtype)[None, None]

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        """``(1, T, hidden)`` token embeddings."""
        ids_t = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        return self.language_model.embed_tokens(ids_t)

    def generation_settings(self, **kwargs) -> GenerationSettings:
        """Settings with the model's EOS tokens unless ``eos_token_ids`` is given."""
        if kwargs.get("eos_token_ids") is None:
            kwargs["eos_token_ids"] = tuple(self._eos_ids())
        else:
            kwargs["eos_token_ids"] = tuple(kwargs["eos_token_ids"])
        if isinstance(kwargs.get("stop"), str):
            kwargs["stop"] = (kwargs["stop"],)
        elif kwargs.get("stop") is not None:
            kwargs["stop"] = tuple(kwargs["stop"])
        else:
            kwargs.pop("stop", None)
        return GenerationSettings(**kwargs)

    def _eos_ids(self) -> List[int]:
        ids = set()
        for source in (self.model.generation_config, self.model.config.text_config, self.tokenizer):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return sorted(ids)
