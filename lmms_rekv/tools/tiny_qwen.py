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

#: The Qwen2-VL chat format (system turn omitted): "<|im_start|>user\n<|vision_start|>...".
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen2_vl(path: str, seed: int = 0, layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                        max_pixels: int = 56 * 84, init_std: float = 0.15) -> str:
    """Write a tiny random Qwen2-VL checkpoint to ``path`` and return ``path``.

    Head dim ``hidden / heads`` (16) -> 8 rotary frequencies, sectioned T/H/W as ``[2, 3, 3]``.
    The processor's pixel budget ``max_pixels`` makes the adapter's default frame 56x56
    (2x2 = 4 tokens per 2-frame block)."""
    import torch
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor,
                              Qwen2VLVideoProcessor)

    from .tiny import build_tokenizer

    tokenizer = build_tokenizer(seed=seed, special_tokens=SPECIAL_TOKENS)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    half = hidden // heads // 2
    section = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": section},
            bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, init_std)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    budget = dict(min_pixels=28 * 28, max_pixels=max_pixels)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**budget), video_processor=Qwen2VLVideoProcessor(**budget),
        tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
    )
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    logger.info("wrote tiny Qwen2-VL to %s", path)
    return path
