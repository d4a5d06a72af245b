"""The installed package: complete wheel and sdist, the shipped lock, ``doctor``, ``rekv-eval``."""

import glob
import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_SUFFIXES = (".yaml", ".json", ".txt", ".safetensors", ".jinja")


def _setuptools_config() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)["tool"]["setuptools"]


def _source_tree() -> dict:
    """``{path inside the wheel: path in the checkout}`` of every module and data file the
    package folders hold (data folders such as the miniature's weights included), following
    the ``package-dir`` mapping."""
    mapping = _setuptools_config()["package-dir"]
    files = {}
    for package, folder in mapping.items():
        base = os.path.join(ROOT, folder)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            relative = os.path.relpath(dirpath, base)
            target = package.replace(".", "/") + ("" if relative == "." else "/" + relative)
            for name in filenames:
                if name.endswith(".py") or name.endswith(DATA_SUFFIXES):
                    files[f"{target}/{name}"] = os.path.join(dirpath, name)
    return files


def test_every_package_folder_is_listed():
    listed = set(_setuptools_config()["packages"])
    folders = {os.path.dirname(path).replace("/", ".") for path in _source_tree() if path.endswith(".py")}
    assert folders - listed == set(), "add these packages to pyproject.toml [tool.setuptools] packages"
    assert listed - folders == set(), "listed packages with no folder"


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """A wheel and an sdist built from the checkout, as a user's ``pip install`` would."""
    out, tree = tmp_path_factory.mktemp("dist"), tmp_path_factory.mktemp("src") / "tree"
    # build from a copy: setuptools' build/ folder must neither land in the checkout nor leak stale files in
    skip = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "out", "*.egg-info", "__pycache__", ".hf_home", ".pytest_cache")
    shutil.copytree(ROOT, tree, ignore=skip)
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--sdist", "--outdir", str(out), str(tree)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (wheel,) = glob.glob(str(out / "*.whl"))
    (sdist,) = glob.glob(str(out / "*.tar.gz"))
    return wheel, sdist


def test_wheel_holds_every_module_and_data_file(dists):
    wheel, _ = dists
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set(_source_tree())
    assert expected - names == set(), "missing from the wheel"
    for required in ("lmms_rekv/requirements-lock.txt", "lmms_rekv/storage/backends/disk.py", "lmms_rekv/patches/llava_onevision.py",
                     "lmms_rekv/patches/base.py", "lmms_rekv/miniature/weights/model.safetensors",
                     "lmms_rekv/tasks/rekv_demo/rekv_demo.yaml", "lmms_rekv/tasks/rekv_demo/rekv_demo.json"):
        assert required in names
    assert not [n for n in names if n.startswith(("patches/", "tasks/", "tests/"))], "top-level packages leaked into the wheel"
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "rekv_llava_ov = lmms_rekv.integrations.plugin:manifest" in entry_points and "rekv-eval" in entry_points


def test_the_wheel_ships_the_library_commands_and_assets_only(dists):
    """What users install: the library, the user commands and the runtime assets (the
    miniature's weights and embedder, the task configs, the lock) -- not the research code
    (miniature training and studies, reliability harnesses), the benchmarks and their
    results, the random-model builders or the tests, which stay in the repository."""
    wheel, _ = dists
    names = set(zipfile.ZipFile(wheel).namelist())
    code = {n for n in names if n.endswith(".py")}
    for command in ("cli", "live", "demo", "world", "doctor", "convert", "flags"):
        assert f"lmms_rekv/commands/{command}.py" in code
    for asset in ("lmms_rekv/miniature/weights/model.safetensors", "lmms_rekv/miniature/weights/clip/open_clip_model.safetensors",
                  "lmms_rekv/miniature/world.py", "lmms_rekv/py.typed", "lmms_rekv/requirements-lock.txt"):
        assert asset in names
    moved = {"tiny.py", "tiny_qwen.py", "soak.py", "faults.py", "fault_scenarios.py", "fuzz_videos.py", "quant_eval.py", "bench.py",
             "bench_live.py", "presets.py", "accounting.py", "train.py", "accuracy.py", "position_study.py", "retrieval_study.py"}
    leaked = [n for n in names if n.startswith(("research/", "benchmarks/", "lmms_rekv/tools/", "docs/", "scripts/"))
              or n in code and os.path.basename(n) in moved]
    assert leaked == []
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    scripts = {line.split(" = ")[0] for line in entry_points.splitlines() if " = lmms_rekv.commands." in line or "run_eval" in line}
    assert scripts == {"rekv", "rekv-live", "rekv-demo", "rekv-doctor", "rekv-eval"}


def test_sdist_rebuilds_the_same_package(dists):
    _, sdist = dists
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    for path in _source_tree().values():
        assert os.path.relpath(path, ROOT) in names


def test_installed_package_is_the_one_under_test():
    """Under ``scripts/test_installed.sh`` the suite must exercise site-packages, not the checkout."""
    import lmms_rekv

    location = os.path.dirname(os.path.abspath(lmms_rekv.__file__))
    if os.environ.get("REKV_EXPECT_INSTALLED"):
        assert not location.startswith(ROOT + os.sep) and "site-packages" in location, location
        for package in ("lmms_rekv.patches", "lmms_rekv.tasks", "lmms_rekv.storage.backends"):
            assert importlib.import_module(package).__file__.startswith(location)
    assert os.path.isfile(os.path.join(location, "requirements-lock.txt"))


def test_lock_pins_every_dependency_exactly():
    from lmms_rekv.commands.doctor import LOCK_FILE, canonical, read_lock

    pins = read_lock()
    assert pins, LOCK_FILE
    for name in ("torch", "torchvision", "transformers", "lmms-eval", "open-clip-torch", "av", "filelock", "pytest"):
        assert canonical(name) in pins, name
    from packaging.version import Version

    assert Version(pins["filelock"]) < Version("4.3")  # the known break
    assert "lmms-rekv" not in pins


# -- doctor -------------------------------------------------------------------------------
def _doctor(*args):
    return subprocess.run([sys.executable, "-m", "lmms_rekv.commands.doctor", *args], capture_output=True, text=True, timeout=300)


def test_doctor_all_green_here():
    proc = _doctor()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all green" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    for name in ("torch", "torchvision", "transformers", "lmms-eval", "open-clip-torch", "av", "filelock"):
        assert f"  {name} " in proc.stdout
    assert "rekv_llava_ov -> lmms_rekv.integrations.lmms_eval_model.ReKVLlavaOV" in proc.stdout


def test_doctor_fails_without_its_lock(tmp_path):
    proc = _doctor("--lock", str(tmp_path / "nowhere.txt"))
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert "1 problem(s)" in proc.stdout and "nowhere.txt is missing" in proc.stdout


def test_doctor_flags_the_filelock_break():
    from lmms_rekv.commands import doctor

    real = doctor.installed_version
    report = doctor.Report()
    doctor.check_versions(report, doctor.read_lock(), lambda name: "4.3.1" if name == "filelock" else real(name))
    assert len(report.problems) == 1 and report.problems[0].startswith("filelock 4.3.1 is outside lmms-rekv's bound <4.3")
    assert any("BREAKS" in line for line in report.lines)
    report = doctor.Report()
    doctor.check_versions(report, {"transformers": "0.0.1"}, real)
    assert report.problems == [] and any("untested" in line for line in report.lines)


def test_doctor_failed_check_is_one_line_and_exit_1(monkeypatch, capsys):
    from lmms_rekv.commands import doctor

    def broken():
        raise RuntimeError("operator torchvision::nms does not exist\nmore detail")

    monkeypatch.setattr(doctor, "_torchvision", broken)
    for name in ("_devices", "_entry_point", "_evaluator", "_pyav", "_modules"):
        monkeypatch.setattr(doctor, name, lambda: "stubbed")
    assert doctor.main([]) == 1
    out = capsys.readouterr().out
    assert "FAIL  torchvision: RuntimeError: operator torchvision::nms does not exist" in out
    assert "more detail" not in out and "torch and torchvision do not match" in out
