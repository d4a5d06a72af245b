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
    write_processor(path, tokenizer, image_size, patch_size)
    logger.info("wrote tiny LLaVA-OneVision to %s", path)
    return path


def write_processor(path: str, tokenizer, image_size: int, patch_size: int) -> None:
    """Save the checkpoint's ``LlavaOnevisionProcessor`` as llava-hf checkpoints ship it
    (image and video processor configs at ``image_size`` with mean/std 0.5, the processor config,
    the chat template), so ``AutoProcessor.from_pretrained(path)`` is the vanilla reference."""
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    shape = {"size": {"height": image_size, "width": image_size}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(**shape, image_grid_pinpoints=[[image_size, image_size]]),
        tokenizer=tokenizer, video_processor=LlavaOnevisionVideoProcessor(**shape), chat_template=CHAT_TEMPLATE,
        num_image_tokens=(image_size // patch_size) ** 2, vision_feature_select_strategy="full")
    processor.save_pretrained(path)
    with open(os.path.join(path, "chat_template.jinja"), "w") as fh:
        fh.write(CHAT_TEMPLATE)


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


#: LLaVA-OneVision's anyres grid (lmms-lab ``llava-onevision-qwen2-*-ov``: 1x1 to 6x6 tiles of 384)
OV_GRID_PINPOINTS = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]

#: the hub-style ``mm_vision_tower`` of ``build_tiny_lmms_lab_reference``, resolved from the HF cache
TINY_REFERENCE_TOWER = "rekv-tiny/siglip-tiny-patch14-384"


def build_tiny_lmms_lab_reference(out: str, hf_home: str, seed: int = 0, init_std: float = 0.3) -> str:
    """Write a tiny random lmms-lab-format (LLaVA-NeXT ``llava_qwen``) LLaVA-OneVision checkpoint
    to ``out`` that LLaVA-NeXT itself -- hence lmms-eval's own ``llava_onevision`` -- loads offline
    (with ``HF_HOME=hf_home``, ``HF_HUB_OFFLINE=1``); returns ``out``.

    The model is ``build_tiny_model``'s (2-layer, hidden-64 Qwen2; ``init_std`` large so greedy
    answers are well separated) with a 2-layer SigLIP tower of so400m's geometry (384 px, patch 14,
    729 patches: LLaVA-NeXT assumes it), in lmms-lab's layout (``write_lmms_lab_twin``) with
    lmms-lab OneVision's ``mm_*`` fields. ``mm_vision_tower`` is the hub id
    ``TINY_REFERENCE_TOWER``: LLaVA-NeXT turns an existing local path into a CLIP tower, so the
    tower's config (3 layers: LLaVA-NeXT drops the last) and weights (the checkpoint's 2 layers,
    one random layer more and SigLIP's pooling head) go into the offline HF cache under
    ``hf_home`` as ``hub/models--rekv-tiny--siglip-tiny-patch14-384/snapshots/<rev>/`` +
    ``refs/main``. The tokenizer config names ``PreTrainedTokenizerFast`` (transformers 4.51
    reads it). LLaVA-NeXT picks its model class from the folder name: it must contain "qwen"."""
    import hashlib
    import shutil
    import tempfile

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import SiglipVisionConfig, SiglipVisionModel

    if "qwen" not in os.path.basename(os.path.normpath(out)).lower():
        raise ValueError(f"{out}: LLaVA-NeXT loads a llava_qwen checkpoint only from a folder whose name contains 'qwen'")
    with tempfile.TemporaryDirectory() as hf_dir:
        build_tiny_model(hf_dir, seed=seed, image_size=384, patch_size=14, init_std=init_std)
        write_lmms_lab_twin(hf_dir, out)
    shutil.rmtree(os.path.join(out, "siglip"))
    with open(os.path.join(out, "config.json")) as fh:
        config = json.load(fh)
    config.update(
        mm_vision_tower=TINY_REFERENCE_TOWER, image_grid_pinpoints=OV_GRID_PINPOINTS, mm_use_im_patch_token=False,
        mm_use_im_start_end=False, use_mm_proj=True, mm_tunable_parts="mm_vision_tower,mm_mlp_adapter,mm_language_model",
        tokenizer_model_max_length=32768, tokenizer_padding_side="right", vision_tower_pretrained=None,
        use_sliding_window=False, sliding_window=32768, max_window_layers=config["num_hidden_layers"],
        torch_dtype="float32",
    )
    with open(os.path.join(out, "tokenizer.json")) as fh:
        special = {t["content"]: t["id"] for t in json.load(fh)["added_tokens"]}
    config.update(bos_token_id=special["<|endoftext|>"], eos_token_id=special["<|im_end|>"])  # as Qwen2's
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump(config, fh, indent=1)
    with open(os.path.join(out, "generation_config.json"), "w") as fh:
        json.dump({"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}, fh, indent=1)
    # what transformers 4.51 reads (transformers 5 writes tokenizer_class TokenizersBackend and
    # extra_special_tokens as a list, which 4.51 takes for a dict)
    tok_config = dict(tokenizer_class="PreTrainedTokenizerFast", eos_token="<|im_end|>", pad_token="<|endoftext|>",
                      additional_special_tokens=[t for t in special if t != "<|endoftext|>"], model_max_length=32768,
                      padding_side="right", clean_up_tokenization_spaces=False, split_special_tokens=False)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as fh:
        json.dump(tok_config, fh, indent=1)

    # the tower as the hub holds it: the checkpoint's layers, one more, the pooling head
    prefix = "model.vision_tower.vision_tower."
    own = {k[len(prefix):]: v for k, v in load_file(os.path.join(out, "model.safetensors")).items() if k.startswith(prefix)}
    layers = 1 + max(int(k.split(".")[3]) for k in own if k.startswith("vision_model.encoder.layers."))
    vision = SiglipVisionConfig(hidden_size=own["vision_model.post_layernorm.weight"].numel(), num_hidden_layers=layers + 1,
                                intermediate_size=own["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                                num_attention_heads=2, image_size=384, patch_size=14)
    torch.manual_seed(seed + 1)
    tower = SiglipVisionModel(vision)
    full = {}
    for key, value in tower.state_dict().items():
        key = key if key.startswith("vision_model.") else "vision_model." + key
        full[key] = own.get(key, (value.normal_(0.0, init_std) if value.dim() >= 2 else value).contiguous())
    tower_config = {k: v for k, v in vision.to_dict().items() if k not in ("transformers_version", "dtype", "torch_dtype")}
    tower_config["architectures"] = ["SiglipVisionModel"]
    blob = json.dumps(tower_config, indent=1, sort_keys=True)
    repo = os.path.join(hf_home, "hub", "models--" + TINY_REFERENCE_TOWER.replace("/", "--"))
    rev = hashlib.sha1(blob.encode()).hexdigest()
    snapshot = os.path.join(repo, "snapshots", rev)
    os.makedirs(snapshot, exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(snapshot, "config.json"), "w") as fh:
        fh.write(blob)
    save_file(full, os.path.join(snapshot, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(repo, "refs", "main"), "w") as fh:
        fh.write(rev)
    logger.info("wrote tiny lmms-lab LLaVA-OneVision to %s (tower %s in %s)", out, TINY_REFERENCE_TOWER, hf_home)
    return out


def noise_frames(first: int, count: int, size: int = 96):
    """Frames ``first..first+count-1`` of a reproducible noise stream, uint8 ``(count, size, size,
    3)``: frame ``i`` depends on ``i`` alone, so any frame can be regenerated however the stream is
    cut (benchmarks, the soak run)."""
    import numpy as np

    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        out[i] = np.random.default_rng(first + i).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return out
