"""A session written to and read from a folder: what the session exports for
``lmms_rekv.storage.persist`` and restores from it (a mixin of ``ReKVSession``)."""

from __future__ import annotations

import logging
from typing import Dict

import torch

from .feeding import settled

logger = logging.getLogger(__name__)

WINDOW_FIELDS = ("sink_k", "sink_v", "win_k", "win_v")


class Persistence:
    """``save``, and the state ``persist`` stores beside the blocks (``export_state`` /
    ``restore_state``): the storage layer never reaches into the session."""

    @settled
    def save(self, folder: str, **meta) -> None:
        """Persist the encoded stream to ``folder`` (atomic; see ``lmms_rekv.storage.persist``)."""
        from lmms_rekv.storage.persist import save_session

        save_session(self, folder, **meta)

    def export_state(self) -> Dict[str, torch.Tensor]:
        """CPU tensors of everything but the stored blocks: block summaries ``summaries``
        ``(layers, blocks, kv_heads, head_dim)``, per layer ``sink_k.L`` / ``sink_v.L`` /
        ``win_k.L`` / ``win_v.L`` ``(heads, tokens, head_dim)``, external ``embeddings``
        ``(blocks, E)``, the incomplete last chunk's preprocessed ``pending`` pixels and, with
        token reduction, the reducer's memory (``reducer.L``)."""
        st = self.state
        tensors = {"summaries": st.store.all_summaries().contiguous().cpu()}
        for name in WINDOW_FIELDS:
            for layer, tensor in enumerate(getattr(st, name)):
                tensors[f"{name}.{layer}"] = tensor.contiguous().cpu()
        if self.embeddings is not None:
            tensors["embeddings"] = self.embeddings.contiguous().cpu()
        if self._pending:
            tensors["pending"] = torch.cat(self._pending).contiguous().cpu()
        if st.store.reducer is not None:  # token reduction's memory of the last block (temporal)
            tensors.update(st.store.reducer.state())
        return tensors

    def restore_state(self, tensors: Dict[str, torch.Tensor], stream_tokens: int) -> None:
        """Take back what ``export_state`` gave (the blocks are already in the store) and the
        stream's token count: the session goes on exactly as the saved one would."""
        st = self.state
        st.store.load_summaries(tensors["summaries"])
        for name in WINDOW_FIELDS:
            getattr(st, name).extend(tensors[f"{name}.{layer}"] for layer in range(st.store.layers))
        st.stream_tokens = stream_tokens
        if "embeddings" in tensors:
            self._embed_rows(tensors["embeddings"])
        if "pending" in tensors:
            self._pending, self._pending_frames = [tensors["pending"]], tensors["pending"].shape[0]
        if st.store.reducer is not None:
            st.store.reducer.load_state(tensors)
        self._prefix_done = True
