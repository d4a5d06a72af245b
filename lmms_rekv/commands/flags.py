"""One flag vocabulary for the ``rekv`` commands: each ``ReKVConfig`` field ``name`` is the flag
``--name-with-dashes`` (``topk_frames`` -> ``--topk-frames``), parsed and validated as
``ReKVConfig.from_strings`` parses model args -- before any model is loaded -- and the checks
every command shares (device, a video source) live here too."""

from __future__ import annotations

import argparse
import os
from typing import Dict, Iterable, Optional

#: help of the fields the commands expose (the rest: see ``ReKVConfig``)
HELP: Dict[str, str] = {
    "window_tokens": "sliding-window tokens while encoding (none = unbounded)",
    "topk_frames": "blocks retrieved per question (a block: 1 frame on LLaVA-OV, 2 on Qwen; none = every block)",
    "chunk_frames": "most frames per encoding forward, and the commit grid",
    "retrieval": "internal (the model's own keys), external (open_clip; --clip-model miniature for the miniature) or hybrid",
    "clip_model": "open_clip model for external/hybrid retrieval ('miniature': the embedder shipped with the miniature)",
    "offload": "where every block's KV goes: cpu, device or disk",
    "kv_quant": "int8 or int4: offloaded KV stored quantized (none = exact)",
    "summary_tier": "where the retrieval index lives: device or cpu",
    "score": "dot or cosine",
    "token_reduction": "temporal, salient or merge: each block cut to --token-keep of its tokens before offload (LLaVA-OV)",
    "token_keep": "fraction of a block's tokens kept with --token-reduction (default 0.5)",
    "recent_frames": "the latest blocks always in the answer's context, inside --topk-frames (default 1: questions about now; 0: retrieval alone)",
    "hub_correction": "center or template: internal retrieval stops favouring blocks every question ranks high",
}

#: the fields ``rekv live`` / ``demo`` / ``bench`` take as flags
COMMON = ("window_tokens", "topk_frames", "chunk_frames", "retrieval", "clip_model", "offload", "kv_quant", "summary_tier", "score",
          "token_reduction", "token_keep", "recent_frames", "hub_correction")


class Parser(argparse.ArgumentParser):
    """The ``rekv`` commands' parser: no abbreviations (``--topk`` is not silently
    ``--topk-frames``), and an unknown flag is reported with the closest ones (exit 2)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        for text in ("description", "epilog"):  # docstrings' ``code`` markup, shown as plain text
            if kwargs.get(text):
                kwargs[text] = kwargs[text].replace("``", "")
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):  # noqa: D102
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            from lmms_rekv.args import did_you_mean

            flags = [f for f in self._option_string_actions if f.startswith("--")]
            unknown = [a for a in extra if a.startswith("-")] or extra
            self.error("unrecognized arguments: " + " ".join(extra) + "".join(did_you_mean(a.split("=")[0], flags)
                                                                            for a in unknown[:1] if a.startswith("-")))
        return parsed

    def error(self, message: str):
        """One line on stderr (not argparse's usage block) and exit status 2."""
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def flag(field: str) -> str:
    """``--field-with-dashes`` for a ``ReKVConfig`` field."""
    return "--" + field.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, fields: Iterable[str] = COMMON,
                     defaults: Optional[Dict[str, str]] = None, aliases: Optional[Dict[str, str]] = None) -> None:
    """Add ``--field`` for each ``ReKVConfig`` field (value kept as text, parsed by
    ``config_from``; unset: None). ``defaults``: this command's default per field, as shown in
    its help (the command applies it);
    ``aliases``: former flag -> field, accepted and hidden from the help."""
    defaults = defaults or {}
    group = parser.add_argument_group("ReKV settings (ReKVConfig fields)")
    for field in fields:
        shown = f" (default {defaults[field]})" if field in defaults else ""
        group.add_argument(flag(field), dest=field, default=None, metavar=field.split("_")[-1].upper(),
                           help=HELP.get(field, f"ReKVConfig.{field}") + shown)
    for old, field in (aliases or {}).items():
        group.add_argument(old, dest=field, help=argparse.SUPPRESS)


def config_from(args: argparse.Namespace, fields: Iterable[str] = COMMON, **fixed):
    """The ``ReKVConfig`` of the parsed flags (unset ones: the field's default) plus ``fixed``
    values; raises ValueError with the flag's name for a bad value."""
    from lmms_rekv import ReKVConfig

    values = {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
    try:
        return ReKVConfig.from_strings(**values, **fixed)
    except ValueError as exc:
        text = str(exc)
        named = next((f for f in values if text.startswith(f)), None)  # "topk_frames must be ..." -> "--topk-frames must be ..."
        raise ValueError(text if named is None else flag(named) + text[len(named):]) from None


def check_device(device: Optional[str]) -> None:
    """Refuse a device this machine does not have, before a model is loaded."""
    from lmms_rekv.args import is_device

    if device in (None, "", "auto"):
        return
    if not is_device(device):
        raise ValueError(f"--device {device!r} is not a device (cpu, cuda, cuda:N, mps)")
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device on this machine (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available on this machine")


def is_url(source: str) -> bool:
    return "://" in source


def check_source(source: str) -> None:
    """Refuse a local video path that does not exist, or a regular file PyAV cannot read a
    video stream from (a URL or a named pipe is opened later: opening would consume it)."""
    if is_url(source):
        return
    if not os.path.exists(source):
        raise ValueError(f"{source}: no such file")
    if not os.path.isfile(source):
        return
    import av

    try:
        with av.open(source) as container:
            if not container.streams.video:
                raise ValueError(f"{source}: no video stream in it")
    except av.error.FFmpegError as exc:
        raise ValueError(f"{source}: not a video PyAV can read ({exc.strerror or exc})") from None
