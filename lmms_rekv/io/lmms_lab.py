"""lmms-lab (LLaVA-NeXT) LLaVA-OneVision checkpoints -> the transformers format, on load.

lmms-eval's ``llava_onevision`` model loads ``lmms-lab/llava-onevision-qwen2-*`` checkpoints
with the ``llava`` package: config ``LlavaQwenForCausalLM`` (``model_type`` ``llava`` or
``llava_qwen``, with ``mm_*`` fields), weights under ``model.*`` / ``lm_head``, the SigLIP
tower under ``model.vision_tower.vision_tower.vision_model``, the projector as
``model.mm_projector.{0,2}``, the conversation template ``qwen_1_5`` in code. ``convert``
writes the equivalent ``LlavaOnevisionForConditionalGeneration`` folder (tensors copied
bit for bit, shard by shard), which then loads through the ordinary path.

The SigLIP configuration is not in an lmms-lab checkpoint: ``mm_vision_tower`` names it --
a folder with a ``config.json`` (absolute, or relative to the checkpoint) or
``google/siglip-so400m-patch14-384`` (whose architecture is known). The tower's layer count
is read from the weights (LLaVA-NeXT drops SigLIP's last layer and its pooling head).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from typing import Dict, Optional

logger = logging.getLogger(__name__)

#: lmms-lab key prefix -> transformers LLaVA-OneVision key prefix (as ``save_pretrained`` writes it)
KEY_PREFIXES = (
    ("model.vision_tower.vision_tower.vision_model.", "vision_tower."),
    ("model.mm_projector.0.", "multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "multi_modal_projector.linear_2."),
    ("model.image_newline", "image_newline"),
    ("model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)

#: SigLIP towers named by hub id whose architecture is known (LLaVA-OneVision's)
KNOWN_TOWERS = {
    "google/siglip-so400m-patch14-384": dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16,
                                             image_size=384, patch_size=14, hidden_act="gelu_pytorch_tanh",
                                             layer_norm_eps=1e-6),
}

#: LLaVA-NeXT's ``qwen_1_5`` conversation (ChatML with a system turn); ``<video>`` marks where
#: the frames go (LLaVA-NeXT writes ``<image>`` there and splices the features in the same place)
QWEN_1_5_TEMPLATE = (
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] if item['type'] in ('image', 'video') %}{{ '<video>\\n' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}{{ item['text'] }}{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CONV_TEMPLATES = {"qwen_1_5": QWEN_1_5_TEMPLATE}

_TEXT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "rope_theta", "rms_norm_eps", "hidden_act",
                "sliding_window", "use_sliding_window", "max_window_layers", "attention_dropout", "bos_token_id",
                "eos_token_id", "tie_word_embeddings", "rope_scaling", "rope_parameters")


def read_config(path: str) -> dict:
    with open(os.path.join(path, "config.json")) as fh:
        return json.load(fh)


def is_lmms_lab(path: str) -> bool:
    """Whether ``path`` holds an lmms-lab (LLaVA-NeXT) LLaVA-OneVision checkpoint."""
    try:
        cfg = read_config(path)
    except (OSError, ValueError):
        return False
    return cfg.get("model_type") in ("llava", "llava_qwen") and "mm_vision_tower" in cfg


def to_transformers_key(key: str) -> str:
    for old, new in KEY_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    raise ValueError(f"unexpected tensor {key!r} in an lmms-lab LLaVA-OneVision checkpoint")


def _check_supported(cfg: dict) -> None:
    """Refuse, with the reason, what the transformers LLaVA-OneVision path does not implement."""
    rules = {
        "mm_projector_type": ("mlp2x_gelu", "the projector must be a 2-layer GELU MLP"),
        "mm_spatial_pool_mode": ("bilinear", "video frames are pooled bilinearly by the transformers model"),
        "mm_spatial_pool_stride": (2, "the transformers model pools video frames with stride 2"),
        "mm_newline_position": ("one_token", "a video gets one newline token after its frames"),
    }
    for field, (want, why) in rules.items():
        if field in cfg and cfg[field] != want:
            raise ValueError(f"unsupported lmms-lab checkpoint: {field}={cfg[field]!r} (only {want!r}: {why})")


def _vision_config(path: str, cfg: dict, layers: int) -> dict:
    tower = cfg.get("mm_vision_tower") or ""
    vision = _tower_config(path, tower)
    if vision is None:
        raise ValueError(f"unknown vision tower mm_vision_tower={tower!r}: give a folder with its SigLIP config.json, "
                         f"a hub id in the local Hugging Face cache, or one of {sorted(KNOWN_TOWERS)}")
    vision.update(model_type="siglip_vision_model", num_hidden_layers=layers, vision_use_head=False)
    return vision


def _tower_config(path: str, tower: str) -> Optional[dict]:
    """The SigLIP config ``mm_vision_tower`` names: a folder (absolute or relative to the
    checkpoint), a hub id already in the local Hugging Face cache (nothing is downloaded), or a
    known tower; None when none of them has it."""
    folder = tower if os.path.isabs(tower) else os.path.join(path, tower)
    config_file = os.path.join(folder, "config.json") if tower else None
    if tower and not os.path.isfile(config_file) and "/" in tower and not os.path.isabs(tower):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(tower, "config.json")
        config_file = cached if isinstance(cached, str) else None
    if config_file and os.path.isfile(config_file):
        with open(config_file) as fh:
            vision = json.load(fh)
        return dict(vision.get("vision_config", vision))
    return dict(KNOWN_TOWERS[tower]) if tower in KNOWN_TOWERS else None


def transformers_config(path: str, cfg: dict, vision_layers: int, image_token_id: int, video_token_id: int) -> dict:
    """The ``LlavaOnevisionConfig`` (as a dict) equivalent to the lmms-lab ``cfg``."""
    text = {k: cfg[k] for k in _TEXT_FIELDS if k in cfg}
    text["model_type"] = "qwen2"
    vision = _vision_config(path, cfg, vision_layers)
    size = vision["image_size"]
    return dict(
        model_type="llava_onevision", architectures=["LlavaOnevisionForConditionalGeneration"],
        text_config=text, vision_config=vision, image_token_id=image_token_id, video_token_id=video_token_id,
        vision_feature_layer=-1, vision_feature_select_strategy="full", vision_aspect_ratio=cfg.get("image_aspect_ratio", "anyres_max_9"),
        image_grid_pinpoints=cfg.get("image_grid_pinpoints") or [[size, size]], projector_hidden_act="gelu",
        multimodal_projector_bias=True, tie_word_embeddings=cfg.get("tie_word_embeddings", False),
    )


def _tensor_files(path: str) -> list:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as fh:
            return sorted(set(json.load(fh)["weight_map"].values()))
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        return ["model.safetensors"]
    raise FileNotFoundError(f"{path} has no model.safetensors(.index.json): lmms-lab weights in safetensors are needed")


def _convert_weights(path: str, out: str) -> int:
    """Copy every tensor under its transformers name, shard by shard; returns the vision
    tower's layer count."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    weight_map: Dict[str, str] = {}
    layers = set()
    for name in _tensor_files(path):
        tensors = {}
        with safe_open(os.path.join(path, name), framework="pt") as fh:
            for key in fh.keys():
                new = to_transformers_key(key)
                tensors[new] = fh.get_tensor(key)
                weight_map[new] = name
                if new.startswith("vision_tower.encoder.layers."):
                    layers.add(int(new.split(".")[3]))
        save_file(tensors, os.path.join(out, name), metadata={"format": "pt"})
    if len(_tensor_files(path)) > 1:
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as fh:
            json.dump({"metadata": {}, "weight_map": weight_map}, fh, indent=1)
    if not layers:
        raise ValueError(f"{path}: no vision tower weights (model.vision_tower.vision_tower.vision_model.*) found")
    return max(layers) + 1


def _tokenizer(path: str, out: str, rows: int):
    """The checkpoint's tokenizer with ``<image>``/``<video>`` added where missing (ids inside
    the embedding's existing rows: no weight changes)."""
    from transformers import AddedToken, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    missing = [t for t in ("<image>", "<video>") if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<image>", "<video>")]
    if max(ids) >= rows:
        raise ValueError(f"{path}: the tokenizer's <image>/<video> ids {ids} do not fit the {rows} embedding rows")
    tokenizer.save_pretrained(out)
    return ids


#: bump when the conversion's output changes: older conversions are then redone
CONVERTER_VERSION = 2
_SMALL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                "merges.txt", "added_tokens.json", "generation_config.json", "preprocessor_config.json")


def fingerprint(path: str) -> str:
    """What a conversion of ``path`` depends on: the converter's version, the bytes of the
    config, tokenizer and generation files, and for every weight file its name, size,
    modification time and safetensors header (tensor names, dtypes, shapes, offsets) -- so a
    checkpoint rewritten in place is converted again, without hashing gigabytes of weights."""
    digest = hashlib.sha1(f"lmms-rekv converter {CONVERTER_VERSION}".encode())
    for name in _SMALL_FILES:
        file = os.path.join(path, name)
        if os.path.isfile(file):
            digest.update(name.encode())
            with open(file, "rb") as fh:
                digest.update(fh.read())
    for name in _tensor_files(path):
        file = os.path.join(path, name)
        stat = os.stat(file)
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        with open(file, "rb") as fh:
            header = int.from_bytes(fh.read(8), "little")
            digest.update(fh.read(min(header, 1 << 26)))
    return digest.hexdigest()[:16]


def default_cache(path: str, print_: Optional[str] = None) -> str:
    """Where the conversion of ``path`` with fingerprint ``print_`` (default: computed) is kept:
    one folder per checkpoint folder and content."""
    from .home import cache_home

    return os.path.join(cache_home(), "converted", f"{_source_name(path)}-{print_ or fingerprint(path)}")


def _source_name(path: str) -> str:
    where = hashlib.sha1(os.path.realpath(path).encode()).hexdigest()[:8]
    return f"{os.path.basename(os.path.normpath(path))}-{where}"


def convert(path: str, out: Optional[str] = None, conv_template: str = "qwen_1_5") -> str:
    """Write the transformers-format twin of the lmms-lab checkpoint ``path`` to ``out``
    (default: ``default_cache(path)``) and return ``out``. A complete conversion of the same
    content (``fingerprint``) is reused; an edited checkpoint is converted again."""
    cfg = read_config(path)
    _check_supported(cfg)
    if conv_template not in CONV_TEMPLATES:
        raise ValueError(f"conv_template={conv_template!r} is not supported (only {sorted(CONV_TEMPLATES)})")
    print_ = fingerprint(path)
    default = out is None
    out = out or default_cache(path, print_)
    done = os.path.join(out, ".converted")
    if os.path.isfile(done) and open(done).read().strip() == print_:
        return out
    tmp = f"{out}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    logger.info("converting lmms-lab checkpoint %s -> %s", path, out)
    layers = _convert_weights(path, tmp)
    image_id, video_id = _tokenizer(path, tmp, cfg["vocab_size"])
    with open(os.path.join(tmp, "config.json"), "w") as fh:
        json.dump(transformers_config(path, cfg, layers, image_id, video_id), fh, indent=1)
    with open(os.path.join(tmp, "chat_template.jinja"), "w") as fh:
        fh.write(CONV_TEMPLATES[conv_template])
    _write_preprocessing(path, tmp, _vision_config(path, cfg, layers)["image_size"])
    if os.path.isfile(os.path.join(path, "generation_config.json")):
        shutil.copyfile(os.path.join(path, "generation_config.json"), os.path.join(tmp, "generation_config.json"))
    with open(os.path.join(tmp, ".converted"), "w") as fh:
        fh.write(print_)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    os.replace(tmp, out)
    if default:
        _drop_stale(path, out)
    return out


def _write_preprocessing(path: str, out: str, size: int) -> None:
    """LLaVA-NeXT's SigLIP rule (Pillow bicubic to ``size``, mean/std 0.5) for ReKV
    (``lmms_rekv.io.preprocess.RULE_FILE``), and a ``preprocessor_config.json`` (the source's
    when it has one) for plain transformers."""
    from .preprocess import RULE_FILE

    with open(os.path.join(out, RULE_FILE), "w") as fh:
        json.dump({"rule": "llava_next", "size": [size, size], "image_mean": [0.5] * 3, "image_std": [0.5] * 3}, fh, indent=1)
    source = os.path.join(path, "preprocessor_config.json")
    if os.path.isfile(source):
        shutil.copyfile(source, os.path.join(out, "preprocessor_config.json"))
    else:
        with open(os.path.join(out, "preprocessor_config.json"), "w") as fh:
            json.dump({"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": {"height": size, "width": size}}, fh, indent=1)


def _drop_stale(path: str, keep: str) -> None:
    """Remove the default-cache conversions of ``path`` made from earlier content."""
    prefix = _source_name(path) + "-"
    folder = os.path.dirname(keep)
    for name in os.listdir(folder):
        full = os.path.join(folder, name)
        if name.startswith(prefix) and full != keep and os.path.isfile(os.path.join(full, ".converted")):
            logger.info("removing the conversion of an earlier version of %s: %s", path, full)
            shutil.rmtree(full, ignore_errors=True)
