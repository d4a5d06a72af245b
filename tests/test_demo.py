"""The README's demo (`python -m lmms_rekv.commands.demo`) on the trained miniature: it runs, shows no
traceback, and every line it prints about a question agrees with the world's ground truth."""

import os
import subprocess
import sys

from lmms_rekv.commands.demo import run_miniature_demo
from lmms_rekv.miniature import world


def test_demo_rows_follow_the_world(tmp_path, monkeypatch):
    monkeypatch.setenv("LMMS_REKV_HOME", str(tmp_path))
    result = run_miniature_demo(frames=24, burst=8, seed=3)
    rng = world.rng_for(world.HELD_OUT, 100_000 + 3)
    episode = world.make_episode(rng, 24)
    assert [(r["question"], r["truth"], tuple(r["needle_seconds"])) for r in result["rows"]] == \
        [(q.text, q.answer, q.frames) for q in episode.questions]
    for row in result["rows"]:
        for name in ("internal", "external"):
            per_layer = row[name]["per_layer"]
            assert len(per_layer) == 3 and all(len(layer) == 4 and all(0 <= i < 24 for i in layer) for layer in per_layer)
            assert row[name]["retrieved_seconds"] == sorted({i for layer in per_layer for i in layer})
        assert len({tuple(layer) for layer in row["external"]["per_layer"]}) == 1  # external: one set for every layer
    assert result["stats"]["frames"] == 24


def test_demo_entry_point_prints_no_traceback(tmp_path):
    env = dict(os.environ, LMMS_REKV_HOME=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "lmms_rekv.commands.demo", "--frames", "16"], capture_output=True, text=True, env=env, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output
    assert output.count("Q: ") == len(world.KINDS) and "full attention:" in output
