"""``rekv live``: follow a live video source and answer questions as they come.

    rekv live clip.mp4 --realtime --fps 1 --questions-file q.jsonl        # a file played as if live
    rekv live /tmp/camera.fifo --fps 2                                # questions typed on stdin
    rekv live rtsp://camera.local/stream --model llava-hf/llava-onevision-qwen2-0.5b-ov-hf

The source is anything PyAV opens (file, named pipe, rtsp/http/udp URL), sampled at ``--fps``.
Questions come from stdin, one per line -- on a live source (pipe, URL, or a file with
``--realtime``) answered as of the moment they arrive; on a file read faster than real time
(not live) answered about the whole video once it is encoded -- or from a JSON-lines file of
``{"t": seconds, "q": "question"}`` (each asked once the stream reaches ``t``: reproducible
runs; questions after the end are asked at the end). After the end of the stream an "end of
stream" line is printed and questions still coming on stdin are answered about everything
seen, until stdin closes. Each answer is printed with the stream time and the times of the
frames retrieved; a one-line status (frames encoded / received, lag behind real time on a
live source, device/host memory) updates in place on a terminal and stays at the end.
ReKV settings are the ``ReKVConfig`` flags every ``rekv`` command shares (``--retrieval
external``, ``--topk-frames``, ...).
Frames are encoded by the session's background encoder while the next ones are read (the
incomplete last chunk eagerly, so a question waits only for frames not yet encoded).
Ctrl-C or the end of the stream stops cleanly.
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import List, Optional, TextIO

from ..io.console import interruptible

logger = logging.getLogger(__name__)


@dataclass
class Asked:
    """One answered question."""

    t: float  # stream time the question was asked at (seconds)
    question: str
    answer: str
    retrieved: List[float]  # stream times of the frames retrieved (any layer)


def read_questions(path: str) -> List[tuple]:
    """``[(t, question)]`` sorted by time from a JSON-lines file of ``{"t": ..., "q": ...}``."""
    out = []
    with open(path) as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                out.append((float(item["t"]), str(item["q"])))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: expected {{\"t\": seconds, \"q\": \"question\"}}, got {line.strip()!r}") from exc
    return sorted(out, key=lambda x: x[0])


def _stdin_questions(stream: TextIO) -> "queue.Queue[Optional[str]]":
    """Lines of ``stream`` put on a queue by a daemon thread (``None`` at end of input)."""
    lines: "queue.Queue[Optional[str]]" = queue.Queue()

    def pump() -> None:
        for line in stream:
            if line.strip():
                lines.put(line.strip())
        lines.put(None)

    threading.Thread(target=pump, daemon=True, name="rekv-live-stdin").start()
    return lines


class Live:
    """The loop of ``rekv live``: frames in, questions answered, status out."""

    def __init__(self, engine, fps: float, max_new_tokens: int, out: TextIO, status: Optional[TextIO],
                 show_lag: bool = True) -> None:
        self.engine, self.fps, self.max_new_tokens = engine, fps, max_new_tokens
        self.session = engine.new_session(fps=fps).start()  # frames are encoded while the next ones are read
        self.out, self.status, self.show_lag = out, status, show_lag
        self.times: List[float] = []
        self.asked: List[Asked] = []
        self.started = time.monotonic()
        self._encoded = 0  # most frames shown as encoded (the status line never goes back)
        self._shown = False  # a status line is on the terminal

    def add(self, t: float, frame) -> None:
        self.session.add_frames(frame[None], block=False)
        self.times.append(t)

    def ask(self, question: str) -> Asked:
        t = self.times[-1] if self.times else 0.0
        answer = self.session.answer(question, max_new_tokens=self.max_new_tokens)
        per_block = self.engine.backbone.frames_per_block
        frames = sorted({f for layer in answer.selected for b in layer.tolist()
                         for f in range(b * per_block, (b + 1) * per_block) if f < len(self.times)})
        asked = Asked(t, question, answer.text.strip(), [round(self.times[f], 2) for f in frames])
        self.asked.append(asked)
        self.clear_status()
        shown = ", ".join(f"{x:g}" for x in asked.retrieved)
        print(f"[{t:8.2f} s] Q: {question}\n{'':13}A: {asked.answer}   (frames retrieved at {shown} s)", file=self.out, flush=True)
        return asked

    def say(self, line: str) -> None:
        """An information line on the output (the status line moved out of its way)."""
        self.clear_status()
        print(line, file=self.out, flush=True)

    def show_status(self, final: bool = False) -> None:
        """The one-line status on a terminal, in place; ``final``: left on screen."""
        if self.status is None or not self.times:
            return
        stats = self.session.stats()
        self._encoded = max(self._encoded, stats["encoded_frames"] + stats["provisional_frames"])
        line = f"frames {self._encoded}/{len(self.times)} encoded | stream {self.times[-1]:.1f} s"
        if self.show_lag:
            line += f" | lag {(time.monotonic() - self.started) - self.times[-1]:+.1f} s"
        line += f" | device {stats['device_bytes'] / 2**20:.1f} MiB | host {stats['cpu_bytes'] / 2**20:.1f} MiB"
        print("\r" + line + "\x1b[K", end="\n" if final else "", file=self.status, flush=True)
        self._shown = not final

    def clear_status(self) -> None:
        if self.status is not None and self._shown:
            print("\r\x1b[K", end="", file=self.status, flush=True)
            self._shown = False


def _drain(typed: Optional["queue.Queue[Optional[str]]"], live: Live, wait: bool) -> None:
    """Answer the questions typed so far; ``wait``: also those still to come, until stdin closes."""
    while typed is not None and (wait or not typed.empty()):
        line = typed.get() if wait else typed.get_nowait()
        if line is None:  # stdin closed: put the mark back, so that a later drain returns at once too
            typed.put(None)
            return
        live.ask(line)


def run_live(engine, source: str, fps: float, realtime: bool = False, questions: Optional[List[tuple]] = None,
             typed: Optional["queue.Queue[Optional[str]]"] = None, max_new_tokens: int = 16, out: TextIO = sys.stdout,
             status: Optional[TextIO] = None, frames=None, live_source: bool = True) -> List[Asked]:
    """Stream ``source`` through ``engine``; ask ``questions`` (``[(t, q)]``) when the stream
    reaches their time. ``typed`` questions: as soon as they arrive on a live source
    (``live_source``: a pipe, a URL or ``realtime``); about the whole video, once it is
    encoded, on a file read faster than real time. After the end of the stream, questions
    still coming on ``typed`` are answered until it closes. Returns the answers.
    ``frames``: an iterator of ``(t, frame)`` to use instead of decoding ``source``."""
    from ..io.video import iter_live

    live = Live(engine, fps, max_new_tokens, out, status, show_lag=live_source)
    due = list(questions or [])
    if typed is not None and not live_source:
        live.say(f"reading {source} faster than real time: questions on stdin are answered about the whole video once it "
                 "is encoded (--realtime answers them as it plays)")
    elif typed is not None:
        live.say(f"playing {source} at {fps:g} fps: questions on stdin are answered as of the moment they arrive")
    try:
        for t, frame in frames if frames is not None else iter_live(source, fps, realtime=realtime):
            live.add(t, frame)
            while due and due[0][0] <= t + 1e-9:
                live.ask(due.pop(0)[1])
            if live_source:
                _drain(typed, live, wait=False)
            live.show_status()
        live.session.flush()
        live.show_status(final=True)
        end = live.times[-1] if live.times else 0.0
        more = "; questions on stdin are answered about everything seen until stdin closes" if typed is not None else ""
        live.say(f"end of stream at {end:.2f} s ({len(live.times)} frames){more}")
        for _, question in due:  # asked after the end of the stream
            live.ask(question)
        _drain(typed, live, wait=True)
    except KeyboardInterrupt:
        live.say(f"stopped at stream time {live.times[-1] if live.times else 0.0:.2f} s")
    finally:
        live.clear_status()
        live.session.close()
    return live.asked


def build_parser() -> argparse.ArgumentParser:
    from .flags import Parser, add_config_flags

    p = Parser(prog="rekv live", description=__doc__.split("\n\n")[0],
                                epilog="A file read faster than real time is not live: questions typed on stdin are answered "
                                       "about the whole video once it is encoded (use --realtime, or --questions-file with times, "
                                       "for answers as of the moment they are asked).")
    p.add_argument("source", help="video file, named pipe or URL PyAV can open")
    p.add_argument("--model", default="miniature", help="checkpoint folder or hub id (default: the shipped trained miniature)")
    p.add_argument("--fps", type=float, default=1.0, help="frames sampled per second of stream (default 1)")
    p.add_argument("--realtime", action="store_true", help="play a file at its own pace, as if live")
    p.add_argument("--questions-file", dest="questions", metavar="FILE",
                   help='JSON lines {"t": seconds, "q": "..."}; default: questions typed on stdin')
    add_config_flags(p, defaults={"window_tokens": "4 blocks", "topk_frames": "4", "chunk_frames": "2"})
    p.add_argument("--max-new-tokens", type=int, default=16, help="longest answer, in tokens (default 16)")
    p.add_argument("--dtype", default=None, choices=("auto", "float32", "bfloat16", "float16"),
                   help="model precision (default auto: float16 on CUDA, float32 on CPU)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    return p


def _settings(args: argparse.Namespace):
    """``(ReKVConfig, whether the window is the default 4 blocks)`` from the flags, checked
    before the model loads; ``external``/``hybrid`` retrieval on the miniature uses its embedder."""
    from .flags import config_from

    fixed = {} if args.topk_frames is not None else {"topk_frames": 4}
    fixed.update({} if args.chunk_frames is not None else {"chunk_frames": 2})
    if args.retrieval in ("external", "hybrid") and args.clip_model is None and args.model == "miniature":
        fixed["clip_model"] = "miniature"
    return config_from(args, **fixed), args.window_tokens is None


@interruptible("rekv live")
def main(argv: Optional[List[str]] = None, stdin: Optional[TextIO] = None, out: Optional[TextIO] = None,
         status: Optional[TextIO] = None) -> int:
    """``rekv live``; returns the exit status (0, or 2 with a one-line error)."""
    import os

    args = build_parser().parse_args(argv)  # before the heavy imports: --help and flag errors are instant

    from lmms_rekv import ReKV

    from ..io.video import VideoError
    from .flags import check_device, check_source, is_url

    stdin, out = stdin or sys.stdin, out or sys.stdout
    status = status if status is not None else (sys.stderr if sys.stderr.isatty() else None)
    try:
        check_source(args.source)  # everything that can be checked is, before the model loads
        if args.fps <= 0:
            raise ValueError(f"--fps must be > 0, got {args.fps:g}")
        questions = read_questions(args.questions) if args.questions else None
        check_device(args.device)
        config, default_window = _settings(args)
        engine = ReKV.from_pretrained(args.model, config=config, dtype=args.dtype, device=args.device)
        if default_window:
            engine = engine.with_config(engine.config.replace(window_tokens=4 * engine.block_tokens))
        typed = None if questions is not None else _stdin_questions(stdin)
        live_source = args.realtime or is_url(args.source) or not os.path.isfile(args.source)
        run_live(engine, args.source, args.fps, args.realtime, questions, typed, args.max_new_tokens, out, status,
                 live_source=live_source)
    except (VideoError, ValueError, OSError) as exc:
        print(f"rekv live: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
