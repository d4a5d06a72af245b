"""Benchmarks and their recorded results (run from a checkout): ``python -m benchmarks.bench
--preset tiny --out DIR`` (latency, memory and accuracy vs stream length; ``--preset live``: a
question right after a burst), ``python -m benchmarks.ovo_reuse`` (OVO-Bench stream reuse).
Each results folder names the machine it was measured on."""
