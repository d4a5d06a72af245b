"""Build a tiny random-weight LLaVA-OneVision checkpoint offline (tests, demo, benchmarks).

The directory looks like a llava-hf checkpoint: ``config.json`` + safetensors, a byte-level
BPE tokenizer trained here with ``tokenizers`` (Qwen2 chat special tokens, ``<video>``,
``<image>``), the llava-hf OneVision chat template and ``preprocessor_config.json``.
"""

from __future__ import annotations

import json
import logging
import os
import random
from typing import List, Optional

from lmms_rekv.io.home import cache_home

logger = logging.getLogger(__name__)

#: The llava-hf LLaVA-OneVision prompt format: "<|im_start|>user <video>\nQ<|im_end|>..."
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for item in message['content'] if item['type'] == 'image' %}{{ '<image>' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'video' %}{{ '<video>' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}{{ '\\n' + item['text'] }}{% endfor %}"
    "{{ '<|im_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]

_WORDS = (
    "what is happening in the video a person man woman walks runs opens closes door kitchen table "
    "red green blue car dog cat holds cup picks up puts down where when who why how many color "
    "first last after before left right scene frame camera moves answer yes no the of to and"
).split()


def build_tokenizer(vocab_size: int = 384, seed: int = 0, corpus: Optional[List[str]] = None,
                    special_tokens: Optional[List[str]] = None):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``corpus`` (default: random
    sentences of a small video-QA vocabulary) with ``special_tokens`` (default: LLaVA-OV's;
    the first is the pad token)."""
    special = list(special_tokens or SPECIAL_TOKENS)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if corpus is None:
        rng = random.Random(seed)
        corpus = [" ".join(rng.choice(_WORDS) for _ in range(12)) + "?" for _ in range(2000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token=special[0],
        additional_special_tokens=special[1:],
    )


def build_tiny_model(
    path: str,
    seed: int = 0,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    image_size: int = 64,
    patch_size: int = 8,
    init_std: Optional[float] = 0.15,
) -> str:
    """Write a tiny random LLaVA-OneVision checkpoint to ``path`` and return ``path``.

    ``frame_tokens = ceil(image_size / patch_size / 2) ** 2`` (16 with the defaults).
    ``init_std`` re-draws the weight matrices with a larger std than transformers' default so
    that the random model's logits are well separated (greedy answers are then stable)."""
    import torch
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    tokenizer = build_tokenizer(seed=seed)
    vocab = len(tokenizer)
    config = LlavaOnevisionConfig(
        text_config=dict(
            model_type="qwen2", vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
            max_position_embeddings=32768, rope_theta=1_000_000.0, tie_word_embeddings=False,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        ),
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, image_size=image_size, patch_size=patch_size,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=[[image_size, image_size]],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config)
    if init_std is not None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.dim() >= 2:
                    param.normal_(0.0, init_std)
                elif name.endswith("image_newline"):
                    param.normal_(0.0, 1.0)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    with open(os.path.join(path, "chat_template.jinja"), "w") as fh:
        fh.write(CHAT_TEMPLATE)
    with open(os.path.join(path, "preprocessor_config.json"), "w") as fh:
        json.dump({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size": {"height": image_size, "width": image_size}}, fh, indent=1)
    logger.info("wrote tiny LLaVA-OneVision to %s", path)
    return path


#: A tiny open_clip model (random weights, CLIP's bundled tokenizer): no download needed.
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def write_tiny_clip_config(folder: str, name: str = "rekv-tiny-clip") -> str:
    """Write an open_clip model config for a tiny CLIP and return its path; use it as
    ``ReKVConfig(clip_model=path, clip_pretrained=None)``."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}.json")
    with open(path, "w") as fh:
        json.dump(TINY_CLIP_CONFIG, fh, indent=1)
    return path


def tiny_model_dir(home: Optional[str] = None) -> str:
    """The embedded tiny model's directory, built on first use (offline, a few seconds)."""
    path = os.path.join(home, "tiny-llava-onevision") if home else cache_home("tiny-llava-onevision")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        build_tiny_model(path)
    return path


def main() -> None:
    """``python -m research.tiny [DIR]``: build the tiny model (default: the embedded one,
    reused when present) and print its directory."""
    import sys

    if len(sys.argv) > 1:
        print(build_tiny_model(sys.argv[1]))
    else:
        print(tiny_model_dir())


if __name__ == "__main__":
    main()


def write_lmms_lab_twin(hf_dir: str, out: str) -> str:
    """Write the lmms-lab (LLaVA-NeXT, ``llava_qwen``) format of the transformers-format
    LLaVA-OneVision checkpoint ``hf_dir`` to ``out``: the inverse of
    ``lmms_rekv.io.lmms_lab.convert`` (tensors bit for bit; SigLIP's pooling head dropped, as
    LLaVA-NeXT drops it; the SigLIP config in ``out/siglip`` named by ``mm_vision_tower``;
    no chat template or preprocessor config, as in lmms-lab checkpoints). For tests."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from lmms_rekv.io.lmms_lab import KEY_PREFIXES

    with open(os.path.join(hf_dir, "config.json")) as fh:
        hf = json.load(fh)
    tensors = {}
    for key, tensor in load_file(os.path.join(hf_dir, "model.safetensors")).items():
        if key.startswith("vision_tower.head."):
            continue
        old, new = next((o, n) for o, n in KEY_PREFIXES if key.startswith(n))
        tensors[old + key[len(new):]] = tensor
    os.makedirs(os.path.join(out, "siglip"), exist_ok=True)
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    vision = {k: v for k, v in hf["vision_config"].items() if k not in ("num_hidden_layers", "vision_use_head")}
    with open(os.path.join(out, "siglip", "config.json"), "w") as fh:
        json.dump(vision, fh, indent=1)
    text = {k: v for k, v in hf["text_config"].items() if k not in ("model_type", "layer_types", "rope_parameters", "dtype")}
    text["rope_theta"] = hf["text_config"].get("rope_parameters", {}).get("rope_theta", hf["text_config"].get("rope_theta"))
    size = hf["vision_config"]["image_size"]
    config = dict(
        text, architectures=["LlavaQwenForCausalLM"], model_type="llava", mm_vision_tower="siglip",
        mm_hidden_size=hf["vision_config"]["hidden_size"], mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
        mm_vision_select_feature="patch", mm_patch_merge_type="spatial_unpad", mm_spatial_pool_mode="bilinear",
        mm_spatial_pool_stride=2, mm_newline_position="one_token", image_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=hf.get("image_grid_pinpoints") or [[size, size]], tie_word_embeddings=hf.get("tie_word_embeddings", False),
    )
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump(config, fh, indent=1)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(out)
    for leftover in ("chat_template.jinja", "chat_template.json"):
        if os.path.isfile(os.path.join(out, leftover)):
            os.remove(os.path.join(out, leftover))
    return out
