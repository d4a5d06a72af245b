"""OVO-format multi-round documents on the trained miniature: is a chunk file the stream
answered before, cut later? Encode time and answers with and without stream reuse.

Each document is a held-out episode of the miniature's world (40 world frames, 2 s each, 80 s
video) cut at 3 moments as OVO-Bench cuts its streams: chunk i is the source up to round i's
time, written as its own file -- lossless (frames identical across chunks) or lossy H.264
re-encoded separately (the prefix frames differ slightly, as in OVO-Bench's chunks). Round i
asks a question the chunk can answer (its needles are shown before the cut). For every chunk
kind the same documents run through the lmms-eval model (``generate_until_multi_round``)
with reuse off (every round encoded from zero), exact reuse (the default) and, for lossy
chunks, reuse within a thumbnail tolerance; reported: wall time, frames encoded, agreement of
the answers with the no-reuse run, accuracy (chance beside it), and how far the prefix frames
of consecutive chunks are apart next to how far consecutive distinct frames are.

    python -m benchmarks.ovo_reuse --out benchmarks/cpu-miniature-ovo-reuse
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time

import numpy as np

FIRST_SEED, FRAMES, CUTS, SECONDS_PER_FRAME, SCALE = 9100, 40, (16, 28, 40), 2, 8


def episode(seed: int):
    from lmms_rekv.miniature import world

    rng = world.rng_for(world.HELD_OUT, seed)
    ep = world.make_episode(rng, FRAMES, depth=0.2)
    return ep, np.repeat(world.render(ep.objects, ep.colors, rng, scale=SCALE), SECONDS_PER_FRAME, axis=0)


def documents(folder: str, episodes: int, lossless: bool):
    """``[{rounds: [(chunk path, question, answer)]}]`` and the chunk files under ``folder``."""
    from lmms_rekv.io.video import write_video

    docs = []
    for k in range(episodes):
        ep, video = episode(FIRST_SEED + k)
        rounds = []
        for i, cut in enumerate(CUTS):
            path = write_video(os.path.join(folder, f"{k}_{i}.mp4"), video[: cut * SECONDS_PER_FRAME], fps=1, lossless=lossless)
            usable = [q for q in ep.questions if max(q.frames) < cut]
            q = usable[i % len(usable)]
            rounds.append((path, q.text, q.answer))
        docs.append({"rounds": rounds})
    return docs


def requests(lm, docs):
    from lmms_eval.api.instance import Instance

    def doc_to_text(doc, previous_output, round_idx, previous_round_info):
        if round_idx >= len(doc["rounds"]):
            return None, None, True, previous_output, None
        path, question, _ = doc["rounds"][round_idx]
        return [path], question, False, previous_output, None

    lm.task_dict = {"ovo": {"test": docs}}
    return [Instance(request_type="generate_until_multi_round", idx=0, metadata={"task": "ovo", "doc_id": i, "repeats": 1},
                     arguments=(d["rounds"][0][1], {"max_new_tokens": 4}, lambda d: [d["rounds"][0][0]], doc_to_text, i, "ovo", "test"))
            for i, d in enumerate(docs)]


def run(lm, docs, reuse: bool, tolerance: float) -> dict:
    lm.runner.settings = dataclasses.replace(lm.runner.settings, reuse_streams=reuse, stream_tolerance=tolerance)
    encoded, spent = [], []
    real = lm.engine.new_session

    def counting(fps=None):
        session = real(fps=fps)
        encode = session.writer.encode

        def timed(pixels, state=None):
            start = time.perf_counter()
            encode(pixels, state)
            encoded.append(pixels.shape[0])
            spent.append(time.perf_counter() - start)

        session.writer.encode = timed
        return session

    lm.engine.new_session = counting
    try:
        start = time.perf_counter()
        answers = lm.generate_until_multi_round(requests(lm, docs))
        seconds = time.perf_counter() - start
    finally:
        lm.engine.new_session = real
    words = [a.lower().split()[0] if a.split() else "" for doc in answers for a in doc]
    truth = [r[2] for d in docs for r in d["rounds"]]
    return {"seconds": seconds, "encode_seconds": sum(spent), "frames_encoded": sum(encoded), "answers": words,
            "accuracy": float(np.mean([w == t for w, t in zip(words, truth)]))}


def prefix_gaps(docs, fps: float) -> dict:
    """Thumbnail mean-absolute differences (0-255 levels): between a chunk's frames and the
    same moments in the next chunk (max), and between consecutive distinct world frames (min)."""
    from lmms_rekv.integrations.streams import thumbnail
    from lmms_rekv.io.video import read_video

    same, distinct, identical = [], [], 0
    for doc in docs:
        chunks = [read_video(path, fps=fps) for path, _, _ in doc["rounds"]]
        for a, b in zip(chunks, chunks[1:]):
            for x, y in zip(a, b[: len(a)]):
                identical += int(np.array_equal(x, y))
                same.append(float(np.abs(thumbnail(x) - thumbnail(y)).mean()))
        last = chunks[-1]
        distinct += [float(np.abs(thumbnail(x) - thumbnail(y)).mean()) for x, y in zip(last, last[1:])]
    return {"same_moment_max": max(same), "same_moment_mean": float(np.mean(same)), "identical_pairs": identical,
            "pairs": len(same), "distinct_frames_min": min(distinct), "distinct_frames_median": float(np.median(distinct))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--tolerance", type=float, default=2.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import torch

    from lmms_rekv.integrations.lmms_eval_model import ReKVLlavaOV

    torch.set_num_threads(os.cpu_count() or 1)
    lm = ReKVLlavaOV(pretrained="miniature", dtype="float32", device="cpu", window_tokens=16, topk_frames=4, fps=0.5)
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__}",
              "episodes": args.episodes, "rounds": len(CUTS), "cuts_seconds": [c * SECONDS_PER_FRAME for c in CUTS], "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, lossless in (("lossless", True), ("lossy", False)):
            docs = documents(os.path.join(tmp, kind), args.episodes, lossless)
            report[f"{kind}_prefix"] = prefix_gaps(docs, 0.5)
            settings = [("no reuse", False, 0.0), ("exact reuse", True, 0.0)]
            if not lossless:
                settings.append((f"tolerance {args.tolerance:g}", True, args.tolerance))
            base = None
            for name, reuse, tol in settings:
                result = run(lm, docs, reuse, tol)
                base = base or result
                result["agreement_with_no_reuse"] = float(np.mean([a == b for a, b in zip(result["answers"], base["answers"])]))
                report["runs"][f"{kind}, {name}"] = result
    report["chance"] = "colour 1/8, before 1/15, same 1/2 (per question kind)"
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
