"""The miniature in each model family's shape: the real transformers classes of LLaVA-OV,
Qwen2-VL, Qwen2.5-VL and Qwen3-VL at miniature sizes, with the family's own prompt layout
and positions, so that one world, one recipe and one benchmark serve them all.

Qwen-shaped miniatures use a temporal patch of one frame (``temporal_patch_size=1``; the
released checkpoints use 2): each frame is its own block of ``(16 / 8)^2 = 4`` visual tokens,
as in the LLaVA-OV miniature, so that the world, its per-frame auxiliary losses and its
questions carry over unchanged. Everything the position study is about is the family's:
M-RoPE layout (time / height / width), time as the block index (Qwen2-VL), as absolute
seconds through ``tokens_per_second`` (Qwen2.5-VL) or as ``<t seconds>`` text before each
block (Qwen3-VL), and the text after the video.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional

import numpy as np
import torch

#: families a miniature can be built in
FAMILIES = ("llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl")
#: the sampling rate the Qwen miniatures are trained at (their time positions / timestamps)
TRAIN_FPS = 1.0
QWEN_PATCH = 4  # one world tile per vision patch; merged 2 x 2 into a token


def special_tokens(family: str) -> Optional[List[str]]:
    """The tokenizer's special tokens (None: the LLaVA-OV defaults of ``tools.tiny``)."""
    if family == "llava_onevision":
        return None
    from research.tiny_qwen import SPECIAL_TOKENS

    return SPECIAL_TOKENS


def chat_template(family: str) -> str:
    if family == "llava_onevision":
        from research.tiny import CHAT_TEMPLATE
    else:
        from research.tiny_qwen import CHAT_TEMPLATE
    return CHAT_TEMPLATE


def video_token(family: str) -> str:
    return "<video>" if family == "llava_onevision" else "<|video_pad|>"


def _rope(arch, family: str) -> dict:
    """The text tower's rope parameters: 1-D for LLaVA-OV, M-RoPE sections over
    ``head_dim / 2`` frequencies for the Qwen families (Qwen3-VL interleaved)."""
    if family == "llava_onevision":
        return {"rope_type": "default", "rope_theta": arch.rope_theta}
    half = arch.hidden // arch.heads // 2
    hw = half * 3 // 8 if family != "qwen3_vl" else half * 5 // 16
    section = [half - 2 * hw, hw, hw]
    params = {"rope_type": "default", "rope_theta": arch.rope_theta, "mrope_section": section}
    if family == "qwen3_vl":
        params["mrope_interleaved"] = True
    return params


def build_qwen(arch, tokenizer, seed: int = 0):
    """A freshly initialised Qwen-shaped miniature (transformers' default init, seeded)."""
    import transformers

    family = arch.family
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in special_tokens(family)}
    text = dict(
        vocab_size=len(tokenizer), hidden_size=arch.hidden, intermediate_size=arch.ffn, num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads, num_key_value_heads=arch.kv_heads, max_position_embeddings=32768,
        rope_parameters=_rope(arch, family), tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(depth=arch.vision_layers, num_heads=arch.vision_heads, patch_size=QWEN_PATCH, spatial_merge_size=2,
                  temporal_patch_size=1, in_channels=3)
    if family == "qwen2_vl":
        vision.update(embed_dim=arch.vision_hidden, hidden_size=arch.hidden, mlp_ratio=2)
        names = ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration")
    elif family == "qwen2_5_vl":
        vision.update(hidden_size=arch.vision_hidden, intermediate_size=arch.vision_hidden * 2, out_hidden_size=arch.hidden,
                      window_size=arch.image_size, fullatt_block_indexes=[0], tokens_per_second=2)
        names = ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration")
    elif family == "qwen3_vl":
        text["head_dim"] = arch.hidden // arch.heads
        vision.update(hidden_size=arch.vision_hidden, intermediate_size=arch.vision_hidden * 2, out_hidden_size=arch.hidden,
                      num_position_embeddings=(arch.image_size // QWEN_PATCH) ** 2, deepstack_visual_indexes=[])
        names = ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration")
    else:
        raise ValueError(f"no Qwen-shaped miniature for family={family!r}; one of {FAMILIES}")
    config_cls, model_cls = (getattr(transformers, n) for n in names)
    config = config_cls(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True,
    )
    config.miniature = dataclasses.asdict(arch)  # the sizes, read back by ``train.architecture_of``
    torch.manual_seed(seed)
    model = model_cls(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    return model


def video_processor(arch):
    """The family's video processor at the miniature's frame size (mean/std 0.5; frames kept
    as they are: no resizing, no frame sampling)."""
    import transformers

    size = {"shortest_edge": 8 * 8, "longest_edge": arch.image_size * arch.image_size}
    common = dict(size=size, patch_size=QWEN_PATCH, temporal_patch_size=1, merge_size=2, image_mean=[0.5] * 3,
                  image_std=[0.5] * 3, do_sample_frames=False, do_resize=False)
    if arch.family == "qwen3_vl":
        return transformers.Qwen3VLVideoProcessor(**common, cap_pixels_per_frame=False)
    return transformers.Qwen2VLVideoProcessor(**common, cap_pixels_per_frame=False)


def save_processor(path: str, arch, tokenizer) -> None:
    """The family's processor files (image + video processor, tokenizer, chat template)."""
    import transformers

    size = {"shortest_edge": 8 * 8, "longest_edge": arch.image_size * arch.image_size}
    image = transformers.Qwen2VLImageProcessor(size=size, patch_size=QWEN_PATCH, temporal_patch_size=1, merge_size=2,
                                               image_mean=[0.5] * 3, image_std=[0.5] * 3)
    cls = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}[arch.family]
    processor = getattr(transformers, cls)(image_processor=image, video_processor=video_processor(arch),
                                           tokenizer=tokenizer, chat_template=chat_template(arch.family))
    os.makedirs(path, exist_ok=True)
    processor.save_pretrained(path)


class QwenVideo:
    """Frames -> the Qwen family's patches and prompt ids of the video part, for training and
    held-out evaluation with full attention (the model's own ``get_rope_index`` positions)."""

    def __init__(self, arch, tokenizer, frame_tokens: int) -> None:
        self.family, self.frame_tokens = arch.family, frame_tokens
        self.processor = video_processor(arch)
        self.tokenizer = tokenizer
        self.ids = {t: tokenizer.convert_tokens_to_ids(t) for t in special_tokens(arch.family)}
        self.grid = arch.image_size // QWEN_PATCH
        self._headers: Dict[int, List[int]] = {}

    def pixels(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 ``(L, S, S, 3)`` -> ``(L * grid^2, 3 * patch^2)`` patches."""
        return self.processor(videos=[frames], do_resize=False, return_tensors="pt")["pixel_values_videos"]

    def video_ids(self, frames: int) -> List[int]:
        """Prompt ids between the template's text before and after the video."""
        pad = [self.ids["<|video_pad|>"]] * self.frame_tokens
        if self.family != "qwen3_vl":
            return pad * frames
        out: List[int] = []
        for i in range(frames):
            out += self._header(i) + [self.ids["<|vision_start|>"]] + pad + [self.ids["<|vision_end|>"]]
        return out

    def _header(self, frame: int) -> List[int]:
        """Ids of the processor's timestamp of a one-frame block: ``(i / fps + i / fps) / 2``."""
        if frame not in self._headers:
            seconds = (frame / TRAIN_FPS + frame / TRAIN_FPS) / 2
            self._headers[frame] = self.tokenizer(f"<{seconds:.1f} seconds>", add_special_tokens=False)["input_ids"]
        return self._headers[frame]

    def forward(self, model, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, first_layer: bool):
        """``(hidden (B, T, H), visual (B, L, ft, H)[, after the first layer (B, L, ft, H),
        after the second (B, T, H)])``."""
        inner = model.model
        b = ids.shape[0]
        frames = pixels.shape[1] // (self.grid * self.grid)
        grid = torch.tensor([[frames, self.grid, self.grid]] * b)
        feats = inner.get_video_features(pixel_values_videos=pixels.flatten(0, 1), video_grid_thw=grid).pooler_output
        feats = torch.stack(list(feats))  # (B, L * ft, H)
        video = ids == self.ids["<|video_pad|>"]
        embeds = inner.language_model.embed_tokens(ids).masked_scatter(video[..., None], feats.to(inner.language_model.dtype))
        extra = {"second_per_grid_ts": torch.full((b,), 1.0 / TRAIN_FPS)} if self.family == "qwen2_5_vl" else {}
        positions, _ = inner.get_rope_index(ids, mm_token_type_ids=video.long() * 2, video_grid_thw=grid,
                                            attention_mask=mask, **extra)
        out = inner.language_model(inputs_embeds=embeds, position_ids=positions, attention_mask=mask,
                                   output_hidden_states=first_layer)
        visual = feats.view(b, frames, self.frame_tokens, -1)
        if not first_layer:
            return out.last_hidden_state, visual
        after_first = out.hidden_states[1][video].view(visual.shape)
        return out.last_hidden_state, visual, after_first, out.hidden_states[2]
