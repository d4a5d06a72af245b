"""``rekv live``: follow a live video source and answer questions as they come.

    rekv live clip.mp4 --realtime --fps 1 --questions q.jsonl        # a file played as if live
    rekv live /tmp/camera.fifo --fps 2                                # questions typed on stdin
    rekv live rtsp://camera.local/stream --model llava-hf/llava-onevision-qwen2-0.5b-ov-hf

The source is anything PyAV opens (file, named pipe, rtsp/http/udp URL), sampled at ``--fps``.
Questions come from stdin (one per line, answered as soon as the current frame is encoded)
or from a JSON-lines file of ``{"t": seconds, "q": "question"}`` (each asked once the stream
reaches ``t``: reproducible runs; questions after the end are asked at the end). Each answer
is printed with the stream time and the times of the frames retrieved; a one-line status
(frames encoded, lag behind real time, device/host memory) updates in place on a terminal.
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
from typing import Callable, List, Optional, TextIO

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

    def __init__(self, engine, fps: float, max_new_tokens: int, out: TextIO, status: Optional[TextIO]) -> None:
        self.engine, self.fps, self.max_new_tokens = engine, fps, max_new_tokens
        self.session = engine.new_session(fps=fps).start()  # frames are encoded while the next ones are read
        self.out, self.status = out, status
        self.times: List[float] = []
        self.asked: List[Asked] = []
        self.started = time.monotonic()

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
        self._clear_status()
        shown = ", ".join(f"{x:g}" for x in asked.retrieved)
        print(f"[{t:8.2f} s] Q: {question}\n{'':13}A: {asked.answer}   (frames retrieved at {shown} s)", file=self.out, flush=True)
        return asked

    def show_status(self) -> None:
        if self.status is None or not self.times:
            return
        stats = self.session.stats()
        lag = (time.monotonic() - self.started) - self.times[-1]
        line = (f"frames {stats['encoded_frames']}/{stats['frames']} | stream {self.times[-1]:.1f} s | lag {lag:+.1f} s | "
                f"device {stats['device_bytes'] / 2**20:.1f} MiB | host {stats['cpu_bytes'] / 2**20:.1f} MiB")
        print("\r" + line + "\x1b[K", end="", file=self.status, flush=True)

    def _clear_status(self) -> None:
        if self.status is not None:
            print("\r\x1b[K", end="", file=self.status, flush=True)


def run_live(engine, source: str, fps: float, realtime: bool = False, questions: Optional[List[tuple]] = None,
             typed: Optional["queue.Queue[Optional[str]]"] = None, max_new_tokens: int = 16, out: TextIO = sys.stdout,
             status: Optional[TextIO] = None, frames=None) -> List[Asked]:
    """Stream ``source`` through ``engine``; ask ``questions`` (``[(t, q)]``) when the stream
    reaches their time and ``typed`` questions as soon as they arrive. Returns the answers.
    ``frames``: an iterator of ``(t, frame)`` to use instead of decoding ``source``."""
    from ..io.video import iter_live

    live = Live(engine, fps, max_new_tokens, out, status)
    due = list(questions or [])
    try:
        for t, frame in frames if frames is not None else iter_live(source, fps, realtime=realtime):
            live.add(t, frame)
            while due and due[0][0] <= t + 1e-9:
                live.ask(due.pop(0)[1])
            while typed is not None and not typed.empty():
                line = typed.get_nowait()
                if line is not None:
                    live.ask(line)
            live.show_status()
        for _, question in due:  # asked after the end of the stream
            live.ask(question)
        while typed is not None and not typed.empty():  # typed before the end, not answered yet
            line = typed.get_nowait()
            if line is not None:
                live.ask(line)
    except KeyboardInterrupt:
        live._clear_status()
        print(f"stopped at stream time {live.times[-1] if live.times else 0.0:.2f} s", file=out, flush=True)
    finally:
        live._clear_status()
        live.session.close()
    return live.asked


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rekv live", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="video file, named pipe or URL PyAV can open")
    p.add_argument("--model", default="miniature", help="checkpoint folder or hub id (default: the shipped trained miniature)")
    p.add_argument("--fps", type=float, default=1.0, help="frames sampled per second of stream (default 1)")
    p.add_argument("--realtime", action="store_true", help="play a file at its own pace, as if live")
    p.add_argument("--questions", help='JSON lines {"t": seconds, "q": "..."}; default: questions typed on stdin')
    p.add_argument("--window-tokens", type=int, default=None, help="sliding window (default: 4 blocks)")
    p.add_argument("--topk-frames", type=int, default=4, help="blocks retrieved per question (default 4)")
    p.add_argument("--chunk-frames", type=int, default=2, help="largest encoding batch and commit grid (default 2)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--dtype", default=None)
    p.add_argument("--device", default=None)
    return p


def main(argv: Optional[List[str]] = None, stdin: Optional[TextIO] = None, out: Optional[TextIO] = None,
         status: Optional[TextIO] = None) -> int:
    """``rekv live``; returns the exit status (0, or 2 with a one-line error)."""
    from lmms_rekv import ReKV, ReKVConfig

    from ..io.video import VideoError

    args = build_parser().parse_args(argv)
    stdin, out = stdin or sys.stdin, out or sys.stdout
    status = status if status is not None else (sys.stderr if sys.stderr.isatty() else None)
    try:
        questions = read_questions(args.questions) if args.questions else None
        engine = ReKV.from_pretrained(args.model, dtype=args.dtype, device=args.device)
        window = args.window_tokens if args.window_tokens is not None else 4 * engine.frame_tokens
        engine = engine.with_config(ReKVConfig(window_tokens=window, topk_frames=args.topk_frames, chunk_frames=args.chunk_frames))
        typed = None if questions is not None else _stdin_questions(stdin)
        run_live(engine, args.source, args.fps, args.realtime, questions, typed, args.max_new_tokens, out, status)
    except (VideoError, ValueError, FileNotFoundError) as exc:
        print(f"rekv live: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
