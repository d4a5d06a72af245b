"""python -m benchmarks.bench smoke run (tiny preset; no timing assertions) and the KV accounting."""

import json
import os

import pytest

from benchmarks.accounting import preset_accounting


def test_bench_tiny_smoke(tmp_path):
    from benchmarks.bench import main

    out = tmp_path / "bench"
    assert main(["--preset", "tiny", "--out", str(out), "--frames", "20", "60", "200", "--repeats", "2", "--uniform-frames", "8"]) == 0
    results = json.load(open(out / "results.json"))
    assert results["repeats"] == 2 and len(results["load_before"]) == 3 and results["threads"] >= 1
    for method, metrics in (("rekv", 3), ("full", 3), ("uniform", 2)):
        for p in results[method]["points"]:  # every figure: its repeats (warm-up dropped), the median inside their range
            assert len(p["samples"]) == metrics and all(len(v) == 2 for v in p["samples"].values()), (method, p["frames"])
            for metric in p["samples"]:
                low, high = p[f"{metric}_range"]
                assert low <= p[metric] <= high
            if method != "uniform":  # the encode probes: one chunk per round after the length, warm-up round included
                assert p["encode_probe_frames"] == [p["frames"], p["frames"] + 3 * 4]
    summary = results["summary"]
    for key in ("encode_frame_time_ratio_10x", "qa_latency_ratio_10x", "full_attention_qa_latency_ratio_10x", "kv_bytes_per_frame", "encode_frames_per_s"):
        assert summary[key] is not None and summary[key] > 0, key
    assert [p["frames"] for p in results["rekv"]["points"]] == [20, 60, 200]
    assert [p["frames"] for p in results["uniform"]["points"]] == [20, 60, 200]
    # device KV is bounded for ReKV and grows for full attention
    rekv_dev = [p["device_kv_bytes"] for p in results["rekv"]["points"]]
    full_dev = [p["device_kv_bytes"] for p in results["full"]["points"]]
    assert len(set(rekv_dev)) == 1 and full_dev == sorted(full_dev) and full_dev[-1] > 5 * full_dev[0]
    assert results["kv_per_hour"]["measured_gib"] == pytest.approx(results["kv_per_hour"]["formula_gib"])
    for name in ("results.md", "latency.png", "memory.png"):
        assert os.path.getsize(out / name) > 0


@pytest.mark.parametrize("name,mib_frame,gib_hour", [("0.5b", 2.30, 4.04), ("7b", 10.72, 18.84)])
def test_kv_accounting_of_real_configs(name, mib_frame, gib_hour):
    got = preset_accounting(name)
    assert got["frame_tokens"] == 196
    assert round(got["mib_per_frame"], 2) == mib_frame
    assert round(got["gib_per_hour"], 2) == gib_hour


def test_ttft_curve_interleaves_every_method_at_every_length(tmp_path):
    """``python -m benchmarks.ttft_curve`` (tiny preset): every method answers at every length
    that fits, each point keeps its repeats (warm-up dropped) with median inside [min, max], and
    the table and plot are written -- no timing asserted."""
    from benchmarks.ttft_curve import METHODS, main

    out = tmp_path / "ttft"
    assert main(["--preset", "tiny", "--frames", "8", "24", "--repeats", "2", "--k", "4", "--out", str(out)]) == 0
    results = json.load(open(out / "results.json"))
    assert set(results["curve"]) == set(METHODS) and results["lengths"] == [8, 24]
    for method in METHODS:
        points = results["curve"][method]
        assert [p["frames"] for p in points] == [8, 24], method
        for p in points:
            assert len(p["samples"]) == 2 and p["min_s"] <= p["ttft_s"] <= p["max_s"]
    assert results["recent_frames"] == 1 and len(results["load_before"]) == 3
    assert (out / "results.md").read_text().count("|") > 20 and os.path.getsize(out / "ttft.png") > 0


def test_gpu_campaign_dry_run_measures_every_figure(tmp_path):
    """``python -m benchmarks.gpu_campaign --scale tiny`` (the GPU campaign's CPU dry run): every
    checkpoint asked, every storage variant and full attention measured, the block reads of one
    question are exactly its top-k blocks' stored bytes, and the exactness check finds float32
    ReKV equal to ``generate``."""
    from benchmarks.gpu_campaign import main

    out = tmp_path / "gpu"
    assert main(["--scale", "tiny", "--out", str(out), "--models", "llava_ov_0.5b", "qwen2_5_vl_7b", "--repeats", "1",
                 "--answer-tokens", "4"]) == 0
    results = json.load(open(out / "results.json"))
    for name, frames_per_block in (("llava_ov_0.5b", 1), ("qwen2_5_vl_7b", 2)):
        model = results["models"][name]
        hour = model["hour"]
        assert [a["frames"] for a in hour["asked"]] == [16, 30, 64], name  # the checkpoints below the tiny "hour", and it
        assert all(0 < a["ttft_s"] <= a["total_s"] for a in hour["asked"])
        assert hour["answer"]["tokens"] == 4 and hour["answer"]["ttft_s"] < hour["answer"]["total_s"]
        exact, int4, reduced = (x["kv_bytes_per_frame"] for x in (hour, model["variants"]["int4"], model["variants"]["temporal_0.5_int4"]))
        assert reduced < int4 < exact / 2, name  # int4: 4 bits plus scales (a large share at tiny head dims); keep 1/2 on top
        topk = model["config"]["topk_frames"]
        assert hour["stages"]["block_read_bytes"] == topk * frames_per_block * exact, name  # top-k blocks, every layer, K and V
        assert all(hour["stages"][k] > 0 for k in ("retrieval_scoring_s", "block_reads_s", "prefill_s", "decode_s_per_token"))
        assert [a["frames"] for a in model["full_attention"]] == [16, 30]
    rows = {row["dtype"]: row for row in results["exactness"]}
    assert rows["float32"]["tokens_equal"] and rows["float32"]["tokens"] == 10 and rows["float32"]["max_abs_logit_diff"] < 1e-4
    assert {g["goal"] for g in results["goals"]} >= {"encode FPS >= 65", "KV <= 2.6 GiB/h (temporal 1/2 + int4)"}
    text = (out / "results.md").read_text()
    assert "stage: block reads" in text and "float32: tokens equal True (10 of 10 agreeing)" in text


def test_gpu_script_runs_the_campaign_from_the_checkout_uninstalled(tmp_path):
    """``benchmarks/gpu.sh`` (what the GPU machine runs; lmms-rekv is not installed there): the
    package is assembled as the wheel lays it out and the campaign runs from it into ``$OUT``."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    done = subprocess.run(["bash", os.path.join(root, "benchmarks", "gpu.sh"), "--scale", "tiny", "--models", "llava_ov_0.5b",
                           "--repeats", "1", "--answer-tokens", "2", "--skip-exactness", "--hour-frames", "16", "--short-frames", "16"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "lmms_rekv /tmp/rekv-src/lmms_rekv/__init__.py" in done.stdout  # not the checkout's lmms_rekv/ (no patches/ there)
    results = json.load(open(tmp_path / "gpu-campaign" / "results.json"))
    assert [a["frames"] for a in results["models"]["llava_ov_0.5b"]["hour"]["asked"]] == [16]
    assert (tmp_path / "gpu-campaign" / "log.txt").stat().st_size > 0
