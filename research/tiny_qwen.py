"""Build tiny random-weight Qwen-VL checkpoints offline (exactness tests of the M-RoPE
families).

The folder looks like a hub checkpoint: ``config.json`` + safetensors, a byte-level BPE
tokenizer trained here (Qwen chat and vision special tokens), the processor files
(image + video processor, saved by ``Qwen2VLProcessor.save_pretrained``) and a chat template
that renders a video as ``<|vision_start|><|video_pad|><|vision_end|>`` inside the user turn,
as the hub templates do.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]

#: The Qwen2-VL chat format (no default system turn): "<|im_start|>user\n<|vision_start|>..."; with
#: ``enable_thinking=False`` the empty think block of Qwen3 templates after the generation prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def build_tiny_qwen2_vl(path: str, seed: int = 0, layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                        max_pixels: int = 56 * 84, init_std: float = 0.15, family: str = "qwen2_vl") -> str:
    """Write a tiny random Qwen2-VL (``family="qwen2_5_vl"``: Qwen2.5-VL; ``"qwen3_vl"``:
    Qwen3-VL, see :func:`build_tiny_qwen3_vl`) checkpoint to ``path`` and return ``path``.

    Head dim ``hidden / heads`` (16) -> 8 rotary frequencies, sectioned T/H/W as ``[2, 3, 3]``.
    The processor's pixel budget ``max_pixels`` makes the adapter's default frame 56x56
    (2x2 = 4 tokens per 2-frame block). Qwen2.5-VL: ``tokens_per_second=2`` (the released
    checkpoints' value), vision window 56 px with one full-attention block."""
    import torch
    import transformers

    from .tiny import build_tokenizer

    if family == "qwen3_vl":
        return build_tiny_qwen3_vl(path, seed=seed, layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
                                   init_std=init_std)
    if family not in ("qwen2_vl", "qwen2_5_vl"):
        raise ValueError(f"family must be qwen2_vl, qwen2_5_vl or qwen3_vl, got {family!r}")
    tokenizer = build_tokenizer(seed=seed, special_tokens=SPECIAL_TOKENS)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    half = hidden // heads // 2
    section = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    text = dict(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": section},
        bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(depth=2, hidden_size=32, num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    if family == "qwen2_vl":
        vision.update(embed_dim=32, hidden_size=hidden, mlp_ratio=2)
        names = ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor")
    else:
        vision.update(intermediate_size=64, out_hidden_size=hidden, window_size=56, fullatt_block_indexes=[1], tokens_per_second=2)
        names = ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor")
    config_cls, model_cls, processor_cls = (getattr(transformers, n) for n in names)
    config = config_cls(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = model_cls(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, init_std)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    budget = dict(min_pixels=28 * 28, max_pixels=max_pixels)
    processor = processor_cls(
        image_processor=transformers.Qwen2VLImageProcessor(**budget), video_processor=transformers.Qwen2VLVideoProcessor(**budget),
        tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
    )
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    logger.info("wrote tiny %s to %s", family, path)
    return path


def build_tiny_qwen3_vl(path: str, seed: int = 0, layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                        init_std: float = 0.15, max_pixels: int = 64 * 96 * 16, moe: bool = False) -> str:
    """Write a tiny random Qwen3-VL (``moe``: Qwen3-VL-MoE, 4 experts, 2 per token)
    checkpoint to ``path`` and return ``path``.

    Head dim 16 -> 8 rotary frequencies, interleaved T/H/W with ``mrope_section [4, 2, 2]``;
    q/k RMS norms before RoPE; vision patch 16, merge 2 (a 64 x 64 frame pair -> 4 tokens),
    two deepstack levels (vision blocks 0 and 1, added after LM layers 0 and 1). The video
    processor's clip budget ``max_pixels`` keeps 64 x 64 frames for up to 48 frames."""
    import torch
    import transformers

    from .tiny import build_tokenizer

    tokenizer = build_tokenizer(seed=seed, special_tokens=SPECIAL_TOKENS)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = hidden // heads
    text = dict(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True},
        bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    if moe:
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden, decoder_sparse_step=1)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
                  temporal_patch_size=2, in_channels=3, out_hidden_size=hidden, num_position_embeddings=16,
                  deepstack_visual_indexes=[0, 1])
    prefix = "Qwen3VLMoe" if moe else "Qwen3VL"
    config = getattr(transformers, f"{prefix}Config")(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, f"{prefix}ForConditionalGeneration")(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, init_std)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    size = {"shortest_edge": 32 * 32, "longest_edge": max_pixels}
    processor = transformers.Qwen3VLProcessor(
        image_processor=transformers.Qwen2VLImageProcessor(size=size, patch_size=16),
        video_processor=transformers.Qwen3VLVideoProcessor(size=size, patch_size=16, do_sample_frames=False,
                                                            cap_pixels_per_frame=False),
        tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
    )
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    logger.info("wrote tiny %s to %s", config.model_type, path)
    return path
