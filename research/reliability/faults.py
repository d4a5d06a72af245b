"""``python -m research.reliability.faults``: kill -9 a process while it encodes and saves
videos, then a full disk and denied permissions (``fault_scenarios``).

    python -m research.reliability.faults --out faults_out --trials 40

Each trial starts a writer process that loads the tiny model, encodes a clip and saves the
session to one cache entry over and over (``session.save``: temporary folder, checksums,
atomic rename) -- every other trial with the disk tier, encoding (and spilling) again before
each save -- kills it with SIGKILL at a random moment, then opens the entry as a later run
would. Disk-tier folders of the killed writers must be removed by the next disk-tier session. Outcomes: ``loaded`` (a complete entry whose every block, summary
and window tensor equals the reference session bit for bit), ``refused`` (the entry is
missing or fails its checksums: the video is re-encoded) -- both fine -- or ``torn`` (it
loaded but differs) and ``crash`` (any other exception): failures. Writes
``results.json``; exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import torch

from research import module_command

CONFIG = dict(window_tokens=48, topk_frames=4, chunk_frames=4)
FRAMES = 13


def _clip() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (FRAMES, 48, 48, 3), dtype=np.uint8)


def _config(tier: str, scratch: str) -> dict:
    """The memory tier, or the disk tier spilling to ``scratch`` (RAM for 2 frames)."""
    return CONFIG if tier == "memory" else dict(CONFIG, offload="disk", ram_budget_bytes=4096, offload_dir=scratch)


def writer(model_dir: str, entry: str, tier: str = "memory", scratch: str = "") -> None:
    """The victim: save the same session to ``entry`` until killed (the disk tier's writer
    encodes the clip again before each save, so the kill also lands while it spills)."""
    from lmms_rekv import ReKVConfig, ReKVLlavaOneVision

    config = ReKVConfig(**_config(tier, scratch))
    engine = ReKVLlavaOneVision.from_pretrained(model_dir, config=config, dtype="float32", device="cpu")
    session = _encoded(engine)
    print("ready", flush=True)
    while True:
        session.save(entry)
        if tier == "disk":
            session.close()
            session = _encoded(engine)


def _encoded(engine):
    session = engine.new_session()
    session.add_frames(_clip())
    session.flush()
    return session


def _snapshot(session) -> List[torch.Tensor]:
    store, st = session.state.store, session.state
    out = [store.all_summaries()]
    for layer in range(store.layers):
        for f in range(store.blocks):
            out.extend(store.block(layer, f))
    return out + list(st.sink_k) + list(st.sink_v) + list(st.win_k) + list(st.win_v)


def trial(engine, reference: List[torch.Tensor], model_dir: str, entry: str, rng: random.Random, max_delay: float,
          tier: str = "memory", scratch: str = "") -> Dict:
    from lmms_rekv.storage.backends.segments import CorruptSegmentError

    child = subprocess.Popen([*module_command("research.reliability.faults"), "--writer", model_dir, entry, tier, scratch],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = child.stdout.readline()
    if line.strip() != "ready":
        child.kill()
        raise RuntimeError("the writer process did not start")
    delay = rng.uniform(0, max_delay)
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    child.wait()
    leftovers = sorted(os.listdir(os.path.dirname(entry)))
    try:
        session = engine.open_session(entry)
    except (OSError, ValueError, CorruptSegmentError) as exc:  # missing, or fails its checksums: re-encode
        return {"tier": tier, "delay_s": delay, "outcome": "refused", "detail": f"{type(exc).__name__}: {exc}"[:160]}
    except Exception as exc:  # noqa: BLE001 -- reported as a failure
        return {"tier": tier, "delay_s": delay, "outcome": "crash", "detail": f"{type(exc).__name__}: {exc}"[:160]}
    got = _snapshot(session)
    same = len(got) == len(reference) and all(torch.equal(a, b) for a, b in zip(got, reference))
    session.close()
    return {"tier": tier, "delay_s": delay, "outcome": "loaded" if same else "torn", "detail": "", "folders": leftovers}


def run(out: str, trials: int, seed: int = 0, max_delay: float = 0.5, scenarios: bool = True) -> Dict:
    from lmms_rekv import ReKVConfig, ReKVLlavaOneVision
    from research.tiny import build_tiny_model

    os.makedirs(out, exist_ok=True)
    model_dir = os.path.join(out, "tiny-model")
    if not os.path.isfile(os.path.join(model_dir, "model.safetensors")):
        build_tiny_model(model_dir)
    engine = ReKVLlavaOneVision.from_pretrained(model_dir, config=ReKVConfig(**CONFIG), dtype="float32", device="cpu")
    ref = engine.new_session()
    ref.add_frames(_clip())
    ref.flush()
    reference = _snapshot(ref)
    rng = random.Random(seed)
    entry, scratch = os.path.join(out, "cache", "entry"), os.path.join(out, "scratch")
    os.makedirs(os.path.dirname(entry), exist_ok=True)
    results = []
    for i in range(trials):
        if i % 4 >= 2:  # half the trials start without an entry: the first save can be cut short too
            shutil.rmtree(entry, ignore_errors=True)
        tier = "disk" if i % 2 else "memory"  # the disk tier's writer also spills while it encodes
        results.append(trial(engine, reference, model_dir, entry, rng, max_delay, tier, scratch))
        r = results[-1]
        print(f"trial {i + 1}/{trials} ({tier}): {r['outcome']} (killed after {r['delay_s']:.3f} s) {r['detail']}", flush=True)
    counts = {k: sum(r["outcome"] == k for r in results) for k in ("loaded", "refused", "torn", "crash")}
    summary = {"trials": trials, **counts, **_scratch_cleanup(model_dir, scratch)}
    checks = _scenarios(model_dir, out) if scenarios else []
    summary.update(checks=len(checks), checks_failed=[c["check"] for c in checks if not c["ok"]])
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump({"summary": summary, "trials": results, "checks": checks}, fh, indent=1)
    print(json.dumps(summary), flush=True)
    return summary


def _scratch_cleanup(model_dir: str, scratch: str) -> Dict[str, int]:
    """Disk-tier folders the killed writers left, and how many remain once a new disk-tier
    session starts in the same place (it removes those of dead processes)."""
    from lmms_rekv import ReKVConfig, ReKVLlavaOneVision

    def dead() -> int:
        return len([n for n in os.listdir(scratch) if n.startswith("rekv-") and not n.startswith(f"rekv-{os.getpid()}-")])

    left = dead() if os.path.isdir(scratch) else 0
    engine = ReKVLlavaOneVision.from_pretrained(model_dir, config=ReKVConfig(**_config("disk", scratch)), dtype="float32", device="cpu")
    engine.new_session().close()
    return {"scratch_folders_left_by_killed_writers": left, "scratch_folders_after_next_session": dead()}


def _scenarios(model_dir: str, out: str) -> List[Dict]:
    """Full disk and permission denied (``fault_scenarios``), each in a child process."""
    from .fault_scenarios import run_scenario

    checks = []
    for name in ("full-disk", "permissions"):
        work = os.path.join(out, name)
        shutil.rmtree(work, ignore_errors=True)
        for check in run_scenario(name, model_dir, work):
            checks.append(check)
            print(f"{'ok  ' if check['ok'] else 'FAIL'} {check['check']}: {check['detail']}", flush=True)
    return checks


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--writer"]:
        writer(*argv[1:5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=0.5, help="kill within this many seconds after the first save starts")
    args = parser.parse_args(argv)
    summary = run(args.out, args.trials, args.seed, args.max_delay)
    return 1 if summary["torn"] or summary["crash"] or summary["checks_failed"] or summary["scratch_folders_after_next_session"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
