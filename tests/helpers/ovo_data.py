"""OVO-Bench in its upstream format, built offline: a local copy of the documents' dataset
repository (``kcz358/OVOBench``: configs backward / realtime / forward, split test, the fields
of OVO-Bench's annotation file) that ``datasets.load_dataset`` reads from the working folder,
the chunk files lmms-eval's ovobench task reads (``{id}.mp4``: the source cut at the question's
time; ``{id}_{i}.mp4``: cut at round i's time), and the full source videos."""

from __future__ import annotations

import json
import os
from typing import Dict, List

import numpy as np

from lmms_rekv.io.video import write_video

CLIP_FPS = 4
SECONDS = 12


def source(seed: int) -> np.ndarray:
    """A 12 s source video (4 fps, 40 x 48): coloured tiles that change every second."""
    rng = np.random.default_rng(seed)
    tiles = rng.integers(0, 256, (SECONDS, 5, 6, 3), dtype=np.uint8)
    frames = np.repeat(np.repeat(tiles, 8, axis=1), 8, axis=2)
    return np.repeat(frames, CLIP_FPS, axis=0)


def documents() -> Dict[str, List[dict]]:
    """The documents of each config; ``video`` names the source (src_a / src_b)."""
    opts = ["a cup", "a pen", "a box", "a hat"]
    backward = [
        dict(id=0, task="EPM", video="clips/src_a.mp4", realtime=5.0, question="What did I pick up?", answer="a pen", options=opts, gt=1),
        dict(id=1, task="ASI", video="clips/src_a.mp4", realtime=9.0, question="What did I do next?", answer="a box", options=opts, gt=2),
        dict(id=2, task="HLD", video="clips/src_b.mp4", realtime=7.0, question="Which was odd?", answer="a cup", options=opts, gt=0),
    ]
    realtime = [
        dict(id=3, task="STU", video="clips/src_b.mp4", realtime=6.0, question="What is on screen?", answer="a hat", options=opts, gt=3),
        dict(id=4, task="OCR", video="clips/src_a.mp4", realtime=11.0, question="What is written?", answer="a cup", options=opts, gt=0),
    ]
    info = lambda t, **k: dict(dict(realtime=t, count=None, step=None, type=None), **k)  # noqa: E731
    forward = [
        dict(id=5, task="REC", video="clips/src_a.mp4", activity="clap", question=None,
             test_info=[info(3.0, count=0), info(7.0, count=1), info(11.0, count=2)]),
        dict(id=6, task="SSR", video="clips/src_b.mp4", activity=None, question=None,
             test_info=[info(4.0, step="open the box", type=0), info(8.5, step="open the box", type=1)]),
        dict(id=7, task="CRR", video="clips/src_a.mp4", activity=None, question="Is the box open?",
             test_info=[info(5.0, type=0), info(10.0, type=1)]),
    ]
    return {"backward": backward, "realtime": realtime, "forward": forward}


def write_dataset(root: str) -> str:
    """``root/kcz358/OVOBench``: the dataset repository, as ``load_dataset`` reads it offline
    when the working folder is ``root``. Returns the repository folder."""
    repo = os.path.join(root, "kcz358", "OVOBench")
    card = ["---", "configs:"]
    for name, docs in documents().items():
        os.makedirs(os.path.join(repo, name), exist_ok=True)
        with open(os.path.join(repo, name, "test.json"), "w") as fh:
            json.dump(docs, fh)
        card += [f"- config_name: {name}", "  data_files:", "  - split: test", f"    path: {name}/test.json"]
    with open(os.path.join(repo, "README.md"), "w") as fh:
        fh.write("\n".join(card + ["---", ""]))
    return repo


def write_videos(chunks: str, sources: str, lossless: bool = True) -> None:
    """The chunk files (``chunks``) and the full source videos (``sources/clips/*.mp4``)."""
    videos = {"clips/src_a.mp4": source(1), "clips/src_b.mp4": source(2)}
    for name, frames in videos.items():
        write_video(os.path.join(sources, name), frames, fps=CLIP_FPS, lossless=lossless)
    cut = lambda doc, t: videos[doc["video"]][: int(round(t * CLIP_FPS)) + 1]  # noqa: E731  (frames up to t)
    for name, docs in documents().items():
        for doc in docs:
            if name == "forward":
                for i, info in enumerate(doc["test_info"]):
                    write_video(os.path.join(chunks, f"{doc['id']}_{i}.mp4"), cut(doc, info["realtime"]), fps=CLIP_FPS, lossless=lossless)
            else:
                write_video(os.path.join(chunks, f"{doc['id']}.mp4"), cut(doc, doc["realtime"]), fps=CLIP_FPS, lossless=lossless)
