"""The lmms-eval model ``rekv_llava_ov`` (alias ``rekv``): a checkpoint of any supported family
(LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL; picked from its ``config.json``) answering through ReKV.

    lmms-eval --model rekv_llava_ov \\
        --model_args pretrained=llava-hf/llava-onevision-qwen2-7b-ov-hf,fps=0.5,topk_frames=64 \\
        --tasks egoschema

Requests are grouped by video: each video is decoded once at ``fps`` and encoded once, and
every question on it is answered from the same session; a video that continues the stream
answered before (the same source cut later, as benchmarks hand streams over in chunk files)
extends that session (``lmms_rekv.integrations.streams``). Multi-round documents answer
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

import json
import logging
import math
import os
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

from lmms_rekv.config import ReKVConfig
from lmms_rekv.integrations import qwen_args
from lmms_rekv.integrations.llava_ov_args import translate
from lmms_rekv.integrations.multi_round import answer_rounds
from lmms_rekv.integrations.qwen_frames import QwenSampling
from lmms_rekv.integrations.requests import FATAL_ERRORS, Job, clean_context, parse_visual  # noqa: F401  (public names)
from lmms_rekv.integrations.streams import Sampling, Stream, Streams, UniformFrames, encode
from lmms_rekv.io.video import VideoError
from lmms_rekv.model import ReKV

logger = logging.getLogger(__name__)

def _none_or_int(value) -> Optional[int]:
    if value is None or str(value).lower() in ("none", "null", "all", ""):
        return None
    return int(value)


def _none_or_float(value) -> Optional[float]:
    if value is None or str(value).lower() in ("none", "null", "0", ""):
        return None
    return float(value)


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
        self.reuse_streams = str(reuse_streams).lower() not in ("false", "0", "no", "none")
        self.stream_tolerance = float(stream_tolerance or 0.0)  # see streams.FramePrints
        self._rank = int(os.environ.get("RANK", 0))
        self._world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.qwen, ov, config, load = self.settings(pretrained, fps, stream_tolerance, rekv_args)
        self._device = self._pick_device(device if device is not None else (self.qwen.device if self.qwen else ov.get("device")))
        if self.qwen is not None:
            dtype = self._qwen_load(dtype, load)
        elif str(dtype) == "auto" and "dtype" in ov:  # llava_onevision's float16 (the drop-in)
            dtype = ov["dtype"]
        self.engine = ReKV.from_pretrained(pretrained, config=config, dtype=dtype, device=self._device, **load)
        self.fps = float(fps if fps is not None else ov.get("fps", 0.5))
        self.max_frames = _none_or_int(max_frames if max_frames is not None else ov.get("max_frames"))
        # llava_onevision's frame sampling (np.linspace over the frame count) unless fps= asks for a time grid
        self.uniform = UniformFrames(int(ov["uniform_frames"]), str(ov["decode_backend"])) \
            if "uniform_frames" in ov and fps is None and max_frames is None else None
        self.max_new_tokens = int(max_new_tokens)
        self.doc_timeout = _none_or_float(doc_timeout)  # seconds to read and encode one video (None/0: no limit)
        self.cache_dir = None if str(cache_dir).lower() in ("none", "") else os.path.expanduser(str(cache_dir))
        if self.cache_dir:
            os.makedirs(self.cache_dir, exist_ok=True)
        self.failures: List[Dict[str, Any]] = []
        self.videos_decoded = 0  # videos decoded and encoded by this process
        self.videos_from_cache = 0

    @classmethod
    def settings(cls, pretrained: str, fps: Optional[float], stream_tolerance: Any, rekv_args: Dict[str, Any]):
        """What the model args mean, without loading anything: ``(lmms-eval Qwen args or
        None, llava_onevision args, ReKVConfig, loading kwargs)``; ``rekv_args`` (the args that
        are not parameters of ``__init__``) are taken. Raises ValueError with a one-line reason."""
        if float(stream_tolerance or 0.0) < 0:
            raise ValueError(f"stream_tolerance must be >= 0 (pixel levels), got {stream_tolerance}")
        if fps is not None and not float(fps) > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        qwen = cls._qwen_args(pretrained, rekv_args, fps)  # lmms-eval qwen2_5_vl / qwen3_vl model_args
        ov = translate(rekv_args)  # llava_onevision's model_args (drop-in): honoured or refused
        load = {k: ov[k] for k in ("conv_template", "attn_implementation") if k in ov}
        if rekv_args.get("save_converted") is not None:  # where an lmms-lab checkpoint's conversion is kept
            load["save_converted"] = os.path.expanduser(str(rekv_args.pop("save_converted")))
        return qwen, ov, ReKVConfig.from_strings(**rekv_args), load

    @classmethod
    def check_args(cls, model_args: Dict[str, Any]) -> None:
        """Raise ValueError (one line) when ``--model_args`` (parsed) cannot work; loads nothing."""
        import inspect

        own = set(inspect.signature(cls.__init__).parameters) - {"self", "rekv_args"}
        rest = {k: v for k, v in model_args.items() if k not in own}
        if "pretrained" not in model_args:
            raise ValueError("pretrained= is required (a checkpoint folder, a hub id or 'miniature')")
        from lmms_rekv.model import check_source

        check_source(str(model_args["pretrained"]))  # FileNotFoundError: reported as bad model args
        cls.settings(str(model_args["pretrained"]), model_args.get("fps"), model_args.get("stream_tolerance"), rest)

    @staticmethod
    def _qwen_args(pretrained: str, rekv_args: Dict[str, Any], fps: Optional[float]) -> Optional[qwen_args.QwenArgs]:
        """lmms-eval ``qwen2_5_vl`` / ``qwen3_vl`` arguments in ``rekv_args`` (taken out), for
        the checkpoint's family (read before loading); None when there are none."""
        if not qwen_args.wants_qwen(rekv_args):
            return None
        from lmms_rekv.model import model_type_of

        if os.path.isdir(str(pretrained)):
            model_type = model_type_of(str(pretrained))
        else:
            from transformers import AutoConfig

            model_type = AutoConfig.from_pretrained(str(pretrained)).model_type
        args = qwen_args.translate(rekv_args, model_type)
        if fps is not None:  # their own `fps` (qwen-vl-utils' sampling rate)
            args.fps = float(fps)
        return args

    def _qwen_load(self, dtype: str, load: Dict[str, Any]) -> str:
        """Loading arguments of lmms-eval's qwen2_5_vl / qwen3_vl (the processor's pixel bounds,
        the system message and template variables, bfloat16 unless ``dtype`` is given)."""
        args = self.qwen
        load["processor_kwargs"] = {"min_pixels": args.min_pixels, "max_pixels": args.max_pixels}
        load["system_prompt"], load["chat_template_kwargs"] = args.system_message, args.template_kwargs or None
        if args.attn_implementation is not None:
            load["attn_implementation"] = args.attn_implementation
        return "bfloat16" if str(dtype) == "auto" else dtype  # both load bfloat16

    @staticmethod
    def _pick_device(device: Optional[str]) -> torch.device:
        local = int(os.environ.get("LOCAL_RANK", 0))
        if device in (None, "", "auto") or str(device).startswith("cuda"):
            if torch.cuda.is_available():
                return torch.device(f"cuda:{local}" if device in (None, "", "auto", "cuda") else device)
            if device not in (None, "", "auto"):
                logger.warning("device=%s requested but CUDA is not available; using cpu", device)
            return torch.device("cpu")
        return torch.device(device)

    @property
    def device(self) -> torch.device:
        return self._device

    # -- request plumbing -----------------------------------------------------------------
    def _jobs(self, requests) -> List[Job]:
        jobs = []
        for index, request in enumerate(requests):
            args = request.args
            try:
                if len(args) < 6:
                    raise ValueError("request without a video (e.g. an unconditional loglikelihood)")
                doc = self.task_dict[args[-2]][args[-1]][args[-3]]
                visuals = args[2](doc) or []
                if len(visuals) != 1:
                    raise ValueError(f"rekv_llava_ov needs exactly one video per document, got {len(visuals)} visuals")
                path, start, end = parse_visual(visuals[0])
            except Exception as exc:  # recorded when the group runs
                path, start, end = f"<invalid:{index}>", 0.0, None
                doc = {"__error__": exc}
            jobs.append(Job(index, args, doc, path, start, end))
        return jobs

    def _streams(self) -> Streams:
        backbone = self.engine.backbone
        size_for = None
        if getattr(backbone, "sizes_by_clip", False):  # Qwen3-VL: the size depends on the frame count
            size_for = lambda h, w, n: backbone.for_stream(h, w, n).frame_size  # noqa: E731
        if self.qwen is not None:  # frames as lmms-eval's qwen2_5_vl / qwen3_vl read them; each file its own stream
            sampling = QwenSampling(self.engine.new_session, self.fps, None, self.engine.config.chunk_frames, self.doc_timeout,
                                    keep_prints=False, args=self.qwen)
            return Streams(sampling, self._open, reuse=False)
        sampling = Sampling(self.engine.new_session, self.fps, self.max_frames, self.engine.config.chunk_frames,
                            self.doc_timeout, self.stream_tolerance, size_for=size_for, keep_prints=self.reuse_streams,
                            uniform=self.uniform)
        return Streams(sampling, self._open, reuse=self.reuse_streams)

    def _run(self, requests, answer: Callable, failed: Any, desc: str) -> list:
        """Answer every request through one session per (video, start), questions in time order;
        consecutive videos that continue one stream share its session (``Streams``)."""
        results = [failed] * len(requests)
        groups: "OrderedDict[tuple, List[Job]]" = OrderedDict()
        for job in self._jobs(requests):
            groups.setdefault((job.path, job.start), []).append(job)
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc=desc)
        streams = self._streams()
        try:
            for jobs in groups.values():
                jobs.sort(key=lambda j: math.inf if j.end is None else j.end)
                self._run_video(streams, jobs, answer, results, bar)
        finally:
            streams.close()
            bar.close()
        self._log_streams(streams)
        return results

    def _log_streams(self, streams: Streams) -> None:
        logger.info("rekv_llava_ov: %d videos encoded, %d reopened from the cache; %d extended a stream (%d frames), "
                    "%d answered as an earlier cut of one", self.videos_decoded, self.videos_from_cache, streams.extended,
                    streams.frames_encoded, streams.limited)

    def _run_video(self, streams: Streams, jobs: List[Job], answer: Callable, results: list, bar) -> None:
        """Answer the questions on one video; a question at time ``t`` may only retrieve
        frames sampled at or before ``t`` (``frame_limit``)."""
        for job in jobs:
            try:
                if isinstance(job.doc, dict) and "__error__" in job.doc:
                    raise job.doc["__error__"]
                session, limit = streams.visit(job.path, job.start, job.end)
                results[job.index] = answer(session, job, limit)
            except FATAL_ERRORS:  # a broken installation, not a bad document: stop now
                raise
            except Exception as exc:  # one bad document must not end the run
                self._record_failure(job, exc)
            bar.update(1)

    def _open(self, path: str, start: float) -> Stream:
        """A fresh stream of a video: reopened from ``cache_dir`` when an intact entry exists,
        else decoded and encoded once (and saved when a cache is set)."""
        if not os.path.isfile(path):
            raise VideoError(f"video not found: {path}")
        folder = None
        if self.cache_dir:
            from lmms_rekv.storage.persist import cache_key

            folder = os.path.join(self.cache_dir, cache_key(self.engine, path, self.fps, self.max_frames, start,
                                                            sampling=self._sampling_key()))
            if os.path.isdir(folder):
                try:
                    session = self.engine.open_session(folder)
                    self.videos_from_cache += 1
                    times = list(session.saved_meta["times"])
                    return Stream(session, path, start, times, covered={path: len(times)})
                except Exception as exc:
                    logger.warning("rekv_llava_ov: cache entry %s for %s is unusable (%s); re-encoding", folder, path, exc)
        self.videos_decoded += 1
        stream = encode(self._streams().sampling, path, start)
        if folder is not None:
            try:
                stream.session.save(folder, video=path, times=stream.times)
            except OSError as exc:
                logger.warning("rekv_llava_ov: could not save %s to the cache: %s", path, exc)
        return stream

    def _sampling_key(self) -> Optional[dict]:
        """How frames are sampled when not by ``fps``/``max_frames`` (part of a cache key)."""
        if self.qwen is not None:
            return self.qwen.sampling
        return {"uniform": self.uniform.count, "backend": self.uniform.backend} if self.uniform else None

    def _record_failure(self, job: Job, exc: Exception) -> None:
        args = job.args if len(job.args) >= 6 else (None,) * 6
        entry = {"task": args[-2], "split": args[-1], "doc_id": args[-3], "video": job.path, "error": f"{type(exc).__name__}: {exc}"}
        self.failures.append(entry)
        logger.error("rekv_llava_ov: %s/%s doc %s failed (%s): %s", entry["task"], entry["split"], entry["doc_id"], job.path, entry["error"])
        target = os.environ.get("LMMS_REKV_FAILURES")
        if target:
            with open(target, "a") as fh:
                fh.write(json.dumps(entry, default=str) + "\n")

    # -- lmms-eval API --------------------------------------------------------------------
    def generate_until(self, requests) -> List[str]:
        def answer(session, job: Job, limit: Optional[int]) -> str:
            context, gen_kwargs = job.args[0], dict(job.args[1] or {})
            text = session.ask(self.question(context), frame_limit=limit, **self._generation(gen_kwargs))
            return (self.qwen.final_answer(text) if self.qwen else text).strip()

        return self._run(requests, answer, "", "rekv_llava_ov generate")

    def loglikelihood(self, requests) -> List[Tuple[float, bool]]:
        def answer(session, job: Job, limit: Optional[int]) -> Tuple[float, bool]:
            context, target = job.args[0], job.args[1]
            continuation = target if isinstance(target, str) else target(job.doc)
            return session.loglikelihood(self.question(context), continuation, frame_limit=limit)

        return self._run(requests, answer, (float("-inf"), False), "rekv_llava_ov loglikelihood")

    def generate_until_multi_round(self, requests) -> List[List[str]]:
        """Per document, the list of its rounds' answers in round order (what lmms-eval's
        chat models return and upstream scorers index). Round 0 is about the document's
        visual; round ``i`` about the visuals its ``doc_to_text`` returns (None or empty: the
        same video as before). A round whose visual continues the stream so far (the same
        source cut later) extends its session instead of encoding from zero (``Streams``).
        A round that fails is answered with an empty string and the next rounds go on."""
        results: List[List[str]] = [[] for _ in requests]
        streams = self._streams()
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="rekv_llava_ov multi-round")
        try:
            for index in sorted(range(len(requests)), key=lambda i: self._first_video(requests[i])):
                results[index] = answer_rounds(self, streams, index, requests[index])
                bar.update(1)
        finally:
            streams.close()
            bar.close()
        self._log_streams(streams)
        return results

    def _first_video(self, request) -> str:
        """The path of a multi-round request's first visual ("" when unknown): documents are
        answered grouped by it, so that those about one source share its encoding."""
        try:
            _, _, doc_to_visual, _, doc_id, task, split = request.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or [""]
            return parse_visual(visuals[0])[0] if visuals[0] else ""
        except Exception:  # reported when the document is answered
            return ""

    def question(self, context: str) -> str:
        """The question asked for a task's prompt: placeholders removed (the template places the video)."""
        return clean_context(context)

    def _generation(self, gen_kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """``ask`` keyword arguments from lmms-eval ``gen_kwargs`` (temperature 0 = greedy)."""
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        if self.qwen is not None:  # lmms-eval's chat qwen2_5_vl / qwen3_vl do not cut at `until`
            until = []
        temperature = float(gen_kwargs.get("temperature", 0) or 0)
        do_sample = bool(gen_kwargs.get("do_sample", False)) and temperature > 0
        if int(gen_kwargs.get("num_beams", 1) or 1) > 1:
            logger.warning("rekv_llava_ov decodes without beam search; num_beams ignored")
        default = qwen_args.DEFAULT_MAX_NEW_TOKENS if self.qwen is not None else self.max_new_tokens
        settings = {"max_new_tokens": int(gen_kwargs.get("max_new_tokens") or default), "stop": until}
        if do_sample:
            settings.update(do_sample=True, temperature=temperature, top_p=float(gen_kwargs.get("top_p") or 1.0))
        return settings
