"""Fault scenarios run in a child process (``python -m research.reliability.fault_scenarios
SCENARIO MODEL_DIR WORK``), each printing one JSON line per check:
``{"check": name, "ok": bool, "detail": str}``.

* ``full-disk``: a file-size limit (``EFBIG``, as ``ENOSPC`` on a full disk) while saving
  an encoded video and while the disk tier spills.
* ``permissions``: folders without write or read permission (when run as root, the child
  first drops the capabilities that let root ignore permissions).

Used by ``python -m research.reliability.faults`` (the figures in the README) and by the tests.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
from typing import Callable, List

import numpy as np
import torch

QUESTION = "what is happening?"
DISK = dict(window_tokens=48, topk_frames=4, chunk_frames=4, offload="disk", ram_budget_bytes=4096)


def _report(check: str, ok: bool, detail: str = "") -> None:
    print(json.dumps({"check": check, "ok": bool(ok), "detail": detail[:300]}), flush=True)


def _video(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 48, 3), dtype=np.uint8)


def _engine(model_dir: str, **config):
    from lmms_rekv import ReKVConfig, ReKVLlavaOneVision

    return ReKVLlavaOneVision.from_pretrained(model_dir, config=ReKVConfig(**config), dtype="float32", device="cpu")


def _same_answer(session, reference) -> bool:
    got, want = (s.answer(QUESTION, max_new_tokens=3, return_logits=True) for s in (session, reference))
    return got.token_ids == want.token_ids and all(torch.equal(a, b) for a, b in zip(got.logits, want.logits))


def _expect_oserror(check: str, action: Callable[[], object], must_name: str) -> None:
    """``action`` must raise an ``OSError`` whose message names ``must_name``."""
    try:
        action()
    except OSError as exc:
        _report(check, must_name in str(exc), f"{type(exc).__name__}: {exc}")
        return
    _report(check, False, "no error raised")


def _spill_then_recover(engine, break_it: Callable[[], None], mend: Callable[[], None], check: str) -> None:
    """A disk-tier session whose spill fails: the error names the segment, no frame is lost,
    and once writing works again the session ends bit-identical to one that never failed."""
    video, more = _video(8), _video(16, seed=1)
    session = engine.new_session()
    session.add_frames(video)
    break_it()
    try:
        _expect_oserror(f"{check}: failed spill names the segment", lambda: session.add_frames(more), ".bin")
        _report(f"{check}: no frame lost", session.frames == 24, f"{session.frames} frames")
    finally:
        mend()
    session.add_frames(video[:3])
    reference = engine.new_session()
    reference.add_frames(np.concatenate([video, more, video[:3]]))
    _report(f"{check}: afterwards equal to a session that never failed", _same_answer(session, reference))
    session.close()
    reference.close()


def full_disk(model_dir: str, work: str) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit: EFBIG, as on a full disk
    engine = _engine(model_dir, **DISK, offload_dir=os.path.join(work, "scratch"))
    unlimited = resource.getrlimit(resource.RLIMIT_FSIZE)
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2000, unlimited[1]))  # noqa: E731
    restore = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, unlimited)  # noqa: E731
    session = engine.new_session()
    session.add_frames(_video(8))
    before = session.answer(QUESTION, max_new_tokens=3).token_ids
    entry = os.path.join(work, "entry")
    limit()
    try:
        _expect_oserror("full disk: save names the entry", lambda: session.save(entry), f"cannot save the session to {entry}")
    finally:
        restore()
    _report("full disk: no partial entry", not [n for n in os.listdir(work) if n.startswith("entry")])
    _report("full disk: session answers as before", session.answer(QUESTION, max_new_tokens=3).token_ids == before)
    _spill_then_recover(engine, limit, restore, "full disk")


def _drop_root_privileges() -> None:
    """Root ignores file permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): drop both from
    this process so that permissions apply to it as to any user (Linux ``capset``)."""
    if os.geteuid() != 0:
        return
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    keep = ~((1 << 1) | (1 << 2)) & 0xFFFFFFFF  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    data[0].effective &= keep
    data[0].permitted &= keep
    data[0].inheritable &= keep
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def permissions(model_dir: str, work: str) -> None:
    _drop_root_privileges()
    read_only = os.path.join(work, "read-only")
    os.makedirs(read_only)
    os.chmod(read_only, 0o555)
    engine = _engine(model_dir, window_tokens=48, topk_frames=4, chunk_frames=4)
    session = engine.new_session()
    session.add_frames(_video(8))
    before = session.answer(QUESTION, max_new_tokens=3).token_ids
    entry = os.path.join(read_only, "entry")
    _expect_oserror("permission denied: save names the entry", lambda: session.save(entry), f"cannot save the session to {entry}")
    _report("permission denied: session answers as before", session.answer(QUESTION, max_new_tokens=3).token_ids == before)
    disk = _engine(model_dir, **DISK, offload_dir=os.path.join(read_only, "scratch"))
    _expect_oserror("permission denied: disk tier folder named", disk.new_session, f"cannot create the disk tier's folder in {read_only}")
    disk = _engine(model_dir, **DISK, offload_dir=os.path.join(work, "scratch"))
    folder: List[str] = []

    def lock() -> None:
        folder.append(disk_folder(work))
        os.chmod(folder[0], 0o555)

    _spill_then_recover(disk, lock, lambda: os.chmod(folder[0], 0o755), "permission denied")
    _unreadable_cache_entry(engine, session, work, model_dir)


def disk_folder(work: str) -> str:
    """The one live disk-tier folder under ``work/scratch``."""
    scratch = os.path.join(work, "scratch")
    names = [n for n in os.listdir(scratch) if n.startswith(f"rekv-{os.getpid()}-")]
    return os.path.join(scratch, sorted(names)[-1])


def _unreadable_cache_entry(engine, session, work: str, model_dir: str) -> None:
    entry = os.path.join(work, "entry")
    session.save(entry)
    state = os.path.join(entry, "state.safetensors")
    os.chmod(state, 0o000)
    _expect_oserror("permission denied: unreadable entry named", lambda: engine.open_session(entry), state)
    from lmms_rekv.integrations.lmms_eval_model import ReKVLlavaOV
    from lmms_rekv.io.video import write_video

    video = write_video(os.path.join(work, "clip.mp4"), _video(12), fps=4)
    cache = os.path.join(work, "cache")
    lm = ReKVLlavaOV(pretrained=model_dir, dtype="float32", device="cpu", window_tokens=48, topk_frames=4,
                     chunk_frames=4, fps=2, cache_dir=cache)
    answer = _generate(lm, video)
    for path in [os.path.join(cache, n, "state.safetensors") for n in os.listdir(cache)]:
        os.chmod(path, 0o000)  # the cached entry becomes unreadable: re-encoded
    os.chmod(cache, 0o555)  # ... and cannot be replaced: answered all the same
    again = _generate(lm, video)
    _report("permission denied: lmms-eval answers past an unreadable, read-only cache",
            again == answer and not lm.failures and lm.videos_decoded == 2, f"{again!r} vs {answer!r}, {lm.failures}")
    os.chmod(cache, 0o755)


def _generate(lm, video: str) -> str:
    from lmms_eval.api.instance import Instance

    args = (QUESTION, {"max_new_tokens": 3, "until": []}, lambda d: [video], 0, "t", "test")
    lm.task_dict = {"t": {"test": [{}]}}
    request = Instance(request_type="generate_until", arguments=args, idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1})
    return lm.generate_until([request])[0]


SCENARIOS = {"full-disk": full_disk, "permissions": permissions}


def run_scenario(name: str, model_dir: str, work: str, timeout: float = 600) -> List[dict]:
    """Run scenario ``name`` in a child process; returns its checks (a crash is one failed
    check carrying the child's last output)."""
    import subprocess

    os.makedirs(work, exist_ok=True)
    from research import module_command

    proc = subprocess.run([*module_command("research.reliability.fault_scenarios"), name, model_dir, work],
                          capture_output=True, text=True, timeout=timeout)
    checks = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"check"')]
    if proc.returncode != 0:
        checks.append({"check": f"{name}: child process", "ok": False, "detail": proc.stderr[-2000:]})
    return checks


def main(argv=None) -> int:
    name, model_dir, work = (sys.argv[1:] if argv is None else argv)[:3]
    SCENARIOS[name](model_dir, work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
