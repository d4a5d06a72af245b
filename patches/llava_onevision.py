"""LLaVA-OneVision (SigLIP + Qwen2, 1-D RoPE): the family adapter.

A block is one frame: ``frame_tokens`` visual tokens (the pooled SigLIP grid), and the
whole video is followed by one ``image_newline`` embedding, which the engine places at the
start of the text after the video. Positions are 1-D and consecutive (the base class).
"""

from __future__ import annotations

import math
from typing import Tuple

import torch

from .base import Backbone


class LlavaOnevisionBackbone(Backbone):
    """ReKV adapter for ``LlavaOnevisionForConditionalGeneration``."""

    model_type = "llava_onevision"

    @classmethod
    def load(cls, path: str, dtype: torch.dtype, **model_kwargs):
        from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration

        from lmms_rekv.io.preprocess import frame_processor
        from lmms_rekv.io.prompt import load_chat_template

        processor = frame_processor(path)  # the checkpoint's own rule (fails before the weights load)
        model = LlavaOnevisionForConditionalGeneration.from_pretrained(path, dtype=dtype, **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return model, tokenizer, load_chat_template(path, tokenizer), processor

    def rotary_function(self):
        from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb  # the Qwen2 text tower's

        return apply_rotary_pos_emb

    def fixed_block_tokens(self) -> int:
        vision = self.model.config.vision_config
        return math.ceil(vision.image_size // vision.patch_size / 2) ** 2

    @property
    def video_token(self) -> str:
        return self.tokenizer.convert_ids_to_tokens(self.model.config.video_token_id)

    def block_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` -> ``(1, N * frame_tokens, hidden)`` (without the newline)."""
        out = self.model.model.get_video_features(pixel_values_videos=pixels[None])
        return out.pooler_output[:, :-1]

    def newline_embedding(self) -> torch.Tensor:
        """``(1, 1, hidden)`` the video's ``image_newline``."""
        return self.model.model.image_newline.to(self.model.dtype)[None, None]

    def suffix_embeds(self, suffix) -> torch.Tensor:
        return torch.cat([self.newline_embedding(), self.embed(suffix)], dim=1)

    def suffix_offset(self) -> int:
        return 1

    def split_prompt(self, question: str) -> Tuple[str, str]:
        from lmms_rekv.io.prompt import split_prompt

        return split_prompt(self.tokenizer, self.chat_template, question, self.video_token)

    def vanilla_input_ids(self, question: str, frames: int, layout=None) -> torch.Tensor:
        """``<video>`` expanded to ``frames * frame_tokens + 1`` video tokens."""
        video = [self.model.config.video_token_id] * (frames * self.block_tokens + 1)
        return torch.tensor([self.prompt.prefix_ids() + video + self.prompt.suffix_ids(question)], device=self.model.device)
