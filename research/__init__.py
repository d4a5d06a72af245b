"""Beside the package, not installed: the miniature's training and studies (``research.miniature``),
the reliability harnesses (``research.reliability``) and the tiny random-weight checkpoints the
tests, benchmarks and studies build (``research.tiny``, ``research.tiny_qwen``). Run from a
checkout, e.g. ``python -m research.tiny``."""
