"""``python -m research.reliability.soak``: one long stream through one session.

    python -m research.reliability.soak --out soak_out                 # 18,000 frames (10 h at 0.5 fps)
    python -m research.reliability.soak --out soak_out --frames 600    # a short run

The tiny random model streams ``--frames`` generated frames through one session on the disk
tier with a small RAM budget and the retrieval index in host RAM (``summary_tier="cpu"``),
asking a question every ``--question-every`` frames. Each interval records the host RSS,
every byte the session holds on the model's device (KV of the sinks + window; and, when the
interval ends inside a chunk, the provisional tail: at most one window + one chunk), the KV in RAM
and on disk, the retrieval index in RAM, and the encoding time per frame. At
``--checkpoints`` frame counts a fresh session is fed the same frames and must answer with
the same tokens and bit-identical logits. Writes ``results.json`` and ``soak.png``, prints a
table; exit status 1 when an answer differs or the device bytes are not flat.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

QUESTION = "what is happening?"
CONFIG = dict(window_tokens=64, topk_frames=8, chunk_frames=8, offload="disk", summary_tier="cpu")
RAM_FRAMES = 64  # the disk tier keeps at most this many frames in RAM
BATCH = 8  # frames per add_frames call (a camera handing over a few frames at a time)


def _frames(first: int, count: int, size: int = 48) -> np.ndarray:
    """Frames ``first..first+count-1`` of a reproducible stream: frame ``i`` depends on
    ``i`` alone, however the stream is cut into calls."""
    from research.tiny import noise_frames

    return noise_frames(first, count, size)


def _feed(session, first: int, last: int) -> None:
    """Frames ``first..last-1`` in calls cut on the stream's grid of ``BATCH`` frames (the
    chunk size), whatever ``first``: every interval does the same encoding work."""
    lo = first
    while lo < last:
        hi = min(last, (lo // BATCH + 1) * BATCH)
        session.add_frames(_frames(lo, hi - lo))
        lo = hi


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _answer(session):
    return session.answer(QUESTION, max_new_tokens=4, return_logits=True, eos_token_ids=())


def _fresh_matches(engine, frames: int, answer) -> bool:
    """A fresh session fed frames ``0..frames-1`` answers identically (tokens, logits)."""
    fresh = engine.new_session()
    try:
        _feed(fresh, 0, frames)
        other = _answer(fresh)
    finally:
        fresh.close()
    return other.token_ids == answer.token_ids and all(torch.equal(a, b) for a, b in zip(other.logits, answer.logits))


def _row(session, frames: int, encode_s: float, encode_cpu_s: float, interval: int, answer_s: float, same: Optional[bool]) -> Dict:
    stats = session.stats()
    return {"frames": frames, "rss_mb": round(rss_bytes() / 2**20, 1), "device_bytes": stats["device_bytes"],
            "device_kv_bytes": stats["device_kv_bytes"], "index_host_bytes": stats["index_host_bytes"], "cpu_bytes": stats["cpu_bytes"],
            "disk_bytes": stats["disk_bytes"], "encode_ms_per_frame": round(1000 * encode_s / interval, 3),
            "encode_cpu_ms_per_frame": round(1000 * encode_cpu_s / interval, 3),
            "answer_s": round(answer_s, 4), "fresh_session_same": same}


def run(out: str, frames: int = 18_000, question_every: int = 500, checkpoints: Sequence[int] = (), model_dir: Optional[str] = None,
        progress: bool = True) -> Dict:
    """The soak; returns ``{"rows": [...], "summary": {...}}`` (also written to ``out``)."""
    from tqdm.auto import tqdm

    from lmms_rekv import ReKVConfig, ReKVLlavaOneVision
    from research.tiny import build_tiny_model

    os.makedirs(out, exist_ok=True)
    model_dir = model_dir or os.path.join(out, "tiny-model")
    if not os.path.isfile(os.path.join(model_dir, "model.safetensors")):
        build_tiny_model(model_dir)
    probe = ReKVLlavaOneVision.from_pretrained(model_dir, config=ReKVConfig(**dict(CONFIG, offload="cpu")), dtype="float32", device="cpu")
    budget = RAM_FRAMES * probe.new_session().stats()["kv_bytes_per_block"]
    engine = probe.with_config(ReKVConfig(**CONFIG, ram_budget_bytes=budget, offload_dir=os.path.join(out, "scratch")))
    session, rows, checks = engine.new_session(), [], set(checkpoints) | {frames}
    start = time.perf_counter()
    with tqdm(total=frames, desc="soak", unit="frame", disable=not progress) as bar:
        for first in range(0, frames, question_every):
            last = min(frames, first + question_every)
            t0, c0 = time.perf_counter(), time.process_time()
            _feed(session, first, last)
            encode_s, encode_cpu_s = time.perf_counter() - t0, time.process_time() - c0
            t0 = time.perf_counter()
            answer = _answer(session)
            answer_s = time.perf_counter() - t0
            same = _fresh_matches(engine, last, answer) if last in checks else None
            rows.append(_row(session, last, encode_s, encode_cpu_s, last - first, answer_s, same))
            bar.update(last - first)
    session.close()
    summary = _summary(rows, time.perf_counter() - start, budget)
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump({"config": dict(CONFIG, ram_budget_bytes=budget, batch=BATCH, question_every=question_every),
                   "summary": summary, "rows": rows}, fh, indent=1)
    _plot(rows, os.path.join(out, "soak.png"))
    return {"rows": rows, "summary": summary}


def _summary(rows: List[Dict], seconds: float, budget: int) -> Dict:
    """Flatness figures: the first interval is the warm-up (the window fills), so growth is
    measured from the second one to the last."""
    first, last = rows[min(1, len(rows) - 1)], rows[-1]
    encode = [r["encode_ms_per_frame"] for r in rows[1:]] or [rows[0]["encode_ms_per_frame"]]
    cpu = [r["encode_cpu_ms_per_frame"] for r in rows[1:]] or [rows[0]["encode_cpu_ms_per_frame"]]
    sixth = max(1, len(encode) // 6)
    checked = [r["fresh_session_same"] for r in rows if r["fresh_session_same"] is not None]
    return {
        "frames": last["frames"], "seconds": round(seconds, 1),
        "peak_rss_mb": max(r["rss_mb"] for r in rows), "rss_growth_mb": round(last["rss_mb"] - first["rss_mb"], 1),
        "device_bytes_min": min(r["device_bytes"] for r in rows[1:] or rows),
        "device_bytes_max": max(r["device_bytes"] for r in rows[1:] or rows),
        # flat: the peak over the second half of the stream is the peak over the first half
        "device_bytes_peak_first_half": max(r["device_bytes"] for r in rows[: max(1, len(rows) // 2)]),
        "device_bytes_peak_second_half": max(r["device_bytes"] for r in rows[len(rows) // 2 :]),
        "index_host_bytes_end": last["index_host_bytes"], "cpu_bytes_max": max(r["cpu_bytes"] for r in rows),
        "ram_budget_bytes": budget, "disk_bytes_end": last["disk_bytes"],
        "encode_ms_per_frame_median": float(np.median(encode)),
        # flatness: medians over the first and the last sixth of the intervals (after the warm-up)
        "encode_ms_per_frame_first_sixth": float(np.median(encode[:sixth])),
        "encode_ms_per_frame_last_sixth": float(np.median(encode[-sixth:])),
        # the process's CPU time (all threads): insensitive to other work on the machine
        "encode_cpu_ms_per_frame_first_sixth": float(np.median(cpu[:sixth])),
        "encode_cpu_ms_per_frame_last_sixth": float(np.median(cpu[-sixth:])),
        "checkpoints": len(checked), "checkpoints_same": sum(bool(c) for c in checked),
    }


def _plot(rows: List[Dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["frames"] for r in rows]
    fig, (mem, enc) = plt.subplots(1, 2, figsize=(11, 4))
    mem.plot(x, [r["rss_mb"] for r in rows], label="host RSS")
    mem.plot(x, [r["cpu_bytes"] / 2**20 for r in rows], label="KV in RAM (disk tier)")
    mem.plot(x, [r["disk_bytes"] / 2**20 for r in rows], label="KV on disk")
    mem.plot(x, [r["device_bytes"] / 2**20 for r in rows], label="on the model's device (all)")
    mem.plot(x, [r["index_host_bytes"] / 2**20 for r in rows], label="retrieval index in RAM")
    mem.set_xlabel("frames streamed")
    mem.set_ylabel("MiB")
    mem.legend(fontsize=8)
    enc.plot(x, [r["encode_ms_per_frame"] for r in rows], label="wall clock")
    enc.plot(x, [r["encode_cpu_ms_per_frame"] for r in rows], label="CPU time (all threads)")
    enc.legend(fontsize=8)
    enc.set_xlabel("frames streamed")
    enc.set_ylabel("encode ms / frame")
    enc.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows: List[Dict], every: int = 1) -> str:
    lines = ["| frames | host RSS MiB | device B | index in RAM B | RAM KV B | disk MiB | encode ms/frame (wall, CPU) | fresh session same |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows[::every] if rows[-1] in rows[::every] else rows[::every] + rows[-1:]:
        same = "" if r["fresh_session_same"] is None else ("yes" if r["fresh_session_same"] else "NO")
        lines.append(f"| {r['frames']:,} | {r['rss_mb']} | {r['device_bytes']:,} | {r['index_host_bytes']:,} | "
                     f"{r['cpu_bytes']:,} | {r['disk_bytes'] / 2**20:.1f} | {r['encode_ms_per_frame']}, {r['encode_cpu_ms_per_frame']} | {same} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--frames", type=int, default=18_000)
    parser.add_argument("--question-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the CPU time per frame is then the work done, not threads waiting)")
    parser.add_argument("--checkpoints", type=int, nargs="*", default=None,
                        help="frame counts where a fresh session must answer the same (default: 1/3, 2/3 and the end)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    every = args.question_every
    checkpoints = args.checkpoints
    if checkpoints is None:
        checkpoints = [round(args.frames * k / 3 / every) * every for k in (1, 2)]
    result = run(args.out, args.frames, every, checkpoints)
    summary = result["summary"]
    print(table(result["rows"], every=max(1, len(result["rows"]) // 12)))
    print(json.dumps(summary))
    flat = summary["device_bytes_peak_first_half"] == summary["device_bytes_peak_second_half"]
    return 0 if flat and summary["checkpoints_same"] == summary["checkpoints"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
