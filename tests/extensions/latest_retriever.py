"""A toy retrieval method: the latest ``topk_frames`` blocks, whatever the question."""

import torch

from lmms_rekv.registry import RETRIEVERS


def latest(config, policy, scores):
    chosen = torch.arange(max(0, scores.blocks - policy.topk), scores.blocks)

    def selector(layer, queries, neutral=None):
        return chosen

    return selector


def register() -> None:
    RETRIEVERS.register("latest", latest)
