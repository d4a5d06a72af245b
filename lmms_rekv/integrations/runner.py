"""`Runner`: answers lmms-eval-shaped requests with a loaded engine, free of lmms-eval itself.

Requests are grouped by video: each video is decoded once and encoded once, and every
question on it is answered from the same session, in time order; a video that continues the
stream answered before extends that session (``streams.Streams``). A video that cannot be
read, or a question that fails, is logged and recorded in ``failures`` (and appended to
``$LMMS_REKV_FAILURES`` as JSON lines when set); its documents get the ``failed`` answer and
the run goes on. An ``ImportError`` (a broken installation, not a bad document) ends the run.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional

from tqdm.auto import tqdm

from lmms_rekv.io.video import VideoError

from .requests import FATAL_ERRORS, Job, clean_context, parse_visual
from .streams import Sampling, Stream, Streams, encode
from .upstream import Native, RunSettings

logger = logging.getLogger(__name__)

#: ``doc_of(task, split, doc_id)`` -> the document (lmms-eval: ``task_dict[task][split][doc_id]``)
DocOf = Callable[[str, str, Any], Any]


class Runner:
    """One engine answering requests as the ``upstream`` model's arguments ask, with the run's
    settings; counts videos decoded and reopened, and keeps the failures."""

    def __init__(self, engine, upstream: Native, settings: RunSettings, doc_of: DocOf, show_progress: bool = True) -> None:
        self.engine, self.upstream, self.settings = engine, upstream, settings
        self.doc_of, self.show_progress = doc_of, show_progress
        self.failures: List[Dict[str, Any]] = []
        self.videos_decoded = 0  # videos decoded and encoded by this runner
        self.videos_from_cache = 0

    # -- requests -------------------------------------------------------------------------
    def jobs(self, requests) -> List[Job]:
        """One job per request: its document and video (an unreadable one recorded later)."""
        jobs = []
        for index, request in enumerate(requests):
            args = request.args
            try:
                if len(args) < 6:
                    raise ValueError("request without a video (e.g. an unconditional loglikelihood)")
                doc = self.doc_of(args[-2], args[-1], args[-3])
                visuals = args[2](doc) or []
                if len(visuals) != 1:
                    raise ValueError(f"rekv_llava_ov needs exactly one video per document, got {len(visuals)} visuals")
                path, start, end = parse_visual(visuals[0])
            except Exception as exc:  # recorded when the group runs
                path, start, end = f"<invalid:{index}>", 0.0, None
                doc = {"__error__": exc}
            jobs.append(Job(index, args, doc, path, start, end))
        return jobs

    def run(self, requests, answer: Callable[[object, Job, Optional[int]], Any], failed: Any, desc: str) -> list:
        """``answer(session, job, frame_limit)`` for every request, one session per (video,
        start), questions in time order; consecutive videos continuing one stream share it."""
        results = [failed] * len(requests)
        groups: "OrderedDict[tuple, List[Job]]" = OrderedDict()
        for job in self.jobs(requests):
            groups.setdefault((job.path, job.start), []).append(job)
        bar = tqdm(total=len(requests), disable=not self.show_progress, desc=desc)
        streams = self.streams()
        try:
            for jobs in groups.values():
                jobs.sort(key=lambda j: math.inf if j.end is None else j.end)
                self._run_video(streams, jobs, answer, results, bar)
        finally:
            streams.close()
            bar.close()
        self.log_streams(streams)
        return results

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
                self.record_failure(job, exc)
            bar.update(1)

    def record_failure(self, job: Job, exc: Exception) -> None:
        """Log a failed document or round, keep it in ``failures`` and append it to
        ``$LMMS_REKV_FAILURES`` when set."""
        args = job.args if len(job.args) >= 6 else (None,) * 6
        entry = {"task": args[-2], "split": args[-1], "doc_id": args[-3], "video": job.path, "error": f"{type(exc).__name__}: {exc}"}
        self.failures.append(entry)
        logger.error("rekv_llava_ov: %s/%s doc %s failed (%s): %s", entry["task"], entry["split"], entry["doc_id"], job.path, entry["error"])
        target = os.environ.get("LMMS_REKV_FAILURES")
        if target:
            with open(target, "a") as fh:
                fh.write(json.dumps(entry, default=str) + "\n")

    # -- streams --------------------------------------------------------------------------
    def sampling(self) -> Sampling:
        """How this run reads a file into a session (the upstream's rule)."""
        return self.upstream.sampling(self.engine, self.settings)[0]

    def streams(self) -> Streams:
        """A fresh set of streams (the one being answered, reused while visuals continue it)."""
        sampling, reuse = self.upstream.sampling(self.engine, self.settings)
        return Streams(sampling, self.open, reuse=reuse)

    def open(self, path: str, start: float) -> Stream:
        """A fresh stream of a video: reopened from ``cache_dir`` when an intact entry exists,
        else decoded and encoded once (and saved when a cache is set)."""
        if not os.path.isfile(path):
            raise VideoError(f"video not found: {path}")
        folder = self._cache_folder(path, start)
        if folder is not None and os.path.isdir(folder):
            try:
                session = self.engine.open_session(folder)
                self.videos_from_cache += 1
                times = list(session.saved_meta["times"])
                return Stream(session, path, start, times, covered={path: len(times)})
            except Exception as exc:
                logger.warning("rekv_llava_ov: cache entry %s for %s is unusable (%s); re-encoding", folder, path, exc)
        self.videos_decoded += 1
        stream = encode(self.sampling(), path, start)
        if folder is not None:
            try:
                stream.session.save(folder, video=path, times=stream.times)
            except OSError as exc:
                logger.warning("rekv_llava_ov: could not save %s to the cache: %s", path, exc)
        return stream

    def _cache_folder(self, path: str, start: float) -> Optional[str]:
        cache_dir = self.settings.cache_dir
        if not cache_dir:
            return None
        from .cache import cache_key

        run = self.settings
        key = cache_key(self.engine, path, run.fps, run.max_frames, start, sampling=self.upstream.sampling_key(run))
        return os.path.join(cache_dir, key)

    def log_streams(self, streams: Streams) -> None:
        logger.info("rekv_llava_ov: %d videos encoded, %d reopened from the cache; %d extended a stream (%d frames), "
                    "%d answered as an earlier cut of one", self.videos_decoded, self.videos_from_cache, streams.extended,
                    streams.frames_encoded, streams.limited)

    # -- questions ------------------------------------------------------------------------
    @staticmethod
    def question(context: str) -> str:
        """The question asked for a task's prompt: placeholders removed (the template places the video)."""
        return clean_context(context)

    def generation(self, gen_kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """``ask`` keyword arguments from lmms-eval ``gen_kwargs`` (temperature 0 = greedy)."""
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        if not self.upstream.cuts_at_until:  # lmms-eval's chat qwen2_5_vl / qwen3_vl do not cut at `until`
            until = []
        temperature = float(gen_kwargs.get("temperature", 0) or 0)
        do_sample = bool(gen_kwargs.get("do_sample", False)) and temperature > 0
        if int(gen_kwargs.get("num_beams", 1) or 1) > 1:
            logger.warning("rekv_llava_ov decodes without beam search; num_beams ignored")
        default = self.upstream.default_max_new_tokens or self.settings.max_new_tokens
        settings = {"max_new_tokens": int(gen_kwargs.get("max_new_tokens") or default), "stop": until}
        if do_sample:
            settings.update(do_sample=True, temperature=temperature, top_p=float(gen_kwargs.get("top_p") or 1.0))
        return settings

    def generate(self, session, job: Job, limit: Optional[int]) -> str:
        """The answer to a ``generate_until`` request, as the upstream model returns it."""
        context, gen_kwargs = job.args[0], dict(job.args[1] or {})
        text = session.ask(self.question(context), frame_limit=limit, **self.generation(gen_kwargs))
        return self.upstream.final_answer(text).strip()

    def loglikelihood(self, session, job: Job, limit: Optional[int]):
        """``(log-probability, greedy?)`` of a ``loglikelihood`` request's continuation."""
        context, target = job.args[0], job.args[1]
        continuation = target if isinstance(target, str) else target(job.doc)
        return session.loglikelihood(self.question(context), continuation, frame_limit=limit)

    def first_video(self, request) -> str:
        """The path of a multi-round request's first visual ("" when unknown): documents are
        answered grouped by it, so that those about one source share its encoding."""
        try:
            _, _, doc_to_visual, _, doc_id, task, split = request.args
            visuals = doc_to_visual(self.doc_of(task, split, doc_id)) or [""]
            return parse_visual(visuals[0])[0] if visuals[0] else ""
        except Exception:  # reported when the document is answered
            return ""
