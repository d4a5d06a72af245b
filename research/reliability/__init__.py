"""Reliability harnesses (run from a checkout): ``python -m research.reliability.soak`` (hours of
streaming), ``.faults`` (injected failures), ``.fuzz_videos`` (broken and odd video files),
``.quant_eval`` (int8/int4 answer agreement)."""
