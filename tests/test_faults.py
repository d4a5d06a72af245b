"""Issue 16 (short version of ``python -m lmms_rekv.tools.faults``): a writer killed with
SIGKILL while saving an encoded video never leaves an entry that loads torn."""

from __future__ import annotations

import os


def test_kill_9_while_saving_never_loads_a_torn_entry(tmp_path):
    from lmms_rekv.tools.faults import run

    summary = run(str(tmp_path / "faults"), trials=4, seed=1)
    assert summary["torn"] == summary["crash"] == 0 and summary["loaded"] + summary["refused"] == 4


def test_save_replaces_atomically_and_removes_a_dead_writers_leftovers(load, frames, tmp_path):
    engine = load(window_tokens=48, topk_frames=4, chunk_frames=4)
    session = engine.new_session()
    session.add_frames(frames(6, seed=3))
    entry = str(tmp_path / "entry")
    dead = f"{entry}.tmp999999999"  # no such process
    os.makedirs(dead)
    session.save(entry)
    session.add_frames(frames(2, seed=4))
    session.save(entry)  # over an existing entry: moved aside, replaced, removed
    assert sorted(os.listdir(tmp_path)) == ["entry"]
    assert engine.open_session(entry).frames == 8
