"""``rekv live``: a generated world video followed as a live source -- from a file (paced in
real time or not) and from a named pipe fed by a writer process -- answering questions from
a timestamped file or typed on stdin."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from lmms_rekv.miniature import world


@pytest.fixture(scope="module")
def episode_video(tmp_path_factory):
    """A held-out 16-frame world episode written at 1 fps (scaled x4), and its episode."""
    from lmms_rekv.io.video import write_video

    rng = world.rng_for(world.HELD_OUT, 4242)
    episode = world.make_episode(rng, 16)
    frames = world.render(episode.objects, episode.colors, rng, scale=4)
    path = write_video(str(tmp_path_factory.mktemp("live") / "clip.mp4"), frames, fps=1)
    return path, episode


def _questions(tmp_path, episode, times):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"t": t, "q": q.text}) + "\n" for t, q in zip(times, episode.questions)))
    return str(path)


def test_live_file_answers_at_the_stream_times(episode_video, tmp_path):
    from lmms_rekv import ReKV, ReKVConfig
    from lmms_rekv.commands.live import main
    from lmms_rekv.io.video import iter_video

    path, episode = episode_video
    times = [15.0, 9.5, 100.0][: len(episode.questions)]  # the last one after the end
    out = io.StringIO()
    assert main([path, "--questions-file", _questions(tmp_path, episode, times), "--fps", "1"], out=out) == 0
    text = out.getvalue()
    blocks = [b for b in text.split("[") if "Q:" in b]
    assert len(blocks) == len(episode.questions)
    engine = ReKV.from_pretrained("miniature", dtype="float32", device="cpu")
    engine = engine.with_config(ReKVConfig(window_tokens=4 * engine.block_tokens, topk_frames=4, chunk_frames=2))
    frames = np.stack(list(iter_video(path, fps=1)))
    by_time = sorted(zip(times, episode.questions), key=lambda x: x[0])
    for block, (t, question) in zip(blocks, by_time):
        shown = float(block.split("s]")[0])
        assert shown == min(math.ceil(t), 15)  # frames at 0..15 s: asked once the stream reaches t, else at the end
        answer = block.split("A: ")[1].split("   (frames")[0]
        retrieved = [float(x) for x in block.split("retrieved at ")[1].split(" s)")[0].split(", ")]
        assert max(retrieved) <= shown and len(retrieved) <= 4
        fresh = engine.new_session(fps=1)
        fresh.add_frames(frames[: int(shown) + 1])
        assert fresh.ask(question.text, max_new_tokens=16).strip() == answer


def test_realtime_paces_a_file(episode_video):
    from lmms_rekv.io.video import iter_live

    path, _ = episode_video
    now = [0.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    times = [t for t, _ in iter_live(path, fps=2, realtime=True, clock=lambda: now[0], sleep=sleep)]
    assert times == [float(i) for i in range(16)]  # a 1 fps file sampled at 2 fps: every frame
    assert now[0] == pytest.approx(15.0)  # the last frame not before 15 s of wall time


def test_live_from_a_named_pipe_fed_by_a_writer(episode_video, tmp_path):
    """A FIFO fed by another process (MPEG-TS, streamable): frames are encoded as they arrive."""
    from lmms_rekv.commands.live import main

    _, episode = episode_video
    fifo = str(tmp_path / "camera.ts")
    os.mkfifo(fifo)
    writer_code = (
        "import sys, av, numpy as np\n"
        "from lmms_rekv.miniature import world\n"
        "rng = world.rng_for(world.HELD_OUT, 4242); ep = world.make_episode(rng, 16)\n"
        "frames = world.render(ep.objects, ep.colors, rng, scale=4)\n"
        "with av.open(sys.argv[1], mode='w', format='mpegts') as c:\n"
        "    s = c.add_stream('mpeg2video', rate=1); s.width = s.height = 64; s.pix_fmt = 'yuv420p'\n"
        "    for f in frames:\n"
        "        for p in s.encode(av.VideoFrame.from_ndarray(f, format='rgb24')): c.mux(p)\n"
        "    for p in s.encode(): c.mux(p)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", writer_code, fifo])
    out = io.StringIO()
    try:
        code = main([fifo, "--questions-file", _questions(tmp_path, episode, [3.0, 12.0, 14.0]), "--fps", "1"], out=out)
    finally:
        writer.wait(timeout=60)
    assert code == 0 and writer.returncode == 0
    assert out.getvalue().count("Q:") == len(episode.questions) and "A: " in out.getvalue()


def test_piped_questions_on_a_file_are_about_the_whole_video(episode_video, tmp_path):
    """``printf 'question' | rekv live clip.mp4``: a file read faster than real time is not live,
    so a piped question is answered once the whole video is encoded (it says so first), about
    frames after the first; then "end of stream"; equal to a session fed every frame."""
    from lmms_rekv import ReKV, ReKVConfig
    from lmms_rekv.commands.live import main
    from lmms_rekv.io.video import iter_video

    path, episode = episode_video
    question = episode.questions[0].text
    out = io.StringIO()
    assert main([path, "--fps", "1"], stdin=io.StringIO(question + "\n"), out=out) == 0
    text = out.getvalue()
    assert text.index("faster than real time") < text.index("end of stream at 15.00 s (16 frames)") < text.index("Q: ")
    retrieved = [float(x) for x in text.split("retrieved at ")[1].split(" s)")[0].split(", ")]
    assert max(retrieved) > 0 and text.count("Q:") == 1
    engine = ReKV.from_pretrained("miniature", dtype="float32", device="cpu")
    engine = engine.with_config(ReKVConfig(window_tokens=4 * engine.block_tokens, topk_frames=4, chunk_frames=2))
    fresh = engine.new_session(fps=1)
    fresh.add_frames(np.stack(list(iter_video(path, fps=1))))
    assert text.split("A: ")[1].split("   (frames")[0] == fresh.ask(question, max_new_tokens=16)


def test_live_source_answers_as_of_now_and_after_the_end_until_stdin_closes(episode_video):
    """On a live source a typed question is answered as of the frame it arrives at; one typed
    after the end of the stream is answered about everything seen (the command waits for
    stdin to close); the status line only moves forward and stays on screen at the end."""
    import queue

    from lmms_rekv import ReKV, ReKVConfig
    from lmms_rekv.commands.live import run_live
    from lmms_rekv.io.video import iter_video

    path, episode = episode_video
    frames = list(iter_video(path, fps=1))
    typed: "queue.Queue" = queue.Queue()

    def source():
        for i, frame in enumerate(frames):
            if i == 4:
                typed.put(episode.questions[0].text)  # typed while frame 4 arrives
            yield float(i), frame
        typed.put(episode.questions[1].text)  # typed after the end of the stream...
        typed.put(None)  # ...then stdin closes

    engine = ReKV.from_pretrained("miniature", dtype="float32", device="cpu")
    engine = engine.with_config(ReKVConfig(window_tokens=4 * engine.block_tokens, topk_frames=4, chunk_frames=2))
    out, status = io.StringIO(), io.StringIO()
    asked = run_live(engine, path, 1.0, typed=typed, out=out, status=status, frames=source(), live_source=True)
    assert [a.t for a in asked] == [4.0, 15.0] and max(asked[0].retrieved) <= 4.0 and max(asked[1].retrieved) > 4.0
    assert out.getvalue().index("end of stream at 15.00 s") < out.getvalue().index(episode.questions[1].text)
    shown = [line.split(" encoded")[0].split("frames ")[1] for line in status.getvalue().split("\r") if line.startswith("frames ")]
    encoded, received = zip(*[map(int, pair.split("/")) for pair in shown])
    assert list(encoded) == sorted(encoded) and list(received) == sorted(received) and received[-1] == 16
    assert status.getvalue().endswith("\n") and encoded[-1] == 16  # the final status stays, everything encoded


@pytest.mark.parametrize("questions", [0, 1])
def test_a_live_source_with_stdin_already_closed_ends_with_the_stream(episode_video, questions):
    """stdin closed during the stream (``< /dev/null``, or one piped question): the command ends
    when the stream does -- it used to wait forever on a closed stdin. (A hang detector: the
    whole run takes seconds; the limit is far above it.)"""
    import queue
    import threading

    from lmms_rekv import ReKV, ReKVConfig
    from lmms_rekv.commands.live import run_live
    from lmms_rekv.io.video import iter_video

    path, episode = episode_video
    typed: "queue.Queue" = queue.Queue()
    for q in episode.questions[:questions]:
        typed.put(q.text)
    typed.put(None)  # stdin closed before the stream starts
    engine = ReKV.from_pretrained("miniature", dtype="float32", device="cpu")
    engine = engine.with_config(ReKVConfig(window_tokens=4 * engine.block_tokens, topk_frames=4, chunk_frames=2))
    done: list = []
    frames = [(float(i), f) for i, f in enumerate(iter_video(path, fps=1))]
    worker = threading.Thread(target=lambda: done.append(run_live(engine, path, 1.0, typed=typed, out=io.StringIO(),
                                                                  frames=iter(frames), live_source=True)), daemon=True)
    worker.start()
    worker.join(timeout=600)
    assert done, "rekv live waited on a closed stdin after the end of the stream"
    assert len(done[0]) == questions


def test_rekv_live_takes_every_rekv_setting_flag(episode_video, tmp_path):
    """``--retrieval external`` (the miniature's embedder picked for it) and the other
    ReKVConfig flags reach the engine."""
    from lmms_rekv.commands import live

    path, episode = episode_video
    seen = {}
    real = live.run_live

    def spy(engine, *args, **kwargs):
        seen["config"] = engine.config
        return real(engine, *args, **kwargs)

    live.run_live = spy
    try:
        out = io.StringIO()
        args = [path, "--retrieval", "external", "--topk-frames", "3", "--kv-quant", "int8", "--questions-file",
                _questions(tmp_path, episode, [15.0])]
        assert live.main(args, out=out) == 0
    finally:
        live.run_live = real
    config = seen["config"]
    assert (config.retrieval, config.clip_model, config.topk_frames, config.kv_quant) == ("external", "miniature", 3, "int8")
    assert out.getvalue().count("Q:") == 1


def test_rekv_command_dispatches(capsys):
    from lmms_rekv.commands.cli import main

    assert main(["--help"]) == 0 and "live" in capsys.readouterr().out
    assert main([]) == 2 and "missing command" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2 and "unknown command 'no-such-command'" in capsys.readouterr().err
