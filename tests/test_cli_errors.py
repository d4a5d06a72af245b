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
    (["CLIP", "--questions", "/nowhere/q.jsonl"], "/nowhere/q.jsonl"),
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
    ("pretrained=miniature,retrival=external", "unknown ReKVConfig fields: ['retrival']"),
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
