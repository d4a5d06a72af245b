"""What the tests share: references computed another way (``reference``: dense generation, KV
capture; ``mrope_reference``: the M-RoPE families' vanilla answers and 3-D brute force;
``llava_reference``: lmms-eval's own ``llava_onevision`` in its venv) and offline data
(``ovo_data``: OVO-Bench documents)."""
