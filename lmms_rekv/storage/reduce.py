"""Token reduction before offload: a block's ``T`` tokens cut to ``K`` before they are stored,
training-free (``ReKVConfig.token_reduction`` / ``token_keep``).

Every reducer maps a write of ``n`` blocks -- pre-RoPE keys and values ``(n, T, H, D)`` -- to
``(n, K, H, D)``, the kept (or merged) tokens in their original order, and says which place of
the block each stored token stands for (``slots`` ``(n, K)``, increasing): a retrieved block is
a shorter run of tokens, each positioned at a question where its slot stood (1-D families
number them consecutively; M-RoPE families give each its own time, height and width):

* ``temporal`` keeps the ``K`` tokens whose keys changed most since the token at the same place
  of the previous block (the previous write's last block is remembered per layer; the
  stream's first block is compared with zeros, i.e. ranked by its keys' norm): what stays the
  same frame after frame is dropped (TimeChat-Online's observation).
* ``salient`` keeps the ``K`` tokens with the largest value norm (summed over heads).
* ``merge`` merges the most similar tokens (cosine of the keys), pairwise by bipartite
  matching of alternate tokens, until ``K`` remain; a merged token's key and value are the
  means of its members (ToMe's matching, without its size bias), and it stands at the place of
  its earliest member (raster order: the top-left-most of the merged tokens).

Layers choose their tokens independently (from their own keys/values). The remembered block
of ``temporal`` is state: ``fork()`` copies it for a provisional encoding, ``adopt()`` takes a
fork's, and ``state()`` / ``load_state()`` carry it through a saved session.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch


class TokenReducer:
    """Cuts each stored block from ``tokens`` to ``keep`` tokens. A reducer implements ``cut``;
    one that remembers something across writes (``temporal``) overrides ``fork`` / ``adopt`` /
    ``state`` / ``load_state`` too. Register one with ``lmms_rekv.registry.REDUCERS``."""

    def __init__(self, tokens: int, keep: int) -> None:
        if not 1 <= keep <= tokens:
            raise ValueError(f"a block of {tokens} tokens cannot keep {keep}")
        self.tokens, self.keep = tokens, keep

    def reduce(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(n, T, H, D)`` keys and values of ``n`` consecutive blocks -> ``(n, K, H, D)`` each and
        the ``(n, K)`` slots the stored tokens stand for (every slot when nothing is cut)."""
        if self.keep == self.tokens:
            return keys, values, torch.arange(self.tokens, device=keys.device).expand(keys.shape[0], -1)
        out = self.cut(layer, keys, values)
        if len(out) != 3:
            raise TypeError(f"{type(self).__name__}.cut must return (keys, values, slots): the (n, K) block slot each "
                            "kept token stands for (its position on M-RoPE families)")
        return out

    def cut(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The reduction itself (``keep < tokens``): ``(n, K, H, D)`` keys and values and the
        ``(n, K)`` increasing slots (``0..T-1``) the stored tokens stand for."""
        raise NotImplementedError

    # -- memory across writes (none by default) ---------------------------------------------
    def fork(self) -> "TokenReducer":
        """A reducer for a provisional encoding that leaves this one's memory untouched."""
        return self

    def adopt(self, other: "TokenReducer") -> None:
        """Take ``other``'s memory (its blocks were appended after this reducer's)."""

    def state(self) -> Dict[str, torch.Tensor]:
        """The memory as tensors, for ``save`` (names start with ``reducer.``)."""
        return {}

    def load_state(self, tensors: Dict[str, torch.Tensor]) -> None:
        """Take back what ``state`` gave."""


class SalientReducer(TokenReducer):
    """Keeps the tokens with the largest value norm (summed over heads)."""

    def cut(self, layer, keys, values):
        return _keep_top(keys, values, values.float().norm(dim=-1).sum(dim=-1), self.keep)


class MergeReducer(TokenReducer):
    """Merges the most similar tokens (``merge_tokens``)."""

    def cut(self, layer, keys, values):
        return merge_tokens(keys, values, self.keep)


class TemporalReducer(TokenReducer):
    """Keeps the tokens whose keys changed most since the same place of the previous block (the
    previous write's last block remembered per layer; the stream's first block compared with
    zeros)."""

    def __init__(self, tokens: int, keep: int) -> None:
        super().__init__(tokens, keep)
        self._previous: Dict[int, torch.Tensor] = {}  # layer -> the last block's keys (T, H, D)

    def cut(self, layer, keys, values):
        before = self._previous.get(layer)
        before = torch.zeros_like(keys[:1]) if before is None else before.to(keys)[None]
        previous = torch.cat([before, keys[:-1]])
        scores = (keys.float() - previous.float()).norm(dim=-1).sum(dim=-1)
        self._previous[layer] = keys[-1].detach().clone()
        return _keep_top(keys, values, scores, self.keep)

    def fork(self) -> "TemporalReducer":
        other = TemporalReducer(self.tokens, self.keep)
        other.adopt(self)
        return other

    def adopt(self, other: "TokenReducer") -> None:
        self._previous = dict(other.memory()) if isinstance(other, TemporalReducer) else {}

    def memory(self) -> Dict[int, torch.Tensor]:
        """layer -> the last block's keys ``(T, H, D)``."""
        return self._previous

    def state(self) -> Dict[str, torch.Tensor]:
        """The memory as tensors (``reducer.L``: layer L's last block keys), for ``save``."""
        return {f"reducer.{layer}": keys.contiguous().cpu() for layer, keys in self._previous.items()}

    def load_state(self, tensors: Dict[str, torch.Tensor]) -> None:
        self._previous = {int(name.split(".")[1]): t for name, t in tensors.items() if name.startswith("reducer.")}


def _keep_top(keys: torch.Tensor, values: torch.Tensor, scores: torch.Tensor, keep: int):
    """The ``keep`` highest-scoring tokens of each block, in their original order, and their slots."""
    index = scores.topk(keep, dim=1).indices.sort(dim=1).values  # (n, K)
    gather = index[:, :, None, None].expand(-1, -1, *keys.shape[2:])
    return keys.gather(1, gather), values.gather(1, gather), index


def merge_tokens(keys: torch.Tensor, values: torch.Tensor, keep: int):
    """``(n, T, H, D)`` -> ``(n, K, H, D)`` and ``(n, K)`` slots: bipartite matching of the even
    tokens to the odd ones by key cosine, merging the most similar pairs (means), repeated until
    ``keep`` remain; a merged token's slot is its earliest member's."""
    sizes = torch.ones(keys.shape[:2], dtype=torch.float32, device=keys.device)  # (n, T) tokens merged into each
    first = torch.arange(keys.shape[1], device=keys.device).expand(keys.shape[0], -1)  # earliest member: the order
    k, v = keys.float(), values.float()  # never written in place: each step builds new tensors
    while k.shape[1] > keep:
        k, v, sizes, first = _merge_step(k, v, sizes, first, min(k.shape[1] - keep, k.shape[1] // 2))
    slots, order = first.sort(dim=1)
    gather = order[:, :, None, None].expand(-1, -1, *keys.shape[2:])
    return k.gather(1, gather).to(keys.dtype), v.gather(1, gather).to(values.dtype), slots


def _merge_step(k, v, sizes, first, r: int):
    """Merge ``r`` tokens of set A (even places) into their most similar token of set B (odd)."""
    n, t = k.shape[:2]
    a, b = torch.arange(0, t, 2, device=k.device), torch.arange(1, t, 2, device=k.device)
    flat = torch.nn.functional.normalize(k.flatten(2), dim=-1)
    similarity = flat[:, a] @ flat[:, b].transpose(1, 2)  # (n, |A|, |B|)
    best, partner = similarity.max(dim=-1)  # each A token's closest B token
    ranked = best.argsort(dim=1, descending=True)
    merged, kept = ranked[:, :r], ranked[:, r:]  # the r A tokens merged away, the rest
    dst = partner.gather(1, merged)  # (n, r): their B tokens

    def take(x, idx):
        return x.gather(1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:]))

    src_a = a[merged]  # positions among all tokens
    weight = take(sizes, src_a)  # (n, r)
    b_k, b_v, b_size = k[:, b] * sizes[:, b, None, None], v[:, b] * sizes[:, b, None, None], sizes[:, b].clone()
    b_k = b_k.scatter_add(1, dst[:, :, None, None].expand(-1, -1, *k.shape[2:]), take(k, src_a) * weight[:, :, None, None])
    b_v = b_v.scatter_add(1, dst[:, :, None, None].expand(-1, -1, *v.shape[2:]), take(v, src_a) * weight[:, :, None, None])
    b_size = b_size.scatter_add(1, dst, weight)
    b_first = first[:, b].scatter_reduce(1, dst, take(first, src_a), reduce="amin")
    a_kept = a[kept]
    k = torch.cat([take(k, a_kept), b_k / b_size[:, :, None, None]], dim=1)
    v = torch.cat([take(v, a_kept), b_v / b_size[:, :, None, None]], dim=1)
    return k, v, torch.cat([take(sizes, a_kept), b_size], dim=1), torch.cat([take(first, a_kept), b_first], dim=1)


def stored_layout(tokens: int, span: Optional[slice], reducer: Optional[TokenReducer]) -> Tuple[Tuple[int, int], int, slice]:
    """For blocks written with ``tokens`` slots whose ``span`` (None: all) holds the tokens a
    ``reducer`` cuts: ``((a, b) the span, slots stored per block, the span once stored)``."""
    run = range(tokens)[span or slice(None)]
    if run.step != 1:
        raise ValueError(f"summary_tokens must be a contiguous run of the block's slots, got {span}")
    cut = 0
    if reducer is not None:
        if reducer.tokens != len(run):
            raise ValueError(f"a reducer for runs of {reducer.tokens} tokens cannot cut runs of {len(run)}")
        cut = reducer.tokens - reducer.keep
    return (run.start, run.stop), tokens - cut, slice(run.start, run.stop - cut)


def reduce_span(reducer: TokenReducer, layer: int, keys: torch.Tensor, values: torch.Tensor, span: Tuple[int, int]):
    """``reducer`` on slots ``span`` (``(a, b)``) of ``(n, T, H, D)`` blocks, the slots around it
    kept: ``(n, S, H, D)`` keys and values and the ``(n, S)`` slots of ``0..T-1`` they stand for."""
    (a, b), n, total = span, keys.shape[0], keys.shape[1]
    kept_k, kept_v, inside = reducer.reduce(layer, keys[:, a:b], values[:, a:b])
    if (a, b) == (0, total):
        return kept_k, kept_v, inside
    around = torch.arange(total, device=inside.device)
    slots = torch.cat([around[:a].expand(n, -1), inside + a, around[b:].expand(n, -1)], dim=1)
    return torch.cat([keys[:, :a], kept_k, keys[:, b:]], 1), torch.cat([values[:, :a], kept_v, values[:, b:]], 1), slots


def make_reducer(kind: Optional[str], tokens: int, keep: int) -> Optional[TokenReducer]:
    """The reducer registered as ``kind`` for a store whose blocks have ``tokens`` tokens, or None
    (every token kept)."""
    from lmms_rekv.registry import REDUCERS

    return None if kind is None else REDUCERS.get(kind)(tokens, keep)
