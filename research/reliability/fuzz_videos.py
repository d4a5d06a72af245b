"""``python -m research.reliability.fuzz_videos``: damaged and unusual videos through ``read_video``.

    python -m research.reliability.fuzz_videos --out fuzz_out --flips 20

Builds a corpus with PyAV and by mutation (zero bytes, truncated, header only, wrong
extension, audio only, one frame, variable frame rate, odd sizes 1x1 / 7x5 / 4000x3000,
rotation metadata, 10-bit 4:4:4, GIF, a still PNG passed as a video, random byte flips)
and reads each in a child process with a time limit. Every case must end in frames or a
``VideoError`` (a clear per-file error) within the limit: anything else (another
exception, a crash of the child, a hang) counts as a failure. Prints a table and writes
``results.json``; exit status 1 if any case failed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import numpy as np

from lmms_rekv.io.video import write_video


@dataclass
class Outcome:
    case: str
    result: str  # "frames" | "VideoError" | "failed: ..." | "hang" | "crash"
    frames: int
    seconds: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.result in ("frames", "VideoError")


def _encode(path: str, frames: np.ndarray, codec: str, pix_fmt: str, fps: int = 4, pts: Optional[List[int]] = None) -> str:
    from fractions import Fraction

    import av

    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _audio_only(path: str) -> str:
    import av

    with av.open(path, mode="w") as container:
        stream = container.add_stream("mp2", rate=44100)
        samples = (np.sin(np.arange(44100) / 20) * 8000).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 44100
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _clip(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def build_corpus(folder: str, flips: int = 10, seed: int = 0) -> Dict[str, str]:
    """Write the corpus to ``folder``; returns ``{case: path}``."""
    os.makedirs(folder, exist_ok=True)
    p = lambda name: os.path.join(folder, name)  # noqa: E731
    good = write_video(p("good.mp4"), _clip(24, 64, 64, seed), fps=4)
    data = open(good, "rb").read()
    cases: Dict[str, Callable[[], str]] = {
        "good": lambda: good,
        "zero-byte": lambda: open(p("zero.mp4"), "wb").close() or p("zero.mp4"),
        "truncated-half": lambda: _write(p("half.mp4"), data[: len(data) // 2]),
        "header-only": lambda: _write(p("header.mp4"), data[:64]),
        "wrong-extension": lambda: shutil.copyfile(good, p("really-mp4.avi")) or p("really-mp4.avi"),
        "audio-only": lambda: _audio_only(p("audio.mp4")),
        "one-frame": lambda: write_video(p("one.mp4"), _clip(1, 64, 64, seed), fps=4),
        "variable-frame-rate": lambda: _encode(p("vfr.mkv"), _clip(12, 64, 64, seed), "mpeg4", "yuv420p",
                                               pts=[0, 40, 90, 500, 520, 1400, 1410, 1420, 3000, 3100, 5000, 5001]),
        "size-1x1": lambda: _encode(p("tiny.mkv"), _clip(4, 1, 1, seed), "ffv1", "bgr0"),
        "size-7x5": lambda: _encode(p("odd.mkv"), _clip(4, 5, 7, seed), "ffv1", "bgr0"),
        "size-4000x3000": lambda: _encode(p("huge.mp4"), _clip(2, 3000, 4000, seed), "mpeg4", "yuv420p"),
        "rotated-90": lambda: rotate_mp4(write_video(p("rotated.mp4"), _clip(8, 48, 64, seed), fps=4)),
        "10bit-yuv444": lambda: _encode(p("deep.mkv"), _clip(6, 64, 64, seed), "ffv1", "yuv444p10le"),
        "gif": lambda: _encode(p("anim.gif"), _clip(6, 32, 32, seed), "gif", "rgb8"),  # (pal8 from rgb24 crashes PyAV 15)
        "still-png": lambda: _png(p("still.png"), _clip(1, 40, 40, seed)[0]),
    }
    rng = np.random.default_rng(seed)
    for i in range(flips):
        def flipped(i=i):
            blob = bytearray(data)
            for pos in rng.integers(0, len(blob), 1 + i % 8):
                blob[pos] ^= int(rng.integers(1, 256))
            return _write(p(f"flip{i}.mp4"), bytes(blob))
        cases[f"byte-flips-{i}"] = flipped
    return {name: make() for name, make in cases.items()}


def rotate_mp4(path: str) -> str:
    """Mark an mp4's video track as displayed rotated 90 degrees clockwise (the ``tkhd``
    matrix a phone writes for a portrait video), in place."""
    import struct

    data = bytearray(open(path, "rb").read())
    box = data.find(b"tkhd") - 4
    if box < 0:
        raise ValueError(f"{path}: no tkhd box")
    offset = box + (60 if data[box + 8] == 1 else 48)  # the matrix, after the version-dependent fields
    data[offset : offset + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    return _write(path, bytes(data))


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def _png(path: str, image: np.ndarray) -> str:
    import av

    with av.open(path, mode="w", format="image2") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _read(path: str, fps: float, queue) -> None:
    from lmms_rekv.io.video import VideoError, read_video

    try:
        frames = read_video(path, fps=fps)
        queue.put(("frames", int(frames.shape[0]), f"{tuple(frames.shape)} {frames.dtype}"))
    except VideoError as exc:
        queue.put(("VideoError", 0, str(exc)[:200]))
    except BaseException as exc:  # a failure of the reader: reported, the fuzz goes on
        queue.put((f"failed: {type(exc).__name__}", 0, str(exc)[:200]))


def read_case(name: str, path: str, fps: float = 1.0, limit_s: float = 60.0) -> Outcome:
    """``read_video(path)`` in a child process, killed after ``limit_s`` seconds."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_read, args=(path, fps, queue))
    start = time.monotonic()
    child.start()
    child.join(limit_s)
    seconds = time.monotonic() - start
    if child.is_alive():
        child.kill()
        child.join()
        return Outcome(name, "hang", 0, seconds, f"killed after {limit_s:g} s")
    if queue.empty():
        return Outcome(name, "crash", 0, seconds, f"exit status {child.exitcode}")
    result, frames, detail = queue.get()
    return Outcome(name, result, frames, seconds, detail)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the corpus and results.json")
    parser.add_argument("--flips", type=int, default=20, help="byte-flip mutants of a valid mp4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=float, default=60.0, help="seconds per file before it counts as a hang")
    args = parser.parse_args(argv)
    corpus = build_corpus(os.path.join(args.out, "corpus"), args.flips, args.seed)
    outcomes = [read_case(name, path, limit_s=args.limit) for name, path in corpus.items()]
    width = max(len(o.case) for o in outcomes)
    for o in outcomes:
        print(f"{o.case:<{width}}  {o.result:<12} {o.frames:>4} frames  {o.seconds:6.2f} s  {o.detail[:90]}")
    failed = [o for o in outcomes if not o.ok]
    summary = {"cases": len(outcomes), "frames": sum(o.result == "frames" for o in outcomes),
               "video_errors": sum(o.result == "VideoError" for o in outcomes), "failures": len(failed),
               "hangs": sum(o.result == "hang" for o in outcomes), "crashes": sum(o.result == "crash" for o in outcomes),
               "slowest_s": max(o.seconds for o in outcomes)}
    print(json.dumps(summary))
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump({"summary": summary, "outcomes": [asdict(o) for o in outcomes]}, fh, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
