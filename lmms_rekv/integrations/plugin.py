"""lmms-eval entry point (group ``lmms_eval.models``): registers ``rekv_llava_ov``.

lmms-eval imports this module on every start, so it imports nothing heavy and never raises.
"""

from __future__ import annotations

MODEL_ID = "rekv_llava_ov"
CLASS_PATH = "lmms_rekv.integrations.lmms_eval_model.ReKVLlavaOV"


def manifest():
    """The ``ModelManifest`` for ``rekv_llava_ov`` (an empty list if lmms-eval lacks the API)."""
    try:
        from lmms_eval.models.registry_v2 import ModelManifest
    except Exception:  # an lmms-eval without registry_v2: nothing to register
        return []
    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH, aliases=("rekv",))
