"""lmms-eval task configs shipped with lmms-rekv (installed as ``lmms_rekv.tasks``)."""
