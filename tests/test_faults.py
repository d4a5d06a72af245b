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


FULL_DISK = r"""
import os, resource, signal, sys
import numpy as np
from lmms_rekv import ReKVConfig, ReKVLlavaOneVision
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit: EFBIG, as on a full disk
model, work = sys.argv[1], sys.argv[2]
cfg = ReKVConfig(window_tokens=48, topk_frames=4, chunk_frames=4, offload="disk", ram_budget_bytes=4096, offload_dir=work)
engine = ReKVLlavaOneVision.from_pretrained(model, config=cfg, dtype="float32", device="cpu")
session = engine.new_session()
video = np.random.default_rng(0).integers(0, 256, (8, 48, 48, 3), dtype=np.uint8)
session.add_frames(video)
before = session.answer("what is happening?", max_new_tokens=3).token_ids
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
entry = os.path.join(work, "entry")
try:
    session.save(entry)
except OSError as exc:
    print("SAVE:", exc)
print("LEFT:", sorted(n for n in os.listdir(work) if n.startswith("entry")))
print("SAME:", session.answer("what is happening?", max_new_tokens=3).token_ids == before)
try:
    session.add_frames(np.concatenate([video, video]))
except OSError as exc:
    print("SPILL:", exc)
"""


def test_a_full_disk_names_the_path_and_leaves_nothing_half_written(tiny_dir, tmp_path):
    """A file-size limit (EFBIG, like ENOSPC) while saving and while the disk tier spills:
    the error names the file or folder; a failed save leaves no partial entry and the session
    answers as before."""
    import subprocess
    import sys

    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, str(script), tiny_dir, str(work)], capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"SAVE: [Errno 27] cannot save the session to {work / 'entry'}" in out
    assert "LEFT: []" in out and "SAME: True" in out
    assert "SPILL: [Errno 27] cannot write " in out and ".bin" in out
