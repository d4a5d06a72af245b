"""ReKV inside other tools: the lmms-eval model class, its entry point and ``rekv-eval``."""
