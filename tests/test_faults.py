"""Issue 16 (short version of ``python -m research.reliability.faults``): a writer killed with
SIGKILL while encoding and saving never leaves an entry that loads torn; a full disk and
denied permissions name the path and lose nothing."""

from __future__ import annotations

import os

import pytest


def test_kill_9_while_saving_never_loads_a_torn_entry(tmp_path):
    """Writers on the memory and the disk tier killed at random moments: nothing torn, no
    crash, the disk-tier folders of the killed writers removed by the next session."""
    from research.reliability.faults import run

    summary = run(str(tmp_path / "faults"), trials=4, seed=1, scenarios=False)
    assert summary["torn"] == summary["crash"] == 0 and summary["loaded"] + summary["refused"] == 4
    assert summary["scratch_folders_left_by_killed_writers"] >= 1 and summary["scratch_folders_after_next_session"] == 0


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


@pytest.mark.parametrize("scenario", ["full-disk", "permissions"])
def test_full_disk_and_denied_permissions_name_the_path_and_lose_nothing(tiny_dir, tmp_path, scenario):
    """In a child process (``research.reliability.fault_scenarios``): a file-size limit (EFBIG,
    like ENOSPC) or a folder without write/read permission (root drops the capabilities
    that let it ignore permissions) while saving, creating the disk tier and spilling: the
    error names the path; a failed save leaves no partial entry and the session answers as
    before; after a failed spill no frame is lost and, once writing works again, the session
    ends bit-identical to one that never failed; lmms-eval answers past an unreadable,
    read-only cache."""
    from research.reliability.fault_scenarios import run_scenario

    checks = run_scenario(scenario, tiny_dir, str(tmp_path / "work"), timeout=600)
    assert len(checks) == {"full-disk": 6, "permissions": 8}[scenario]
    assert [c for c in checks if not c["ok"]] == []
