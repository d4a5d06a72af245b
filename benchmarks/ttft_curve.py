"""``python -m benchmarks.ttft_curve``: time to first token against stream length, four methods,
repeats interleaved.

    python -m benchmarks.ttft_curve --preset tiny --frames 16 64 256 1024 --repeats 7 --out DIR

Methods, at every stream length N:

* ``rekv``: one ReKV session streamed to N frames (the package defaults for retrieval: top-k
  blocks with the latest one kept), then asked;
* ``full``: one full-attention session (unbounded window, every block in the answer) streamed
  to N, while N fits the model's positions;
* ``uniform``: vanilla ``generate`` on k frames sampled uniformly from the N (re-encoded at each
  question, as a baseline without memory would);
* ``last-k``: vanilla ``generate`` on the last k frames (SimpleStream-like: no memory).

Time to first token is measured with one generated token: for the sessions, from the question to
its first token (the frames are already encoded); for the two vanilla baselines, from the k
frames' pixels to the first token (their encoding is part of answering). One session per method
and length is streamed and held; each repeat then asks every method at every length once, in an
order that rotates from repeat to repeat (``benchmarks.bench.interleaved``), after one warm-up
round that is not kept; median and min-max per method and length. The machine, its threads and its load average
before and after are recorded. Writes ``results.json``, ``results.md`` and ``ttft.png``.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from .bench import PRESETS, QUESTION, build_engines, build_sessions, frames_at, interleaved, machine_name, spread, vanilla_seconds

logger = logging.getLogger(__name__)
METHODS = ("rekv", "full", "uniform", "last-k")


def _vanilla(engine, frames: np.ndarray) -> Callable[[], Dict[str, float]]:
    """Times vanilla generate (one token) on ``frames``, pixels included."""
    return lambda: {"ttft_s": vanilla_seconds(engine, frames, 1)}


def _session(session) -> Callable[[], Dict[str, float]]:
    return lambda: {"ttft_s": session.answer(QUESTION, max_new_tokens=1, eos_token_ids=()).first_token_seconds}


def measure(rekv, full, lengths: List[int], k: int, repeats: int, chunk: int) -> Dict[str, List[dict]]:
    """``{method: [{frames, ttft_s (median), min_s, max_s, samples}]}`` over ``lengths``: one session
    per method and length, held, then ``repeats`` rounds interleaved across methods and lengths."""
    built = {"rekv": build_sessions(rekv, lengths, chunk, "rekv streams"), "full": build_sessions(full, lengths, chunk, "full streams")}
    asks = {(m, n): _session(s) for m, b in built.items() for n, s in b["sessions"].items()}
    for n in sorted(lengths):
        asks[("uniform", n)] = _vanilla(rekv, frames_at(np.linspace(0, n - 1, min(k, n)).round().astype(int)))
        asks[("last-k", n)] = _vanilla(rekv, frames_at(np.arange(max(0, n - k), n)))
    try:
        samples = interleaved(asks, repeats)
    finally:
        for b in built.values():
            for session in b["sessions"].values():
                session.close()
    out: Dict[str, List[dict]] = {m: [] for m in METHODS}
    for (method, n), measured in sorted(samples.items(), key=lambda item: item[0][1]):
        values = measured["ttft_s"]
        s = spread(values)
        out[method].append({"frames": n, "ttft_s": s["median"], "min_s": s["min"], "max_s": s["max"], "samples": values})
    return out


def markdown(results: dict) -> str:
    head = (f"Time to first token (one token), {results['preset']} preset, {results['machine']}, dtype {results['dtype']}; "
            f"median of {results['repeats']} interleaved repeats after a warm-up round, [min, max] beside it; top-"
            f"{results['topk']} / k = {results['k']} frames for the baselines; load average {results['load_before']} before, "
            f"{results['load_after']} after.\n\n")
    lines = ["| frames | " + " | ".join(METHODS) + " |", "|---:" + "|---:" * len(METHODS) + "|"]
    for n in results["lengths"]:
        cells = []
        for m in METHODS:
            row = next((p for p in results["curve"][m] if p["frames"] == n), None)
            cells.append("--" if row is None else f"{1000 * row['ttft_s']:.1f} ms [{1000 * row['min_s']:.1f}, {1000 * row['max_s']:.1f}]")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    ratios = results["ratios"]
    tail = "\n\n" + "; ".join(f"{m}: {ratios[m]:.2f}x" for m in METHODS if ratios.get(m) is not None)
    return head + "\n".join(lines) + tail + f" (TTFT at {results['lengths'][-1]} frames over {results['lengths'][0]})\n"


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in METHODS:
        pts = results["curve"][m]
        if pts:
            x = [p["frames"] for p in pts]
            y = [1000 * p["ttft_s"] for p in pts]
            err = [[1000 * (p["ttft_s"] - p["min_s"]) for p in pts], [1000 * (p["max_s"] - p["ttft_s"]) for p in pts]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=m)
    ax.set(xscale="log", yscale="log", xlabel="stream length (frames)", ylabel="time to first token (ms)",
           title=f"TTFT ({results['preset']}, {results['machine']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(preset: str, lengths: List[int], repeats: int, k: Optional[int], device: torch.device, dtype) -> dict:
    cfg = PRESETS[preset]
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="rekv-ttft-") as workdir:
        rekv, full = build_engines(preset, workdir, device, dtype, cfg)
    k = k or cfg.topk
    curve = measure(rekv, full, lengths, k, repeats, cfg.chunk)
    first, last = min(lengths), max(lengths)

    def at(m: str, n: int) -> Optional[float]:
        return next((p["ttft_s"] for p in curve[m] if p["frames"] == n), None)

    ratios = {m: (at(m, last) / at(m, first) if at(m, last) and at(m, first) else None) for m in METHODS}
    return {"preset": preset, "machine": machine_name(device), "dtype": str(dtype).replace("torch.", ""),
            "threads": torch.get_num_threads(), "lengths": sorted(lengths), "repeats": repeats, "k": k,
            "topk": rekv.config.topk_frames, "recent_frames": rekv.config.recent_frames, "curve": curve, "ratios": ratios,
            "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()]}


def main(argv: Optional[List[str]] = None) -> int:
    from lmms_rekv.model import resolve_dtype

    parser = argparse.ArgumentParser(prog="python -m benchmarks.ttft_curve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--k", type=int, default=None, help="frames the uniform / last-k baselines see (default: the preset's top-k)")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    from research.miniature.accuracy import write_outputs

    results = run(args.preset, args.frames, args.repeats, args.k, device, resolve_dtype(args.dtype, device))
    write_outputs(args.out, results, markdown(results), lambda r, folder: plot(r, os.path.join(folder, "ttft.png")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
