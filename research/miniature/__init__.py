"""Training and studies of the miniature (the checkpoint and its world ship with the package:
``lmms_rekv.miniature``). Run from a checkout:

    python -m research.miniature train --minutes 15 --seed 0 --out DIR
    python -m research.miniature eval [--model DIR]
    python -m research.miniature clip --minutes 3 --out DIR

It measures what only trained weights show: whether retrieval finds the moment a question
is about as the stream grows.
"""
