"""Things built on the public API: demo, benchmarks, doctor, tiny random models, the trained
miniature, KV accounting and presets."""
