"""Where every frame's KV lives: the block store, its backends (memory, disk), KV
quantization and session persistence."""
