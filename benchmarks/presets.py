"""Model presets: the real LLaVA-OneVision 0.5B / 7B and Qwen2.5-VL 7B architectures (random weights; speed and
memory do not depend on the weights) and the tiny test model.

The configs mirror llava-hf/llava-onevision-qwen2-{0.5b,7b}-ov-hf: a SigLIP-SO400M-14-384
vision tower and a Qwen2 text tower."""

from __future__ import annotations

from typing import Dict

SIGLIP_SO400M = dict(
    model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
    num_attention_heads=16, image_size=384, patch_size=14, layer_norm_eps=1e-6,
)

TEXT = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, vocab_size=152000),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, vocab_size=152128),
}


def real_config(name: str, video_token_id: int = 151647, image_token_id: int = 151646, eos_token_id: int = 151645):
    """``LlavaOnevisionConfig`` of the real ``name`` ("0.5b" or "7b") architecture."""
    from transformers import LlavaOnevisionConfig

    if name not in TEXT:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(TEXT)}")
    text = dict(
        model_type="qwen2", max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=name == "0.5b", eos_token_id=eos_token_id, **TEXT[name],
    )
    return LlavaOnevisionConfig(
        text_config=text, vision_config=dict(SIGLIP_SO400M), image_token_id=image_token_id, video_token_id=video_token_id,
        vision_feature_layer=-1, vision_feature_select_strategy="full", tie_word_embeddings=name == "0.5b",
    )


def kv_geometry(config) -> Dict[str, int]:
    """Layers, kv heads and head dim of a LLaVA-OV config's text tower."""
    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return {"layers": text.num_hidden_layers, "kv_heads": text.num_key_value_heads, "head_dim": head_dim}


#: Qwen/Qwen2.5-VL-7B-Instruct's architecture (its config.json): a 32-layer windowed vision tower
#: (full attention at 7, 15, 23, 31) merging 2 x 2 patches of 14 px over 2-frame temporal patches,
#: and a 28-layer text tower with 4 KV heads and M-RoPE sections 16 / 24 / 24.
QWEN2_5_VL = {
    "7b": dict(
        text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                  vocab_size=152064, max_position_embeddings=128000, rms_norm_eps=1e-6,
                  rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]}),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
                    tokens_per_second=2, in_channels=3, hidden_act="silu"),
    ),
}


def qwen2_5_vl_config(name: str, image_token_id: int, video_token_id: int, vision_start_token_id: int,
                      vision_end_token_id: int, eos_token_id: int):
    """``Qwen2_5_VLConfig`` of the real ``name`` ("7b") architecture."""
    from transformers import Qwen2_5_VLConfig

    if name not in QWEN2_5_VL:
        raise ValueError(f"unknown Qwen2.5-VL preset {name!r}; choose from {sorted(QWEN2_5_VL)}")
    shapes = QWEN2_5_VL[name]
    return Qwen2_5_VLConfig(
        text_config=dict(eos_token_id=eos_token_id, bos_token_id=None, **shapes["text"]), vision_config=dict(shapes["vision"]),
        image_token_id=image_token_id, video_token_id=video_token_id, vision_start_token_id=vision_start_token_id,
        vision_end_token_id=vision_end_token_id, tie_word_embeddings=False,
    )


def llava_token_ids(tokenizer) -> Dict[str, int]:
    """``real_config``'s special-token ids as ``tokenizer`` numbers them."""
    return {k: tokenizer.convert_tokens_to_ids(t) for k, t in (("video_token_id", "<video>"), ("image_token_id", "<image>"),
                                                               ("eos_token_id", "<|im_end|>"))}


def qwen_token_ids(tokenizer) -> Dict[str, int]:
    """``qwen2_5_vl_config``'s special-token ids as ``tokenizer`` numbers them."""
    return {k: tokenizer.convert_tokens_to_ids(t) for k, t in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"), ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"), ("eos_token_id", "<|im_end|>"))}


def random_model(model_class, config, device, dtype):
    """``model_class(config)`` with random weights, made directly on ``device`` in ``dtype`` (a
    7B model never passes through host memory), in eval mode."""
    import torch

    with torch.device(device):
        torch.set_default_dtype(dtype)
        try:
            return model_class(config).eval()
        finally:
            torch.set_default_dtype(torch.float32)
