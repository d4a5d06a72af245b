"""The facade: ``ReKV`` -- a loaded checkpoint, its family adapter (``lmms_rekv.patches``)
and the ReKV settings; sessions (``lmms_rekv.engine``) are created from it."""

from __future__ import annotations

import logging
import os
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch

from .config import ReKVConfig
from .engine.generation import GenerationSettings

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


def check_source(path_or_id: str) -> None:
    """Raise FileNotFoundError (one line) when ``path_or_id`` cannot be a checkpoint, without
    loading or downloading anything: a folder without ``config.json``, a path that does not
    exist, or -- offline (``HF_HUB_OFFLINE=1``) -- a hub id not in the local cache."""
    if path_or_id == "miniature":
        return
    if os.path.isdir(path_or_id):
        model_type_of(path_or_id)  # has a config.json
        return
    if path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") > 1 or os.path.exists(path_or_id):
        raise FileNotFoundError(f"model directory not found: {path_or_id!r}")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(path_or_id, "config.json"), str):
            raise FileNotFoundError(f"{path_or_id!r} is not a local directory and not in the Hugging Face cache "
                                    "(HF_HUB_OFFLINE is set: nothing is downloaded)")


def model_type_of(path: str) -> str:
    """``model_type`` from a checkpoint folder's ``config.json``."""
    import json

    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path} has no config.json: not a model directory")
    with open(file) as fh:
        return json.load(fh).get("model_type", "")


class ReKV:
    """A loaded checkpoint with ReKV streaming video QA; the family (LLaVA-OneVision, ...)
    comes from the checkpoint. Create streams with ``new_session()``."""

    #: model types this class accepts (``None``: every family in ``lmms_rekv.patches``)
    families: Optional[Tuple[str, ...]] = None

    def __init__(self, model, tokenizer, chat_template: str, processor: Any, config: ReKVConfig, source: str = "",
                 system_prompt: Optional[str] = None, chat_template_kwargs: Optional[dict] = None):
        from .patches import backbone_for

        self.backbone = backbone_for(model, tokenizer, chat_template, processor, frame_size=config.frame_size,
                                     system_prompt=system_prompt or None, template_kwargs=chat_template_kwargs or None)
        self.system_prompt, self.chat_template_kwargs = system_prompt, chat_template_kwargs
        self.backbone.check_strategy(config.position_strategy)
        self.model, self.tokenizer, self.chat_template, self.processor = model, tokenizer, chat_template, processor
        self.source = source
        self.block_tokens = self.backbone.block_tokens  # tokens per stored block (a temporal patch)
        text = model.config.text_config
        self.config = config.for_model(self.block_tokens, getattr(text, "max_position_embeddings", None))
        self._embedder = None

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str,
        config: Optional[ReKVConfig] = None,
        dtype: DTypeLike = None,
        device: Union[str, torch.device, None] = None,
        conv_template: Optional[str] = None,
        save_converted: Optional[str] = None,
        processor_kwargs: Optional[dict] = None,
        system_prompt: Optional[str] = None,
        chat_template_kwargs: Optional[dict] = None,
        **model_kwargs,
    ) -> "ReKV":
        """Load a checkpoint directory or hub id (config.json, safetensors, tokenizer files,
        chat template, preprocessor config); the family adapter is picked by the
        checkpoint's ``model_type``. lmms-lab (LLaVA-NeXT) LLaVA-OneVision checkpoints are
        converted first (``lmms_rekv.io.lmms_lab``; into ``save_converted``, default a cache
        folder, once). ``conv_template`` (``"qwen_1_5"``) replaces the checkpoint's chat
        template with that conversation template (lmms-lab checkpoints get it by default).
        Qwen families: ``processor_kwargs`` go to ``AutoProcessor.from_pretrained`` (e.g.
        ``min_pixels``/``max_pixels``), ``system_prompt`` is a system message before every
        question (None: the template's default), ``chat_template_kwargs`` go to the template
        (e.g. ``enable_thinking``)."""
        from .io.lmms_lab import CONV_TEMPLATES, convert, is_lmms_lab
        from .patches import backbone_class

        config = config or ReKVConfig()
        if conv_template is not None and conv_template not in CONV_TEMPLATES:
            raise ValueError(f"conv_template={conv_template!r} is not supported (only {sorted(CONV_TEMPLATES)})")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = resolve_dtype(dtype, device)
        path = resolve_source(path_or_id)
        if is_lmms_lab(path):
            path = convert(path, save_converted, conv_template or "qwen_1_5")
        model_type = model_type_of(path)
        if cls.families is not None and model_type not in cls.families:
            raise ValueError(f"{cls.__name__} loads {', '.join(cls.families)} checkpoints, not model_type={model_type!r}; "
                             "use lmms_rekv.ReKV.from_pretrained for any supported family")
        if processor_kwargs:
            model_kwargs["processor_kwargs"] = processor_kwargs
        model, tokenizer, template, processor = backbone_class(model_type).load(path, dtype, **model_kwargs)
        if conv_template is not None:
            template = CONV_TEMPLATES[conv_template]
        model.to(device).eval()
        logger.info("loaded %s (%s, %s, %s)", path_or_id, model_type, dtype, device)
        engine = cls(model, tokenizer, template, processor, config, source=path_or_id, system_prompt=system_prompt,
                     chat_template_kwargs=chat_template_kwargs)
        if engine.config.uses_embeddings:
            engine.embedder  # load the open_clip model now: a missing extra fails here, not mid-stream
        return engine

    @property
    def frame_tokens(self) -> int:
        """Deprecated name of ``block_tokens`` (a block is 2 frames on Qwen)."""
        import warnings

        warnings.warn("ReKV.frame_tokens is deprecated; use block_tokens (tokens per stored block)", DeprecationWarning, stacklevel=2)
        return self.block_tokens

    def with_config(self, config: ReKVConfig) -> "ReKV":
        """Another engine over the same loaded weights with different ReKV settings."""
        return type(self)(self.model, self.tokenizer, self.chat_template, self.processor, config, source=self.source,
                          system_prompt=self.system_prompt, chat_template_kwargs=self.chat_template_kwargs)

    @property
    def embedder(self):
        """The external-retrieval embedder, loaded once per engine on first use."""
        if self._embedder is None:
            from .retrieval.embedder import ClipEmbedder

            cfg = self.config
            self._embedder = ClipEmbedder(cfg.clip_model, cfg.clip_pretrained, self.device, cfg.clip_batch_size)
        return self._embedder

    @embedder.setter
    def embedder(self, value) -> None:
        self._embedder = value

    def new_session(self, fps: Optional[float] = None, frames: Optional[int] = None,
                    frame_size: Optional[Tuple[int, int]] = None, frame_times: Optional[Sequence[float]] = None):
        """A new stream with its own KV store. ``fps``: the rate the stream's frames were
        sampled at (frames per second); families whose positions encode time (Qwen2.5-VL)
        need it. Qwen families size a stream's frames as their processor would, from its first
        frame; ``frames``: how many frames the stream will have, when known (Qwen3-VL's
        processor budgets pixels per clip); ``frame_size``: ``(height, width)`` for this stream
        instead (``ReKVConfig.frame_size`` sets it for every stream); ``frame_times``: the
        seconds each frame was taken at, when not evenly spaced at ``fps`` (Qwen3-VL writes
        block times into the prompt from them, as its processor does from video metadata;
        frames past them continue at ``fps``)."""
        from .engine.session import ReKVSession

        return ReKVSession(self, fps=fps, frames=frames, frame_size=frame_size, frame_times=frame_times)

    def open_session(self, folder: str):
        """A session reopened from a folder written by ``session.save`` (checksums verified).

        Raises ``FileNotFoundError`` when ``folder`` does not exist, ``CorruptSegmentError`` when
        a file of it is missing, truncated or altered, and ``ValueError`` when the entry was
        written with other settings."""
        from .storage.persist import read_entry

        entry = read_entry(folder)
        info, size = entry.info, entry.info.get("frame_size")
        session = self.new_session(fps=info.get("fps"), frame_size=tuple(size) if size else None, frame_times=info.get("frame_times"))
        try:
            state = entry.state(self.device)
            entry.fill(session.state.store)
            session.restore_state(state, info["stream_tokens"])
        except BaseException:
            session.close()
            raise
        session.saved_meta = info.get("meta", {})
        return session

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def patch(self):
        """The attention routing of the text tower (``with engine.patch.routed(handler):``)."""
        return self.backbone.routing

    @property
    def language_model(self):
        return self.backbone.text_model

    # -- prompts --------------------------------------------------------------------------
    def tokenize(self, text: str) -> List[int]:
        """Token ids of ``text`` without special tokens added."""
        return self.backbone.tokenize(text)

    def prompt_suffix_ids(self, question: str) -> List[int]:
        """Tokens after the video: the question and the rest of the template."""
        return self.backbone.prompt.suffix_ids(question)

    def vanilla_input_ids(self, question: str, frames: int) -> torch.Tensor:
        """``(1, T)`` prompt ids as the vanilla model sees them for ``frames`` frames."""
        return self.backbone.vanilla_input_ids(question, frames)

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


class ReKVLlavaOneVision(ReKV):
    """``ReKV`` restricted to LLaVA-OneVision checkpoints (the original entry point)."""

    families = ("llava_onevision",)
