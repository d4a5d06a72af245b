"""Which frames a question needs: internal scoring with the model's own queries and keys,
external embeddings (open_clip), their fusion and the top-k / adaptive selection."""
