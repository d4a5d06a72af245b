"""The miniature's tokenizer, architecture and checkpoint layout (a llava-hf folder)."""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Dict

from lmms_rekv.miniature import world

# the synthetic worlds a miniature can be trained on (modules with the same public shape)
WORLDS = {"tiled": "lmms_rekv.miniature.world", "video": "research.miniature.video_world"}


def world_module(name: str = "tiled"):
    """The world module called ``name`` (see ``WORLDS``)."""
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; choose from {tuple(WORLDS)}")
    return importlib.import_module(WORLDS[name])

SPACE = "\u0120"  # byte-level BPE's marker of a leading space


@dataclass(frozen=True)
class Architecture:
    """Sizes of the miniature (the real ``LlavaOnevisionForConditionalGeneration`` class).

    With ``image_size=16, patch_size=4`` SigLIP sees a 4x4 patch grid, pooled 2x2 by
    LLaVA-OV: 4 visual tokens per frame. The video world's frames need ``image_size=32``
    (``for_world("video")``): 8x8 patches, 16 visual tokens per frame."""

    vision_hidden: int = 64
    vision_layers: int = 1
    vision_heads: int = 2
    image_size: int = world.FRAME_SIZE
    patch_size: int = 4
    hidden: int = 128
    layers: int = 3
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 256
    vocab_size: int = 640
    rope_theta: float = 10_000.0
    family: str = "llava_onevision"  # or a Qwen family (see families.py)

    @classmethod
    def for_world(cls, name: str = "tiled", **sizes) -> "Architecture":
        """The architecture whose vision tower reads world ``name``'s frames."""
        return cls(**{"image_size": world_module(name).FRAME_SIZE, **sizes})


def build_tokenizer(vocab_size: int, seed: int = 0, family: str = "llava_onevision", world_name: str = "tiled"):
    """A byte-level BPE tokenizer trained on the world's questions and answers (with the
    family's special tokens); raises if an object, colour or answer word is not one token in
    the places it is used. ``world_name``: the world whose questions it tokenizes."""
    from research.tiny import build_tokenizer as byte_level_bpe

    from .families import special_tokens

    source = world_module(world_name)
    corpus = source.corpus(source.rng_for(source.TRAIN, seed))
    if family == "qwen3_vl":  # the timestamp text before every block: " seconds" one token, as in Qwen's vocabulary
        corpus += [f"<{t / 2:.1f} seconds>" for t in range(2000)]
    tokenizer = byte_level_bpe(vocab_size, corpus=corpus, special_tokens=special_tokens(family))
    word_ids(tokenizer, world_name)  # validates
    return tokenizer


def word_ids(tokenizer, world_name: str = "tiled") -> Dict[str, Dict[str, int]]:
    """Token ids of the world's words: ``{"object_q": {word: id}}`` for objects inside a
    question, ``"answer"`` for answer words (both with their leading space: the miniature
    answers " red", so an object is one token wherever it appears)."""
    def one(text: str) -> int:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"{text!r} is {len(ids)} tokens in the miniature's tokenizer; raise vocab_size")
        return ids[0]

    source = world_module(world_name)
    answers = sorted({w for words in source.answer_words().values() for w in words})
    return {
        "object_q": {w: one(" " + w) for w in source.OBJECTS},
        "answer": {w: one(" " + w) for w in answers},
    }


def build_model(arch: Architecture, tokenizer, seed: int = 0):
    """A freshly initialised miniature (transformers' default init, seeded)."""
    if arch.family != "llava_onevision":
        from .families import build_qwen

        return build_qwen(arch, tokenizer, seed)
    import torch
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    config = LlavaOnevisionConfig(
        text_config=dict(
            model_type="qwen2", vocab_size=len(tokenizer), hidden_size=arch.hidden, intermediate_size=arch.ffn,
            num_hidden_layers=arch.layers, num_attention_heads=arch.heads, num_key_value_heads=arch.kv_heads,
            max_position_embeddings=32768, rope_theta=arch.rope_theta, tie_word_embeddings=True,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        ),
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=arch.vision_hidden, intermediate_size=arch.vision_hidden * 2,
            num_hidden_layers=arch.vision_layers, num_attention_heads=arch.vision_heads, image_size=arch.image_size,
            patch_size=arch.patch_size,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=[[arch.image_size, arch.image_size]],
        tie_word_embeddings=True,  # as LLaVA-OV 0.5B: answers are read out through the input embeddings
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    return model


def save_checkpoint(path: str, model, tokenizer, arch: Architecture, log: dict, world_name: str = "tiled") -> str:
    """Write a llava-hf folder: weights, tokenizer, chat template, preprocessor config, the
    world's description (``world.json``) and the training log (``training_log.json``)."""
    from .families import chat_template, save_processor

    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    os.chmod(os.path.join(path, "model.safetensors"), 0o644)  # readable by every user of an installed wheel
    if arch.family != "llava_onevision":  # a Qwen processor folder: tokenizer, chat template, image + video processors
        save_processor(path, arch, tokenizer)
    else:
        tokenizer.save_pretrained(path)
        with open(os.path.join(path, "chat_template.jinja"), "w") as fh:
            fh.write(chat_template(arch.family))
        size = {"height": arch.image_size, "width": arch.image_size}
        _dump(os.path.join(path, "preprocessor_config.json"), {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": size})
    _dump(os.path.join(path, "world.json"), describe_world(arch, world_name))
    _dump(os.path.join(path, "training_log.json"), log)
    return path


def describe_world(arch: Architecture, world_name: str = "tiled") -> dict:
    """What a reader needs to regenerate the world and re-run the evaluation."""
    source = world_module(world_name)
    return {
        "objects": list(source.OBJECTS), "colors": list(source.COLORS), "palette": source.PALETTE,
        "templates": source.TEMPLATES, "chance": source.CHANCE, "frame_size": source.FRAME_SIZE,
        "needles_per_video": source.NEEDLES, "architecture": asdict(arch),
        "seeds": "training: numpy default_rng([0, seed]); evaluation: default_rng([1, seed]) (held out)",
        "world": world_name, "module": WORLDS[world_name], "kinds": list(source.KINDS),
    }


def _dump(path: str, value) -> None:
    with open(path, "w") as fh:
        json.dump(value, fh, indent=1)


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())

