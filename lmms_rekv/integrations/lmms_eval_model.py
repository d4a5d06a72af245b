"""The lmms-eval model ``rekv_llava_ov`` (alias ``rekv``): a checkpoint of any supported family
(LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL; picked from its ``config.json``) answering through ReKV.

    lmms-eval --model rekv_llava_ov \\
        --model_args pretrained=llava-hf/llava-onevision-qwen2-7b-ov-hf,fps=0.5,topk_frames=64 \\
        --tasks egoschema

This class only adapts lmms-eval's API: the work is a framework-free ``Runner``
(``lmms_rekv.integrations.runner``) and the upstream model whose arguments were given is one
object chosen at load (``lmms_rekv.integrations.upstream``). Requests are grouped by video:
each video is decoded once at ``fps`` and encoded once, and every question on it is answered
from the same session; a video that continues the stream answered before (the same source cut
later, as benchmarks hand streams over in chunk files) extends that session
(``lmms_rekv.integrations.streams``). Multi-round documents answer
each round about that round's visuals (``lmms_rekv.integrations.multi_round``). A visual may carry a temporal
fragment, ``path#t=END`` or ``path#t=START,END`` (seconds): the stream then covers START..
and the question is answered as of END: only frames sampled at or before END can be
retrieved, and encoding is causal, so later frames cannot change the answer. A
video that cannot be read, or a question that fails, is logged and recorded in
``self.failures`` (and appended to ``$LMMS_REKV_FAILURES`` as JSON lines when set); its
documents get an empty answer and the run goes on. An ``ImportError`` (a broken
installation, not a bad document) ends the run at once.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import torch
from lmms_eval.api.model import lmms

from lmms_rekv.args import build
from lmms_rekv.config import ReKVConfig
from lmms_rekv.integrations.multi_round import answer_all_rounds
from lmms_rekv.integrations.requests import FATAL_ERRORS, Job, clean_context, parse_visual  # noqa: F401  (public names)
from lmms_rekv.integrations.runner import Runner
from lmms_rekv.integrations.upstream import Native, RunSettings, choose
from lmms_rekv.model import ReKV

logger = logging.getLogger(__name__)

#: this class's parameters that configure the runner (``RunSettings`` fields) and the loading
RUN_ARGS = ("fps", "max_frames", "max_new_tokens", "doc_timeout", "reuse_streams", "stream_tolerance", "cache_dir")
LOAD_ARGS = ("pretrained", "dtype", "device", "batch_size")



@functools.lru_cache(maxsize=None)
def close_process_group_at_exit() -> None:
    """Destroy the default process group when the interpreter exits (registered once).

    lmms-eval under ``torchrun`` leaves its gloo process group to the interpreter's teardown,
    where its threads are destroyed still running: the process then aborts ("terminate called
    without an active exception", exit code -6) after the results are written -- 3 of 8 bare
    two-rank gloo runs on the 2-core machine, 0 of 8 with the group destroyed first."""
    atexit.register(close_process_group)


def close_process_group() -> None:
    """Destroy the default ``torch.distributed`` process group, if one is open."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class ReKVLlavaOV(lmms):
    """lmms-eval model for ReKV streaming retrieval (any family in ``lmms_rekv.patches``).

    Model args: ``pretrained`` (checkpoint directory or hub id), ``dtype`` (auto|float16|
    bfloat16|float32), ``device`` (default cuda:LOCAL_RANK, else cpu), ``fps`` (frames sampled
    per second, default 0.5), ``max_frames`` (cap; sampling becomes uniform over the video),
    ``window_tokens``, ``topk_frames``, ``retrieval``, ``score``, ``offload``, ``chunk_frames``
    (see ``ReKVConfig``; ``None`` accepted for window/topk), ``max_new_tokens`` (default when
    a task gives none), ``reuse_streams`` (default True: a video that continues the stream
    answered before -- the same source cut later -- extends its session; see
    ``lmms_rekv.integrations.streams``), ``stream_tolerance`` (pixel levels; default 0: such
    frames must be bit-identical). lmms-eval ``llava_onevision``'s args (``conv_template``,
    ``max_frames_num``, ``device_map``, ...) are honoured or refused with the reason
    (``lmms_rekv.integrations.llava_ov_args``), so its ``--model_args`` string works here:
    given any of them, frames are sampled as it samples them (``np.linspace`` over the frame
    count, unless ``fps``/``max_frames`` ask for the time grid) and the model loads float16
    unless ``dtype`` is given;
    likewise lmms-eval ``qwen2_5_vl``'s and ``qwen3_vl``'s (``min_pixels``, ``max_pixels``,
    ``max_num_frames``, ``total_pixels``, ...; which one by the checkpoint's family;
    ``lmms_rekv.integrations.qwen_args``)."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        dtype: str = "auto",
        device: Optional[str] = None,
        fps: Optional[float] = None,
        max_frames: Optional[int] = None,
        max_new_tokens: int = 16,
        cache_dir: Optional[str] = None,
        batch_size: Any = 1,
        doc_timeout: Optional[float] = 3600.0,
        reuse_streams: Any = True,
        stream_tolerance: float = 0.0,
        **rekv_args,
    ) -> None:
        super().__init__()
        if str(batch_size) not in ("1", "auto"):
            logger.warning("rekv_llava_ov answers one stream at a time; batch_size=%s ignored", batch_size)
        self._rank = int(os.environ.get("RANK", 0))
        self._world_size = int(os.environ.get("WORLD_SIZE", 1))
        if self._world_size > 1:
            close_process_group_at_exit()
        own = {"fps": fps, "max_frames": max_frames, "max_new_tokens": max_new_tokens, "doc_timeout": doc_timeout,
               "reuse_streams": reuse_streams, "stream_tolerance": stream_tolerance, "cache_dir": cache_dir}
        self.upstream, config, run = self.settings(pretrained, own, rekv_args)
        self._device = pick_device(device if device is not None else self.upstream.device)
        self.engine = ReKV.from_pretrained(pretrained, config=config, dtype=self.upstream.dtype(dtype), device=self._device,
                                           **self.upstream.load_kwargs)
        if run.cache_dir:
            os.makedirs(run.cache_dir, exist_ok=True)
        self.runner = Runner(self.engine, self.upstream, run, lambda task, split, doc_id: self.task_dict[task][split][doc_id],
                             show_progress=self._rank == 0)

    @classmethod
    def settings(cls, pretrained: str, own: Dict[str, Any], rekv_args: Dict[str, Any]) -> Tuple[Native, ReKVConfig, RunSettings]:
        """What the model args mean, without loading anything: ``(the upstream model whose
        arguments were given, ReKVConfig, the runner's settings)``. ``own``: this class's
        parameters that configure the run (``fps``/``max_frames`` None: unset; the others None:
        none, e.g. no time limit); ``rekv_args``: the rest (not changed). Each
        is read by its field (``lmms_rekv.args``); raises ValueError with a one-line reason."""
        given = {k: v for k, v in own.items() if v is not None or k not in ("fps", "max_frames")}  # None: unset / no limit
        upstream, rest = choose(pretrained, rekv_args, own.get("fps"), own.get("max_frames"))
        if "max_frames" not in given and upstream.default_max_frames is not None:
            given["max_frames"] = upstream.default_max_frames  # llava_onevision's max_frames_num caps the time grid
        return upstream, ReKVConfig.from_strings(**rest), build(RunSettings, given, kind="rekv_llava_ov model arg")

    @classmethod
    def check_args(cls, model_args: Dict[str, Any]) -> None:
        """Raise ValueError (one line) when ``--model_args`` (parsed) cannot work; loads nothing."""
        if "pretrained" not in model_args:
            raise ValueError("pretrained= is required (a checkpoint folder, a hub id or 'miniature')")
        from lmms_rekv.model import check_source

        check_source(str(model_args["pretrained"]))  # FileNotFoundError: reported as bad model args
        own = {k: model_args[k] for k in RUN_ARGS if k in model_args}
        rest = {k: v for k, v in model_args.items() if k not in RUN_ARGS and k not in LOAD_ARGS}
        cls.settings(str(model_args["pretrained"]), own, rest)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def failures(self) -> List[Dict[str, Any]]:
        """The documents and rounds that failed (task, split, doc_id, video, error)."""
        return self.runner.failures

    @property
    def videos_decoded(self) -> int:
        """Videos decoded and encoded by this model (``videos_from_cache``: reopened from ``cache_dir``)."""
        return self.runner.videos_decoded

    @property
    def videos_from_cache(self) -> int:
        return self.runner.videos_from_cache

    # -- lmms-eval API --------------------------------------------------------------------
    def generate_until(self, requests) -> List[str]:
        return self.runner.run(requests, self.runner.generate, "", "rekv_llava_ov generate")

    def loglikelihood(self, requests) -> List[Tuple[float, bool]]:
        return self.runner.run(requests, self.runner.loglikelihood, (float("-inf"), False), "rekv_llava_ov loglikelihood")

    def generate_until_multi_round(self, requests) -> List[List[str]]:
        """Per document, the list of its rounds' answers in round order (what lmms-eval's
        chat models return and upstream scorers index). Round 0 is about the document's
        visual; round ``i`` about the visuals its ``doc_to_text`` returns (None or empty: the
        same video as before). A round whose visual continues the stream so far (the same
        source cut later) extends its session instead of encoding from zero (``Streams``).
        A round that fails is answered with an empty string and the next rounds go on."""
        return answer_all_rounds(self.runner, requests)


def pick_device(device: Optional[str]) -> torch.device:
    """The device of ``device``/``device_map`` (``auto``/cuda: cuda:LOCAL_RANK when available, else cpu)."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device in (None, "", "auto") or str(device).startswith("cuda"):
        if torch.cuda.is_available():
            return torch.device(f"cuda:{local}" if device in (None, "", "auto", "cuda") else device)
        if device not in (None, "", "auto"):
            logger.warning("device=%s requested but CUDA is not available; using cpu", device)
        return torch.device("cpu")
    return torch.device(device)
