"""The ``rekv`` commands on bad input: a one-line error naming the problem, exit status 2, no
traceback -- and, for everything that can be known then, before any model is loaded (the
loader is replaced by one that fails the test if called). Each subcommand's ``--help`` names
itself and lists the shared ReKV flags."""

from __future__ import annotations

import io

import pytest
import torch

from lmms_rekv import ReKV


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(ReKV, "from_pretrained", classmethod(refuse))


@pytest.fixture
def clip(tmp_path):
    from lmms_rekv.miniature import world_video

    return world_video(str(tmp_path / "world.mp4"), seconds=4).path


LIVE = [
    (["/nowhere/clip.mp4"], "/nowhere/clip.mp4: no such file"),
    (["CLIP", "--topk-frames", "0"], "--topk-frames must be a positive int or None, got 0"),
    (["CLIP", "--window-tokens", "-1"], "--window-tokens must be a positive int or None, got -1"),
    (["CLIP", "--retrieval", "magic"], "--retrieval must be one of"),
    (["CLIP", "--kv-quant", "int3"], "--kv-quant"),
    (["CLIP", "--fps", "0"], "--fps must be > 0, got 0"),
    (["CLIP", "--device", "bogus"], "--device 'bogus' is not a device"),
    (["CLIP", "--questions-file", "/nowhere/q.jsonl"], "/nowhere/q.jsonl"),
]
if not torch.cuda.is_available():
    LIVE.append((["CLIP", "--device", "cuda"], "--device cuda: no CUDA device on this machine"))


@pytest.mark.parametrize("argv,message", LIVE, ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_rekv_live_bad_input(argv, message, clip, no_model_loads, capsys):
    from lmms_rekv.commands.live import main

    assert main([clip if a == "CLIP" else a for a in argv], stdin=io.StringIO(), out=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.startswith("rekv live: ") and message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv,message", [
    (["--topk-frames", "0"], "--topk-frames must be a positive int or None, got 0"),
    (["--device", "bogus"], "--device 'bogus' is not a device"),
    (["--window-tokens", "lots"], "--window-tokens: cannot read 'lots' as int"),
])
def test_rekv_demo_bad_input(argv, message, no_model_loads, capsys):
    from lmms_rekv.commands.demo import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rekv demo: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("model_args,message", [
    ("pretrained=miniature,topk_frames=0", "topk_frames must be a positive int or None, got 0"),
    ("pretrained=miniature,window_tokens=-1", "window_tokens must be a positive int or None, got -1"),
    ("pretrained=miniature,retrival=external", "unknown ReKVConfig field 'retrival' (did you mean retrieval?)"),
    ("pretrained=miniature,stream_tolerance=-2", "stream_tolerance must be >= 0"),
    ("window_tokens=64", "pretrained= is required"),
])
def test_rekv_eval_bad_model_args_before_lmms_eval_starts(model_args, message, no_model_loads, capsys, monkeypatch):
    import subprocess

    from lmms_rekv.integrations.run_eval import main

    monkeypatch.setattr(subprocess, "call", lambda *a, **k: pytest.fail("lmms-eval was started"))
    assert main(["--model", "rekv", "--model_args", model_args, "--tasks", "rekv_demo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rekv eval: bad --model_args: ") and message in err and err.count("\n") == 1


def test_rekv_eval_without_arguments_says_so(capsys):
    from lmms_rekv.integrations.run_eval import main

    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rekv eval: missing arguments") and "--allow-failed-docs" in err


@pytest.mark.parametrize("command", ["live", "demo", "world", "doctor", "convert"])
def test_each_subcommand_help_names_itself(command, capsys):
    from lmms_rekv.commands.cli import main

    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: rekv {command}")
    if command in ("live", "demo"):  # one vocabulary: ReKVConfig field names
        assert "--topk-frames" in out and "--window-tokens" in out and "--chunk-frames" in out
    if command in ("live", "demo"):
        assert "--retrieval" in out and "--kv-quant" in out


def test_the_benchmark_uses_the_same_flag_names(capsys):
    """``python -m benchmarks.bench`` (from a checkout) names the settings as the commands do."""
    from benchmarks.bench import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--topk-frames" in out and "--window-tokens" in out and "--chunk-frames" in out


def test_a_former_flag_maps_to_its_field(no_model_loads, capsys):
    """``rekv demo --topk`` (before the shared vocabulary) is ``--topk-frames``, hidden from the help."""
    from lmms_rekv.commands.demo import main

    assert main(["--topk", "0"]) == 2
    assert "--topk-frames must be a positive int or None, got 0" in capsys.readouterr().err


def _run_command(argv, cwd, env_extra=None):
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "lmms_rekv.commands.cli", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("argv,message", [
    (["live", "CLIP", "--topk", "3"], "unrecognized arguments: --topk 3 (did you mean --topk-frames?)"),  # no abbreviations
    (["live", "CLIP", "--top-k", "3"], "(did you mean --topk-frames?)"),
    (["live", "FAKE"], "not a video PyAV can read (Invalid data found when processing input)"),
    (["demo", "--qestion", "x"], "(did you mean --question?)"),
    (["live", "CLIP", "--questions", "q.jsonl"], "(did you mean --questions-file?)"),  # a file, not a question
    (["world", "w.mp4", "--second", "3"], "(did you mean --seconds"),
    (["eval", "--model", "rekv", "--model_args", "pretrained=./no-such-model", "--tasks", "rekv_demo"],
     "model directory not found: './no-such-model'"),
    (["eval", "--model", "rekv", "--model_args", "pretrained=miniature,topk=3", "--tasks", "rekv_demo"],
     "unknown ReKVConfig field 'topk' (did you mean topk_frames?)"),
])
def test_command_line_mistakes_are_one_line_with_a_suggestion(argv, message, clip, tmp_path):
    """As typed in a shell: exit status 2, one line on stderr naming the problem (and the flag
    meant), nothing on stdout -- before any model is loaded."""
    (tmp_path / "fake.mp4").write_text("not a video\n")
    argv = [clip if a == "CLIP" else str(tmp_path / "fake.mp4") if a == "FAKE" else a for a in argv]
    done = _run_command(argv, tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "Loading weights" not in done.stderr and done.stdout == ""


@pytest.mark.parametrize("moment", ["loading", "playing"])
def test_ctrl_c_ends_a_command_without_a_traceback(clip, tmp_path, moment):
    """SIGINT to the whole process group (what Ctrl-C in a shell sends) while the model loads
    (the first output) or while the stream plays (after its "playing <source>" line):
    no traceback, exit status 130 (interrupted) or 0 (the stream had ended). The moment is read
    from the command's own output, not from a clock, so a loaded machine cannot shift it."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    # as a shell starts a foreground command: SIGINT at its default, even where this test runs in the
    # background (a non-interactive shell's "&" jobs ignore SIGINT, and an ignored signal survives exec)
    proc = subprocess.Popen([sys.executable, "-m", "lmms_rekv.commands.cli", "live", clip, "--realtime"], cwd=tmp_path,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=dict(os.environ, HF_HUB_OFFLINE="1"),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    err: list = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: proc.stdout.read(1), "")), daemon=True)
    reader.start()
    ready = (lambda text: bool(text)) if moment == "loading" else (lambda text: "playing " in text)
    deadline = time.monotonic() + 300  # a bound far above the work, not a measurement
    while not ready("".join(err)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    reader.join(timeout=60)
    text = "".join(err)
    assert proc.returncode in (0, 130) and "Traceback" not in text and "KeyboardInterrupt" not in text, text
