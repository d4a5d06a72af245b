"""Model presets: the real LLaVA-OneVision 0.5B / 7B architectures (random weights; speed and
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
