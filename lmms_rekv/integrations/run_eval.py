"""``rekv-eval``: lmms-eval's command line, with failures that show.

    rekv-eval --model rekv_llava_ov --model_args pretrained=DIR --tasks rekv_demo --output_path out

Takes exactly lmms-eval's arguments and runs ``python -m lmms_eval`` with them, adding
``--include_path`` of the tasks shipped here when none is given. lmms-eval exits 0 when an
evaluation raises (unless ``--verbosity DEBUG``), and ``rekv_llava_ov`` answers a document
that cannot be processed with an empty string so that long runs go on; ``rekv-eval`` turns
both into a non-zero exit: 1 when lmms-eval wrote no results, 1 when any document failed
(pass ``--allow-failed-docs`` to accept failed documents), else lmms-eval's own status.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Tuple

from lmms_rekv.io.console import interruptible

ALLOW_FLAG = "--allow-failed-docs"
LISTING = ("list", "list_groups", "list_subtasks", "list_tags")
MODELS = ("rekv", "rekv_llava_ov")  # this plugin's model names (``plugin.py``)
USAGE = f"""usage: rekv eval --model rekv --model_args pretrained=CHECKPOINT[,FIELD=VALUE...] --tasks TASKS [lmms-eval options] [{ALLOW_FLAG}]

lmms-eval's command line (every lmms-eval option below), with failures that show:
  {ALLOW_FLAG}   exit 0 even when documents failed (they are scored as empty answers)
  --include_path      defaults to the tasks shipped with lmms-rekv
  --output_path       defaults to a temporary folder
--model_args of rekv are checked before lmms-eval starts (ReKVConfig fields, lmms-eval's
llava_onevision / qwen2_5_vl / qwen3_vl arguments)."""


def option(argv: List[str], name: str) -> Optional[str]:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``argv`` (last one wins)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def tasks_dir() -> str:
    """The folder of the task configs shipped with lmms-rekv."""
    import lmms_rekv.tasks

    return os.path.dirname(os.path.abspath(lmms_rekv.tasks.__file__))


def prepare(argv: List[str]) -> Tuple[List[str], bool, Optional[str]]:
    """``(lmms-eval argv, allow failed docs, temporary output dir or None)``."""
    allow = ALLOW_FLAG in argv
    args = [a for a in argv if a != ALLOW_FLAG]
    if option(args, "--include_path") is None:
        args += ["--include_path", tasks_dir()]
    scratch = None
    if option(args, "--output_path") is None:
        scratch = tempfile.mkdtemp(prefix="rekv-eval-")
        args += ["--output_path", scratch]
    return args, allow, scratch


def read_failures(path: str, offset: int) -> List[dict]:
    """Failure records appended to ``path`` after byte ``offset``."""
    if not os.path.isfile(path):
        return []
    with open(path) as fh:
        fh.seek(offset)
        return [json.loads(line) for line in fh if line.strip()]


def verdict(output: str, started: float, failures: List[dict], allow: bool) -> Tuple[int, str]:
    """``(exit status, one-line message)`` of a finished lmms-eval run."""
    results = [p for p in glob.glob(os.path.join(output, "**", "*_results.json"), recursive=True) if os.path.getmtime(p) >= started - 1]
    if not results:
        return 1, f"rekv-eval: FAILED: lmms-eval wrote no results under {output} -- the evaluation raised (see the error above)"
    if failures:
        first = failures[0]
        where = f"{first.get('task')} doc {first.get('doc_id')} ({first.get('video')}): {first.get('error')}"
        message = f"{len(failures)} document(s) failed and were scored as empty answers; first: {where}"
        if not allow:
            return 1, f"rekv-eval: FAILED: {message} (pass {ALLOW_FLAG} to accept)"
        return 0, f"rekv-eval: finished with {message}"
    return 0, f"rekv-eval: finished, no failed document; results: {sorted(results)[-1]}"


def check_model_args(argv: List[str]) -> Optional[str]:
    """Why ``--model_args`` of a rekv model cannot work (None: they can, or another model)."""
    if option(argv, "--model") not in MODELS:
        return None
    from lmms_eval.utils import simple_parse_args_string

    from lmms_rekv.integrations.lmms_eval_model import ReKVLlavaOV

    try:
        ReKVLlavaOV.check_args(simple_parse_args_string(option(argv, "--model_args") or ""))
    except (ValueError, OSError) as exc:
        return f"rekv eval: bad --model_args: {exc}"
    return None


@interruptible("rekv eval")
def main(argv: Optional[List[str]] = None) -> int:
    """``rekv eval``; lmms-eval's exit status, or 1/2 as the module docstring says."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(f"rekv eval: missing arguments\n{USAGE}", file=sys.stderr)
        return 2
    if {"-h", "--help"} & set(argv):
        print(USAGE + "\n\nlmms-eval's options (lmms-eval eval --help):", flush=True)
        return subprocess.call([sys.executable, "-m", "lmms_eval", "eval", "--help"])
    if (option(argv, "--tasks") or "").startswith(LISTING):
        return subprocess.call([sys.executable, "-m", "lmms_eval", *argv])
    problem = check_model_args(argv)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    args, allow, scratch = prepare(argv)
    own_log = not os.environ.get("LMMS_REKV_FAILURES")
    log = os.path.join(tempfile.mkdtemp(prefix="rekv-failures-"), "failures.jsonl") if own_log else os.environ["LMMS_REKV_FAILURES"]
    offset = os.path.getsize(log) if os.path.isfile(log) else 0
    started = time.time()
    status = subprocess.call([sys.executable, "-m", "lmms_eval", *args], env=dict(os.environ, LMMS_REKV_FAILURES=log))
    try:
        if status != 0:
            print(f"rekv-eval: FAILED: lmms-eval exited with status {status}", flush=True)
            return status
        code, message = verdict(option(args, "--output_path"), started, read_failures(log, offset), allow)
        print(message, flush=True)
        return code
    finally:
        for folder in (scratch, os.path.dirname(log) if own_log else None):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
