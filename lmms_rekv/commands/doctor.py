"""``python -m lmms_rekv.commands.doctor``: check an installation against the tested lock.

Prints the versions of the packages lmms-rekv depends on next to the versions the test
suite passed with (``lmms_rekv/requirements-lock.txt``), then runs a few functional checks:
torchvision imports, the devices torch sees, lmms-eval finds ``rekv_llava_ov`` through its
entry point and can set up its evaluator, PyAV encodes and decodes a tiny clip, and every
module of the package imports. Exits 1 with a one-line hint per problem, else 0. A version
that differs from the lock is reported as untested, not as a problem, unless it violates a
bound the package declares (those bounds mark known breaks).
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import pkgutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from ..io.console import interruptible
from .flags import Parser

DISTRIBUTION = "lmms-rekv"
SHIPPED_LOCK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "requirements-lock.txt")
LOCK_FILE = os.environ.get("LMMS_REKV_LOCK") or SHIPPED_LOCK  # scripts/lock.sh tests a candidate lock
REPORTED = ("torch", "torchvision", "transformers", "lmms-eval", "open-clip-torch", "av", "filelock")
REINSTALL_HINT = "reinstall from the tested lock: pip install -c <lmms_rekv>/requirements-lock.txt 'lmms-rekv[clip]'"


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-_.`` as one ``-``."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: str = LOCK_FILE) -> Dict[str, str]:
    """``{canonical name: version}`` of the ``name==version`` lines of a lock file."""
    pins: Dict[str, str] = {}
    if not os.path.isfile(path):
        return pins
    with open(path) as fh:
        for line in fh:
            line = line.split("#", 1)[0].strip()
            if "==" in line and not line.startswith("-"):
                name, version = line.split("==", 1)
                pins[canonical(name.split("[", 1)[0])] = version.split(";", 1)[0].strip()
    return pins


def installed_version(name: str) -> Optional[str]:
    """The installed version of a distribution, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@dataclass
class Report:
    """What the checks found: lines to print and problems (one hint each)."""

    lines: List[str] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)

    def check(self, label: str, fn: Callable[[], str], hint: str) -> None:
        """Run ``fn`` (returns a detail string); an exception is a problem with ``hint``."""
        try:
            self.lines.append(f"  ok    {label}: {fn()}")
        except Exception as exc:  # every failure becomes one line, never a traceback
            detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            self.lines.append(f"  FAIL  {label}: {detail}")
            self.problems.append(f"{label}: {hint}")


def declared_bounds() -> Dict[str, object]:
    """``{canonical name: Requirement}`` of the package's own (non-extra) requirements."""
    from packaging.requirements import Requirement

    bounds = {}
    for text in metadata.requires(DISTRIBUTION) or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": "clip"}):
            bounds[canonical(req.name)] = req
    return bounds


def check_versions(report: Report, lock: Dict[str, str], version_of=installed_version) -> None:
    """One line per reported package: installed vs locked; a declared bound violated is a problem."""
    try:
        bounds = declared_bounds()
    except metadata.PackageNotFoundError:
        bounds = {}
        report.problems.append(f"{DISTRIBUTION} is not installed as a distribution: pip install lmms-rekv (or scripts/install.sh)")
    report.lines.append(f"versions (tested lock: {LOCK_FILE if lock else 'missing'}):")
    for name in REPORTED:
        have, want = version_of(name), lock.get(canonical(name))
        bound = bounds.get(canonical(name))
        if have is None:
            status = "MISSING"
            if bound is not None:
                report.problems.append(f"{name} is not installed: {REINSTALL_HINT}")
        elif bound is not None and bound.specifier and not bound.specifier.contains(have, prereleases=True):
            status = f"BREAKS  (lmms-rekv needs {name}{bound.specifier})"
            report.problems.append(f"{name} {have} is outside lmms-rekv's bound {bound.specifier} (a known break): {REINSTALL_HINT}")
        elif want is not None and have.split("+", 1)[0] != want.split("+", 1)[0]:
            status = "untested (differs from the lock)"
        else:
            status = "ok" if want is not None else "not in the lock"
        report.lines.append(f"  {name:<16} {have or '-':<16} lock {want or '-':<14} {status}")


def _torchvision() -> str:
    import torchvision

    torchvision.ops.nms  # noqa: B018  (the op registration fails on a torch/torchvision mismatch)
    return torchvision.__version__


def _devices() -> str:
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return f"torch {torch.__version__} sees " + ", ".join(found)


def _entry_point() -> str:
    from lmms_eval.models import get_model

    from lmms_rekv.integrations.plugin import MODEL_ID

    cls = get_model(MODEL_ID)
    return f"{MODEL_ID} -> {cls.__module__}.{cls.__name__}"


def _evaluator() -> str:
    from lmms_eval import evaluator

    setup = getattr(evaluator, "_enable_reentrant_filelocks", None)
    if setup is None:
        return "imports (no file-lock set-up in this lmms-eval)"
    setup()
    return "imports and sets up its file locks"


def _pyav() -> str:
    import numpy as np

    from lmms_rekv.io.video import read_video, write_video

    frames = np.zeros((4, 16, 16, 3), dtype=np.uint8)
    frames[:, :, :8] = 200
    with tempfile.TemporaryDirectory() as tmp:
        path = write_video(os.path.join(tmp, "clip.mp4"), frames, fps=4)
        back = read_video(path, fps=4)
    if back.shape[0] != 4:
        raise RuntimeError(f"wrote 4 frames, read {back.shape[0]}")
    import av

    return f"PyAV {av.__version__} wrote and read back a 4-frame clip"


def _modules() -> str:
    import lmms_rekv

    names = []
    for package in ("lmms_rekv", "lmms_rekv.patches", "lmms_rekv.tasks"):  # the last two are mapped folders
        path = importlib.import_module(package).__path__
        names += [package] + [m.name for m in pkgutil.walk_packages(path, package + ".") if not m.name.endswith("__main__")]
    for name in dict.fromkeys(names):
        importlib.import_module(name)
    return f"{len(names)} modules of lmms_rekv import (from {os.path.dirname(lmms_rekv.__file__)})"


def run_checks(lock_path: str = LOCK_FILE, version_of=installed_version) -> Report:
    """All checks; the report's ``problems`` is empty when the installation is healthy."""
    report = Report()
    check_versions(report, read_lock(lock_path), version_of)
    if not os.path.isfile(lock_path):
        report.problems.append(f"the tested lock {lock_path} is missing: reinstall lmms-rekv")
    report.lines.append("checks:")
    report.check("torchvision", _torchvision, "torch and torchvision do not match: reinstall the pair from the lock (torch/torchvision lines)")
    report.check("devices", _devices, "torch does not import: reinstall torch from the lock")
    report.check("lmms-eval model", _entry_point, "lmms-eval cannot load rekv_llava_ov: reinstall lmms-rekv into the venv that runs lmms-eval")
    report.check("lmms-eval evaluator", _evaluator, f"lmms-eval's evaluator fails with these packages: {REINSTALL_HINT}")
    report.check("video I/O", _pyav, "PyAV cannot encode/decode H.264: pip install 'av>=12' (wheels bundle FFmpeg)")
    report.check("package", _modules, "a module of lmms_rekv is missing or broken: reinstall lmms-rekv from a complete wheel")
    return report


@interruptible("rekv doctor")
def main(argv: Optional[List[str]] = None) -> int:
    parser = Parser(prog="rekv doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--lock", default=LOCK_FILE, help="lock file to compare against (default: the shipped one)")
    args = parser.parse_args(argv)
    report = run_checks(args.lock)
    print(f"lmms-rekv doctor (python {sys.version.split()[0]}, {sys.platform})")
    print("\n".join(report.lines))
    if report.problems:
        print(f"{len(report.problems)} problem(s):")
        print("\n".join(f"  - {p}" for p in report.problems))
        return 1
    print("all green")
    return 0


if __name__ == "__main__":
    sys.exit(main())
