"""``python tests/float32_launch.py <lmms-eval CLI arguments>``: lmms-eval's CLI with every
transformers model loaded in float32, whatever dtype the model class asks for (its own
``qwen2_5_vl`` / ``qwen3_vl`` load bfloat16, whose rounding lets tiny random checkpoints' near
ties flip differently from one implementation -- or one CPU -- to another). Nothing else is
changed; the dtype each loaded model really has is printed to stderr for the caller to check.
Not a test module: tests run it as a subprocess."""

from __future__ import annotations

import sys


def force_float32() -> None:
    import torch
    from transformers import PreTrainedModel

    original = PreTrainedModel.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        for key in ("dtype", "torch_dtype"):
            if key in kwargs:
                kwargs[key] = torch.float32
        model = original(cls, *args, **kwargs)
        print(f"float32_launch: loaded {cls.__name__} as {model.dtype}", file=sys.stderr)
        return model

    PreTrainedModel.from_pretrained = classmethod(from_pretrained)


if __name__ == "__main__":
    force_float32()
    from lmms_eval.__main__ import cli_evaluate

    cli_evaluate()
