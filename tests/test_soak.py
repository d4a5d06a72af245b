"""Issue 16, short version of ``python -m research.reliability.soak`` (the README runs 18,000
frames): one session on the disk tier with a small RAM budget, questions along the way."""

from __future__ import annotations


def test_short_soak_keeps_memory_bounded_and_answers_like_a_fresh_session(tiny_dir, tmp_path):
    from research.reliability.soak import run

    result = run(str(tmp_path / "soak"), frames=480, question_every=120, checkpoints=[240], model_dir=tiny_dir, progress=False)
    rows, summary = result["rows"], result["summary"]
    assert [r["frames"] for r in rows] == [120, 240, 360, 480]
    assert summary["checkpoints"] == 2 and summary["checkpoints_same"] == 2  # at 240 and at the end
    assert summary["device_bytes_min"] == summary["device_bytes_max"]  # sinks + full window only: the index is in RAM
    assert all(r["device_bytes"] == r["device_kv_bytes"] for r in rows)
    assert summary["cpu_bytes_max"] <= summary["ram_budget_bytes"]
    assert rows[-1]["disk_bytes"] > rows[0]["disk_bytes"] > 0
    from transformers import AutoConfig

    text = AutoConfig.from_pretrained(tiny_dir).text_config
    per_frame = text.num_hidden_layers * text.num_key_value_heads * (text.hidden_size // text.num_attention_heads) * 4
    assert all(r["frames"] * per_frame <= r["index_host_bytes"] for r in rows)  # the index grows in RAM
    assert (tmp_path / "soak" / "soak.png").stat().st_size > 0 and (tmp_path / "soak" / "results.json").is_file()
