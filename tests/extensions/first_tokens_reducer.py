"""A toy token reducer: the first ``keep`` tokens of each block."""

from lmms_rekv.registry import REDUCERS
from lmms_rekv.storage.reduce import TokenReducer


class FirstTokens(TokenReducer):
    def cut(self, layer, keys, values):
        return keys[:, : self.keep], values[:, : self.keep]


def register() -> None:
    REDUCERS.register("first", FirstTokens)
