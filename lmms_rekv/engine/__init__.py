"""The ReKV engine: a stream's session, windowed encoding, question answering over retrieved
KV, the attention kernels and decoding. Family-free: everything model-specific comes from a
``lmms_rekv.patches`` backbone adapter."""
