"""``.venv-reference/bin/python tests/llava_reference_launch.py <lmms-eval CLI arguments>``: lmms-eval's
CLI (``lmms_eval.__main__.cli_evaluate``) in the reference venv (``scripts/reference_venv.sh``), for
``tests/llava_reference.py``. Not a test module; it runs only in the reference process.

``REKV_REFERENCE_DTYPE=float32``: LLaVA-NeXT's float16-only builder and lmms-eval's ``.half()``
on video pixels are forced to float32 from outside, without editing either:
``LlavaQwenForCausalLM.from_pretrained`` gets ``torch_dtype=float32`` in place of the builder's
float16, and the pixel values LLaVA-NeXT's ``SigLipImageProcessor.preprocess`` returns are a
tensor whose ``.half()`` gives the same float32 tensor back. ``float16`` (or unset): unchanged.

``REKV_REFERENCE_PROBE=<file>``: appends one JSON line per event -- ``{"model": [dtypes]}`` after
loading, ``{"pixels": dtype}`` for each input the vision tower receives -- so a caller can check
which precision actually ran (forward pre-hooks only: they change nothing).
"""

from __future__ import annotations

import json
import os


def _probe(record: dict) -> None:
    path = os.environ.get("REKV_REFERENCE_PROBE")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


def patch_llava(dtype: str) -> None:
    import torch
    from llava.model.language_model.llava_qwen import LlavaQwenForCausalLM
    from llava.model.multimodal_encoder.siglip_encoder import SigLipImageProcessor

    if dtype not in ("float16", "float32"):
        raise SystemExit(f"REKV_REFERENCE_DTYPE={dtype!r}: float16 or float32")
    original_from_pretrained = LlavaQwenForCausalLM.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        if dtype == "float32":
            kwargs["torch_dtype"] = torch.float32
        model = original_from_pretrained(cls, *args, **kwargs)
        _probe({"model": sorted({str(p.dtype) for p in model.parameters()})})
        tower = model.get_vision_tower()
        tower.register_forward_pre_hook(lambda module, args: _probe({"pixels": str(args[0].dtype)}))
        return model

    LlavaQwenForCausalLM.from_pretrained = classmethod(from_pretrained)
    if dtype != "float32":
        return

    class Float32Pixels(torch.Tensor):
        """Pixel values that stay float32 through lmms-eval's ``.half()``."""

        def half(self, memory_format=torch.preserve_format):
            return self.as_subclass(torch.Tensor).float()

    original_preprocess = SigLipImageProcessor.preprocess

    def preprocess(self, images, return_tensors):
        out = original_preprocess(self, images, return_tensors)
        pixels = out.get("pixel_values")
        if isinstance(pixels, torch.Tensor):
            out["pixel_values"] = pixels.float().as_subclass(Float32Pixels)
        return out

    SigLipImageProcessor.preprocess = preprocess


def main() -> None:
    patch_llava(os.environ.get("REKV_REFERENCE_DTYPE", "float16"))
    from lmms_eval.__main__ import cli_evaluate

    cli_evaluate()  # parses sys.argv


if __name__ == "__main__":
    main()
