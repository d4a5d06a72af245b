"""Extension points by name: retrieval methods (``ReKVConfig.retrieval``), token reducers
(``token_reduction``) and storage backends (``offload``).

Adding one is one new file and one registration line::

    from lmms_rekv.registry import RETRIEVERS

    @RETRIEVERS.register("latest")
    def latest(config, policy, scores):  # see lmms_rekv.retrieval.selector.Retriever
        ...

after which ``ReKVConfig(retrieval="latest")`` is accepted. The built-ins are named here by
``module:attribute`` and imported on first use, so the torch-free configuration checks a name
without importing any implementation.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, Optional, Tuple

from .args import did_you_mean


class Registry:
    """Names -> implementations of one extension point (the setting ``setting`` picks one)."""

    def __init__(self, setting: str, builtin: Dict[str, str], interface: str) -> None:
        self.setting, self.interface = setting, interface
        self._lazy = dict(builtin)  # name -> "module:attribute", imported by ``get``
        self._loaded: Dict[str, Any] = {}

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(self._lazy) + tuple(n for n in self._loaded if n not in self._lazy)

    def register(self, name: str, implementation: Any = None) -> Any:
        """Register ``implementation`` as ``name`` (or use as a decorator); a taken name is refused."""
        if implementation is None:
            return lambda impl: self.register(name, impl)
        if name in self.names:
            raise ValueError(f"{self.setting} {name!r} is already registered")
        self._loaded[name] = implementation
        return implementation

    def unregister(self, name: str) -> None:
        """Forget a registered (not built-in) ``name``."""
        if name in self._lazy:
            raise ValueError(f"{self.setting} {name!r} is built in")
        self._loaded.pop(name, None)

    def get(self, name: str) -> Any:
        """The implementation registered as ``name`` (ValueError naming the choices when none)."""
        self.check(name)
        if name not in self._loaded:
            module, _, attribute = self._lazy[name].partition(":")
            self._loaded[name] = getattr(importlib.import_module(module), attribute)
        return self._loaded[name]

    def check(self, name: Optional[str]) -> None:
        """ValueError unless ``name`` is registered."""
        if name not in self.names:
            raise ValueError(f"{self.setting} must be one of {self.names}, got {name!r}"
                             + (did_you_mean(name, self.names) if isinstance(name, str) else ""))


#: ``(config, policy, scores) -> Selector`` (``lmms_rekv.retrieval.selector.Retriever``)
RETRIEVERS = Registry("retrieval", {name: f"lmms_rekv.retrieval.selector:{name}" for name in ("internal", "external", "hybrid")},
                      "lmms_rekv.retrieval.selector.Retriever")
#: ``(tokens, keep) -> TokenReducer`` (``lmms_rekv.storage.reduce.TokenReducer``)
REDUCERS = Registry("token_reduction", {"temporal": "lmms_rekv.storage.reduce:TemporalReducer",
                                        "salient": "lmms_rekv.storage.reduce:SalientReducer",
                                        "merge": "lmms_rekv.storage.reduce:MergeReducer"},
                    "lmms_rekv.storage.reduce.TokenReducer")
#: ``(layers, fields, config, storage_device, pin, capacity) -> Backend`` (``lmms_rekv.storage.backends.Backend``)
BACKENDS = Registry("offload", {"cpu": "lmms_rekv.storage.backends:memory_backend", "device": "lmms_rekv.storage.backends:memory_backend",
                                "disk": "lmms_rekv.storage.backends:disk_backend"}, "lmms_rekv.storage.backends.Backend")
