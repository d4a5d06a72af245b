"""ReKV patch for LLaVA-OneVision (Qwen2 text tower).

Inside ``with patch.routed(handler):`` every text-tower attention call goes to
``handler.attend(layer, q, k, v, q_pre, k_pre, scaling)``:

* ``q``/``k`` are the post-RoPE tensors the model computed, shapes ``(B, Hq, T, D)`` and
  ``(B, Hkv, T, D)``; ``v`` is ``(B, Hkv, T, D)``;
* ``q_pre``/``k_pre`` are the same projections before RoPE, captured exactly (any dtype) by
  forward hooks on ``q_proj``/``k_proj``, shapes ``(B, T, Hq, D)`` / ``(B, T, Hkv, D)``;
* the handler returns the attention output ``(B, Hq, T, D)``.

The attention function is registered under a name unique to the patch and selected for the
text tower only (``language_model.set_attn_implementation``); on exit the hooks are
removed, the previous implementation restored and the name unregistered. Entering is
re-entrant (a stack of handlers); the model is touched only by the outermost enter/exit.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator, List, Optional, Protocol

import torch

logger = logging.getLogger(__name__)


class AttentionHandler(Protocol):
    def attend(
        self,
        layer: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        q_pre: torch.Tensor,
        k_pre: torch.Tensor,
        scaling: float,
    ) -> torch.Tensor: ...


class LlavaOnevisionPatch:
    """Reversible routing of a LLaVA-OneVision text tower's attention to a ReKV handler."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.language_model = model.model.language_model
        self.layers = list(self.language_model.layers)
        self.name = f"rekv_{id(self):x}"
        self._handlers: List[AttentionHandler] = []
        self._hooks: list = []
        self._previous_impl: Optional[str] = None
        n = len(self.layers)
        self._q_pre: List[Optional[torch.Tensor]] = [None] * n
        self._k_pre: List[Optional[torch.Tensor]] = [None] * n

    @property
    def active(self) -> bool:
        return bool(self._handlers)

    @property
    def hook_count(self) -> int:
        return len(self._hooks)

    @contextlib.contextmanager
    def routed(self, handler: AttentionHandler) -> Iterator["LlavaOnevisionPatch"]:
        """Route attention to ``handler`` for the duration of the block."""
        if not self._handlers:
            self._install()
        self._handlers.append(handler)
        try:
            yield self
        finally:
            self._handlers.pop()
            if not self._handlers:
                self._uninstall()

    # -- installation -------------------------------------------------------------------
    def _install(self) -> None:
        from transformers import AttentionInterface

        AttentionInterface.register(self.name, self._attention)
        try:
            for idx, layer in enumerate(self.layers):
                attn = layer.self_attn
                self._hooks.append(attn.q_proj.register_forward_hook(self._capture(self._q_pre, idx)))
                self._hooks.append(attn.k_proj.register_forward_hook(self._capture(self._k_pre, idx)))
            self._previous_impl = self.language_model.config._attn_implementation
            self.language_model.set_attn_implementation(self.name)
        except BaseException:
            self._uninstall()
            raise
        logger.debug("installed %s on %d layers", self.name, len(self.layers))

    def _uninstall(self) -> None:
        from transformers import AttentionInterface

        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        if self._previous_impl is not None:
            self.language_model.set_attn_implementation(self._previous_impl)
            self._previous_impl = None
        AttentionInterface._global_mapping.pop(self.name, None)
        self._q_pre[:] = [None] * len(self._q_pre)
        self._k_pre[:] = [None] * len(self._k_pre)

    @staticmethod
    def _capture(slots: list, idx: int):
        def hook(module, inputs, output):
            slots[idx] = output

        return hook

    # -- the registered attention function -----------------------------------------------
    def _attention(self, module, query, key, value, attention_mask, scaling=None, **kwargs):
        layer = module.layer_idx
        q_pre, k_pre = self._q_pre[layer], self._k_pre[layer]
        self._q_pre[layer] = self._k_pre[layer] = None
        if q_pre is None or k_pre is None or not self._handlers:
            raise RuntimeError("ReKV attention called outside a routed forward")
        batch, _, tokens, head_dim = query.shape
        q_pre = q_pre.view(batch, tokens, -1, head_dim)
        k_pre = k_pre.view(batch, tokens, -1, head_dim)
        scale = module.scaling if scaling is None else scaling
        out = self._handlers[-1].attend(layer, query, key, value, q_pre, k_pre, scale)
        return out.transpose(1, 2).contiguous(), None
