"""A toy token reducer: the first ``keep`` tokens of each block."""

import torch

from lmms_rekv.registry import REDUCERS
from lmms_rekv.storage.reduce import TokenReducer


class FirstTokens(TokenReducer):
    def cut(self, layer, keys, values):
        slots = torch.arange(self.keep, device=keys.device).expand(keys.shape[0], -1)
        return keys[:, : self.keep], values[:, : self.keep], slots


def register() -> None:
    REDUCERS.register("first", FirstTokens)
