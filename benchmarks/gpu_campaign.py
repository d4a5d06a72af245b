"""``python -m benchmarks.gpu_campaign``: the GPU numbers of the main path in one command.

    python -m benchmarks.gpu_campaign --out DIR                  # a GPU: real shapes, bf16 (benchmarks/gpu.sh)
    python -m benchmarks.gpu_campaign --scale tiny --out DIR     # dry run at tiny shapes (any machine, a minute)

For each model -- LLaVA-OV 0.5B and 7B and Qwen2.5-VL 7B at their real shapes with random
weights (speed and memory do not depend on the weights; ``benchmarks.presets``), bf16 -- one
ReKV stream of an hour of video at 0.5 fps (1,800 frames, the CPU tier) is encoded chunk by
chunk and asked at 16 / 30 (1 min) / 64 / 256 / 300 (10 min) / 1,800 (1 h) frames:

* encode frames per second (steady state: chunks after the first 256 frames);
* time to first token at every checkpoint (median of ``--repeats``), a 128-token answer at the
  end (time to first token and total);
* peak GPU memory, host RSS, KV bytes per frame and GiB per hour at 0.5 fps;
* where the time of one question on the hour goes: retrieval scoring, block reads (gather and
  host->GPU copy, with the bytes moved: their bandwidth against the GPU's measured pinned and
  pageable copy ceilings), prefill without them, and decode per token -- each stage timed with
  the device synchronised around it, so their sum exceeds an unsynchronised answer;
* int4 storage, and `temporal` keep 1/2 + int4, on a 256-frame stream: encode FPS, time to first
  token, KV per hour;
* full attention (every frame in context, KV on the device) at the checkpoints where it fits
  the model's positions: time to first token and its ratio to ReKV's.

Then the exactness check once in bf16 (and fp32) on the device at tiny shapes: ReKV with every
frame retrieved against the unpatched model's ``generate`` from the checkpoint's own processor
(tokens equal? largest logit difference). Results are written after every model
(``results.json``, ``results.md``), so a run cut off keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import tempfile
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from research.tiny import noise_frames

logger = logging.getLogger(__name__)

QUESTION = "What is the person doing with the object on the table?"
FPS = 0.5
CHECKPOINTS = (16, 30, 64, 256, 300, 1800)  # frames; 30 / 300 / 1800 are 1 min / 10 min / 1 h at 0.5 fps
MODELS = ("llava_ov_7b", "qwen2_5_vl_7b", "llava_ov_0.5b")  # the goals are the 7B models': they go first
STEADY_AFTER = 256  # encode FPS counts the chunks after this many frames
GOALS = {"encode_fps_7b": 65.0, "ttft_s": 0.050, "answer_128_s": 1.5, "peak_gpu_gib_7b": 24.0, "kv_gib_per_hour_temporal_int4": 2.6}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- models ------------------------------------------------------------------------------------
def rekv_config(name: str, scale: str):
    """The ReKV settings of a campaign model: ReKV's top-64 frames and a 15,000-token window at
    real shapes (Qwen: 2-frame blocks, so 32 blocks; 448 x 448 frames, 256 tokens per block)."""
    from lmms_rekv import ReKVConfig

    if scale == "tiny":
        return ReKVConfig(window_tokens=256, topk_frames=8, chunk_frames=16)
    qwen = name.startswith("qwen")
    return ReKVConfig(window_tokens=15_000, topk_frames=32 if qwen else 64, chunk_frames=64,
                      frame_size=(448, 448) if qwen else None)


def build(name: str, scale: str, workdir: str, device: torch.device, dtype: torch.dtype):
    """The ReKV engine of campaign model ``name``: at ``scale="tiny"`` a tiny random checkpoint
    through ``from_pretrained``; at ``"real"`` the real architecture with random weights, made
    on the device, with the tiny checkpoint's tokenizer, chat template and processor."""
    from lmms_rekv import ReKV

    config = rekv_config(name, scale)
    folder = _tiny_folder(name, workdir, scale)
    if scale == "tiny":
        return ReKV.from_pretrained(folder, config=config, dtype=dtype, device=device)
    from lmms_rekv.patches import backbone_class

    from lmms_rekv.io.preprocess import CheckpointFrames

    family = "qwen2_5_vl" if name.startswith("qwen") else "llava_onevision"
    _, tokenizer, template, processor = backbone_class(family).load(folder, torch.float32)
    if family == "llava_onevision":  # the real checkpoints' 384-pixel frames (the tiny one's are smaller)
        processor = CheckpointFrames.square(384)
    from .presets import random_model

    model = random_model(_model_class(family), _real_config(name, tokenizer), device, dtype)
    return ReKV(model, tokenizer, template, processor, config, source=f"random {name}")


def _tiny_folder(name: str, workdir: str, scale: str = "tiny") -> str:
    """A tiny random checkpoint for ``name``'s family (at real scale: its tokenizer, template and
    processor; a Qwen processor with ``Qwen2VLVideoProcessor``'s default pixel bounds)."""
    from research.tiny import build_tiny_model
    from research.tiny_qwen import build_tiny_qwen2_vl

    path = os.path.join(workdir, f"{name}-{scale}")
    if not os.path.isdir(path):
        if name.startswith("qwen"):
            build_tiny_qwen2_vl(path, family="qwen2_5_vl", **({"max_pixels": 602_112} if scale == "real" else {}))
        else:
            build_tiny_model(path)
    return path


def _model_class(family: str):
    import transformers

    return transformers.Qwen2_5_VLForConditionalGeneration if family == "qwen2_5_vl" else transformers.LlavaOnevisionForConditionalGeneration


def _real_config(name: str, tokenizer):
    from .presets import llava_token_ids, qwen2_5_vl_config, qwen_token_ids, real_config

    size = name.rsplit("_", 1)[1]
    if name.startswith("qwen"):
        return qwen2_5_vl_config(size, **qwen_token_ids(tokenizer))
    return real_config(size, **llava_token_ids(tokenizer))


# -- one stream --------------------------------------------------------------------------------
def ask(session, tokens: int) -> Dict[str, float]:
    answer = session.answer(QUESTION, max_new_tokens=tokens, eos_token_ids=())
    return {"ttft_s": answer.first_token_seconds, "total_s": answer.seconds}


def median_of(fn: Callable[[], Dict[str, float]], repeats: int) -> Dict[str, float]:
    """Median of every metric over ``repeats`` calls (after one call not kept)."""
    fn()
    samples = [fn() for _ in range(repeats)]
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


def stream(engine, frames: int, checkpoints, chunk: int, repeats: int, answer_tokens: int = 0, size: int = 96) -> Dict:
    """Encode ``frames`` synthetic frames into one session in ``chunk``-frame calls (each synced
    and timed), asking at every checkpoint; the last checkpoint also gets an ``answer_tokens``
    answer and the stage breakdown. Returns the session's row."""
    session = engine.new_session(fps=FPS)
    device, done, timings, asked = engine.device, 0, [], []
    stops = sorted({c for c in checkpoints if c <= frames} | {frames})
    try:
        for stop in stops:
            while done < stop:
                n = min(chunk - done % chunk, stop - done)
                sync(device)
                start = time.perf_counter()
                session.add_frames(noise_frames(done, n, size))
                session.flush()
                sync(device)
                timings.append((done, n, time.perf_counter() - start))
                done += n
            if stop in checkpoints:
                asked.append({"frames": stop, **median_of(lambda: ask(session, 1), repeats)})
                logger.info("%d frames encoded in %.1f s; time to first token %.1f ms", stop, sum(t for *_, t in timings), 1e3 * asked[-1]["ttft_s"])
        row = {"frames": frames, "asked": asked, **_encode_rate(timings), **_footprint(session, device)}
        if answer_tokens:
            row["answer"] = {"tokens": answer_tokens, **median_of(lambda: ask(session, answer_tokens), max(1, repeats // 2))}
            row["stages"] = stage_breakdown(session, answer_tokens)
        return row
    finally:
        session.close()


def _encode_rate(timings) -> Dict[str, float]:
    steady = [(n, s) for first, n, s in timings if first >= STEADY_AFTER] or [(n, s) for _, n, s in timings]
    frames, seconds = sum(n for n, _ in steady), sum(s for _, s in steady)
    return {"encode_fps": frames / seconds, "encode_fps_frames": frames, "encode_seconds_total": sum(s for *_, s in timings)}


def _footprint(session, device: torch.device) -> Dict[str, float]:
    import psutil

    from .accounting import gib_per_hour

    stats = session.stats()
    out = {"kv_bytes_per_frame": stats["kv_bytes_per_frame"], "kv_gib_per_hour": gib_per_hour(stats["kv_bytes_per_frame"], fps=FPS),
           "device_bytes": stats["device_bytes"], "cpu_bytes": stats["cpu_bytes"], "host_rss_bytes": psutil.Process().memory_info().rss}
    if device.type == "cuda":
        out["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


# -- where a question's time goes ------------------------------------------------------------
class StageClock:
    """Synced wall time of the stages of answering (``patched`` installs it): retrieval scoring
    (the selector), block reads (``read_blocks``; bytes moved too), prefill and decode forwards."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds, self.calls, self.bytes = device, {}, {}, 0

    def timed(self, stage: str, fn: Callable, *args, **kwargs):
        sync(self.device)
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        sync(self.device)
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
        self.calls[stage] = self.calls.get(stage, 0) + 1
        return out

    @contextlib.contextmanager
    def patched(self, store_class):
        from lmms_rekv.engine.answering import Answerer

        clock, selector, forward, read = self, Answerer.selector, Answerer._forward, store_class.read_blocks

        def timed_selector(answerer, question, view):
            select = selector(answerer, question, view)

            def timed(*a):
                return clock.timed("retrieval_scoring", select, *a)

            if hasattr(select, "fixed"):  # frames every layer shares (external retrieval): kept visible
                timed.fixed = select.fixed
            return timed

        def timed_forward(bb, embeds, position):
            return clock.timed("prefill" if embeds.shape[1] > 1 else "decode", forward, bb, embeds, position)

        def timed_read(store, *a, **k):
            out = clock.timed("block_reads", read, store, *a, **k)
            clock.bytes += sum(x.nbytes for x in (out[0], out[1]) if x is not None)
            return out

        Answerer.selector, Answerer._forward, store_class.read_blocks = timed_selector, staticmethod(timed_forward), timed_read
        try:
            yield self
        finally:
            Answerer.selector, Answerer._forward, store_class.read_blocks = selector, staticmethod(forward), read


def stage_breakdown(session, tokens: int) -> Dict[str, float]:
    """One ``tokens``-token answer with every stage synced and timed: seconds per stage (prefill
    without the retrieval inside it), decode per token, block-read bandwidth."""
    clock = StageClock(session.engine.device)
    with clock.patched(type(session.state.store)):
        ask(session, tokens)
    s = clock.seconds
    inside = s.get("retrieval_scoring", 0.0) + s.get("block_reads", 0.0)
    return {"retrieval_scoring_s": s.get("retrieval_scoring", 0.0), "block_reads_s": s.get("block_reads", 0.0),
            "block_read_bytes": clock.bytes, "block_read_gb_per_s": clock.bytes / s["block_reads"] / 1e9 if s.get("block_reads") else None,
            "prefill_s": s.get("prefill", 0.0) - inside, "decode_s_per_token": s.get("decode", 0.0) / max(1, clock.calls.get("decode", 0))}


def copy_ceiling(device: torch.device, mib: int = 256) -> Dict[str, Optional[float]]:
    """Host->device copy bandwidth of ``mib`` MiB from pinned and from pageable memory (GB/s; the
    median of 5 synced copies), None without a GPU."""
    if device.type != "cuda":
        return {"pinned_gb_per_s": None, "pageable_gb_per_s": None}
    out = {}
    for kind, pinned in (("pinned", True), ("pageable", False)):
        host = torch.empty(mib << 20, dtype=torch.uint8, pin_memory=pinned)
        target = torch.empty_like(host, device=device)
        seconds = []
        for _ in range(6):
            sync(device)
            start = time.perf_counter()
            target.copy_(host, non_blocking=pinned)
            sync(device)
            seconds.append(time.perf_counter() - start)
        out[f"{kind}_gb_per_s"] = host.nbytes / statistics.median(seconds[1:]) / 1e9
    return out


# -- one model -----------------------------------------------------------------------------------
def measure_model(engine, name: str, hour: int, short: int, repeats: int, answer_tokens: int, size: int) -> Dict:
    """Every measurement of one model: the hour stream, the storage variants on ``short`` frames,
    full attention where it fits."""
    chunk = engine.config.chunk_frames
    checkpoints = [c for c in CHECKPOINTS if c <= hour] if hour >= max(CHECKPOINTS) else sorted({*(c for c in CHECKPOINTS if c < hour), hour})
    out = {"model": name, "block_tokens": engine.block_tokens, "config": _settings(engine.config)}
    warm = engine.new_session(fps=FPS)
    warm.add_frames(noise_frames(10**7, 2 * chunk, size))
    ask(warm, 2)
    warm.close()
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    out["hour"] = stream(engine, hour, checkpoints, chunk, repeats, answer_tokens, size)
    out["variants"] = {}
    for label, changes in (("int4", dict(kv_quant="int4")), ("temporal_0.5_int4", dict(kv_quant="int4", token_reduction="temporal", token_keep=0.5))):
        out["variants"][label] = stream(engine.with_config(engine.config.replace(**changes)), short, [short], chunk, repeats, 0, size)
    out["full_attention"] = full_attention(engine, [c for c in checkpoints if c <= short], chunk, repeats, size)
    return out


def _settings(config) -> Dict:
    return {k: getattr(config, k) for k in ("window_tokens", "topk_frames", "chunk_frames", "recent_frames", "offload", "kv_quant", "frame_size")}


def full_attention(engine, checkpoints: List[int], chunk: int, repeats: int, size: int) -> List[Dict]:
    """Full attention (every frame in context, unbounded window, KV on the device) asked at each
    checkpoint whose whole context fits the model's positions."""
    full = engine.with_config(engine.config.replace(window_tokens=None, topk_frames=None, offload="device", qa_budget_tokens=None,
                                                    recent_frames=0))
    limit = getattr(engine.model.config.get_text_config(), "max_position_embeddings", None)
    fitting = [c for c in checkpoints if limit is None or c * engine.block_tokens // engine.backbone.frames_per_block + 512 <= limit]
    if not fitting:
        return []
    try:
        return stream(full, max(fitting), fitting, chunk, repeats, 0, size)["asked"]
    except torch.OutOfMemoryError as error:  # report, do not lose the run
        logger.warning("full attention: %s", error)
        return [{"error": f"out of memory at up to {max(fitting)} frames"}]


# -- exactness in low precision ---------------------------------------------------------------------
def exactness(device: torch.device, workdir: str) -> List[Dict]:
    """ReKV with every frame retrieved vs the unpatched model's ``generate`` (the checkpoint's own
    processor), tiny LLaVA-OV, 10 greedy tokens, in bfloat16 and float32 on ``device``."""
    from transformers import AutoProcessor

    from lmms_rekv import ReKV, ReKVConfig

    question = "what is the man doing in the kitchen?"  # the exactness tests' question and frames: a 10-token answer
    video = np.random.default_rng(0).integers(0, 256, (14, 40, 48, 3), dtype=np.uint8)
    folder, rows = _tiny_folder("llava_ov_tiny", workdir), []
    processor = AutoProcessor.from_pretrained(folder)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    for dtype in (torch.bfloat16, torch.float32):
        engine = ReKV.from_pretrained(folder, config=ReKVConfig(window_tokens=None, topk_frames=None, chunk_frames=4), dtype=dtype, device=device)
        session = engine.new_session()
        session.add_frames(video)
        ours = session.answer(question, max_new_tokens=10, return_logits=True)
        inputs = processor(text=processor.apply_chat_template(messages, add_generation_prompt=True), videos=[video], return_tensors="pt")
        inputs = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}
        with torch.inference_mode():
            ref = engine.model.generate(**inputs, max_new_tokens=10, do_sample=False, output_logits=True, return_dict_in_generate=True)
        tokens = ref.sequences[0, inputs["input_ids"].shape[1]:].tolist()
        if tokens and tokens[-1] in engine.generation_settings().eos_token_ids:
            tokens = tokens[:-1]  # generate keeps the end-of-answer token; an answer does not
        same = [a == b for a, b in zip(ours.token_ids, tokens)]
        agree = same.index(False) if False in same else len(same)
        steps = list(zip(ours.logits, ref.logits))[: agree + 1]  # the logits up to the first disagreement
        rows.append({"dtype": str(dtype).replace("torch.", ""), "tokens_equal": ours.token_ids == tokens, "tokens": len(tokens),
                     "tokens_agreeing": agree, "max_abs_logit_diff": max(float((a - b[0].float().cpu()).abs().max()) for a, b in steps),
                     "logit_scale": float(ref.logits[0].float().abs().max())})
        session.close()
        del engine
    return rows


# -- the report -----------------------------------------------------------------------------------
def goals(results: Dict) -> List[Dict]:
    """Each goal of the campaign on the 7B models: its measured figure and met / missed."""
    rows = []
    for name, m in results["models"].items():
        if "7b" not in name or "hour" not in m:
            continue
        hour, variants = m["hour"], m["variants"]
        ttft = max(a["ttft_s"] for a in hour["asked"])
        figures = [("encode FPS >= 65", hour["encode_fps"], hour["encode_fps"] >= GOALS["encode_fps_7b"]),
                   ("TTFT <= 50 ms at every checkpoint (slowest)", ttft, ttft <= GOALS["ttft_s"]),
                   ("128-token answer <= 1.5 s on the hour", hour["answer"]["total_s"], hour["answer"]["total_s"] <= GOALS["answer_128_s"])]
        if "peak_gpu_bytes" in hour:
            gib = hour["peak_gpu_bytes"] / 2**30
            figures.append(("peak GPU <= 24 GiB", gib, gib <= GOALS["peak_gpu_gib_7b"]))
        kv = variants["temporal_0.5_int4"]["kv_gib_per_hour"]
        figures.append(("KV <= 2.6 GiB/h (temporal 1/2 + int4)", kv, kv <= GOALS["kv_gib_per_hour_temporal_int4"]))
        rows += [{"model": name, "goal": g, "measured": round(v, 4), "met": bool(ok)} for g, v, ok in figures]
    return rows


def markdown(results: Dict) -> str:
    lines = [f"machine: {results['machine']} | dtype {results['dtype']} | scale {results['scale']} | {results['fps']} fps | "
             f"host->device copy ceiling: pinned {_num(results['copy_ceiling']['pinned_gb_per_s'])} GB/s, "
             f"pageable {_num(results['copy_ceiling']['pageable_gb_per_s'])} GB/s", ""]
    names = list(results["models"])
    head = "| | " + " | ".join(names) + " |"
    lines += [head, "|---" * (len(names) + 1) + "|"]
    for label, get in _rows(results):
        lines.append(f"| {label} | " + " | ".join(_cell(get, results["models"][n]) for n in names) + " |")
    if results.get("goals"):
        lines += ["", "| model | goal | measured | met |", "|---|---|---|---|"]
        lines += [f"| {g['model']} | {g['goal']} | {g['measured']} | {'met' if g['met'] else '**missed**'} |" for g in results["goals"]]
    if results.get("exactness"):
        lines += ["", "Exactness (tiny LLaVA-OV, every frame retrieved, vs `generate`, 10 tokens):", ""]
        lines += [f"* {r['dtype']}: tokens equal {r['tokens_equal']} ({r['tokens_agreeing']} of {r['tokens']} agreeing), largest logit difference "
                  f"{r['max_abs_logit_diff']:.3g} (logits up to {r['logit_scale']:.3g})" for r in results["exactness"]]
    return "\n".join(lines) + "\n"


def _rows(results: Dict):
    rows = [("encode FPS (steady)", lambda m: m["hour"]["encode_fps"]),
            ("encode FPS, int4", lambda m: m["variants"]["int4"]["encode_fps"]),
            ("encode FPS, temporal 1/2 + int4", lambda m: m["variants"]["temporal_0.5_int4"]["encode_fps"])]
    for c in CHECKPOINTS:
        rows.append((f"TTFT at {c} frames (ms)", lambda m, c=c: 1e3 * _asked(m["hour"]["asked"], c)))
        rows.append((f"full attention TTFT at {c} frames (ms)", lambda m, c=c: 1e3 * _asked(m["full_attention"], c)))
    rows += [("128-token answer on the hour: TTFT / total (s)", lambda m: f"{m['hour']['answer']['ttft_s']:.3f} / {m['hour']['answer']['total_s']:.3f}"),
             ("peak GPU (GiB)", lambda m: m["hour"]["peak_gpu_bytes"] / 2**30),
             ("host RSS after the hour (GiB)", lambda m: m["hour"]["host_rss_bytes"] / 2**30),
             ("KV GiB/h: exact / int4 / temporal 1/2 + int4", lambda m: " / ".join(
                 f"{x['kv_gib_per_hour']:.2f}" for x in (m["hour"], m["variants"]["int4"], m["variants"]["temporal_0.5_int4"]))),
             ("stage: retrieval scoring (ms)", lambda m: 1e3 * m["hour"]["stages"]["retrieval_scoring_s"]),
             ("stage: block reads (ms) at GB/s", lambda m: f"{1e3 * m['hour']['stages']['block_reads_s']:.1f} at {_num(m['hour']['stages']['block_read_gb_per_s'])}"),
             ("stage: prefill without retrieval (ms)", lambda m: 1e3 * m["hour"]["stages"]["prefill_s"]),
             ("stage: decode per token (ms)", lambda m: 1e3 * m["hour"]["stages"]["decode_s_per_token"])]
    return rows


def _asked(rows: List[Dict], frames: int) -> Optional[float]:
    found = [r["ttft_s"] for r in rows if r.get("frames") == frames]
    return found[0] if found else None


def _cell(get, model: Dict) -> str:
    try:
        value = get(model)
    except (KeyError, TypeError, ZeroDivisionError):
        return "--"
    return value if isinstance(value, str) else _num(value)


def _num(value) -> str:
    return "--" if value is None else f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


# -- the command ----------------------------------------------------------------------------------
def run(args) -> Dict:
    from lmms_rekv.model import resolve_dtype

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = resolve_dtype(args.dtype or ("bfloat16" if device.type == "cuda" else "float32"), device)
    hour, short = (args.hour_frames, args.short_frames) if args.scale == "real" else (min(args.hour_frames, 64), min(args.short_frames, 32))
    size = 384 if args.scale == "real" else 96
    from .bench import machine_name

    results = {"machine": machine_name(device), "dtype": str(dtype).replace("torch.", ""), "scale": args.scale, "fps": FPS,
               "torch": torch.__version__, "copy_ceiling": copy_ceiling(device), "models": {}, "started": time.time()}
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rekv-gpu-") as workdir:
        if not args.skip_exactness:
            results["exactness"] = exactness(device, workdir)
            save(args.out, results)
        for name in args.models:
            if time.time() - results["started"] > args.budget_s:
                logger.warning("%s skipped: the %d s budget is spent", name, args.budget_s)
                continue
            engine = build(name, args.scale, workdir, device, dtype)
            try:
                results["models"][name] = measure_model(engine, name, hour, short, args.repeats, args.answer_tokens, size)
            except Exception as error:  # one model's failure keeps the others' numbers
                logger.exception("%s failed", name)
                results["models"][name] = {"error": f"{type(error).__name__}: {error}"}
            del engine
            if device.type == "cuda":
                torch.cuda.empty_cache()
            results["goals"] = goals(results)
            save(args.out, results)
    results["seconds"] = time.time() - results.pop("started")
    save(args.out, results)
    return results


def save(out: str, results: Dict) -> None:
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1, default=str)
    with open(os.path.join(out, "results.md"), "w") as fh:
        fh.write(markdown(results))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_campaign", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for results.json and results.md")
    parser.add_argument("--scale", choices=("real", "tiny"), default="real", help="real shapes (a GPU) or tiny ones (a dry run)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--hour-frames", type=int, default=1800, help="frames of the long stream (1 h at 0.5 fps)")
    parser.add_argument("--short-frames", type=int, default=256, help="frames of the storage-variant and full-attention streams")
    parser.add_argument("--repeats", type=int, default=3, help="questions per checkpoint (median; after one not kept)")
    parser.add_argument("--answer-tokens", type=int, default=128)
    parser.add_argument("--budget-s", type=int, default=420, help="start no further model after this many seconds")
    parser.add_argument("--skip-exactness", action="store_true")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    results = run(args)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
