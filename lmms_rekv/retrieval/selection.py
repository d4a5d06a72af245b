"""How many and which frames a question loads, from one score per stored frame.

* fixed: the ``topk`` best frames (every frame when ``topk`` is None or >= frames);
* ``adaptive="mass"``: the smallest set of frames whose share of
  ``softmax(zscore(scores) / temperature)`` reaches ``mass``, clamped to
  ``[min_frames, topk]`` -- peaked scores load few frames, flat scores the whole budget;
* ``recent``: the last ``recent`` frames are always loaded (inside the budget);
* ``group``: the frames before the recent ones are scored in groups of ``group``
  consecutive frames (mean score) and loaded group by group (ReKV's block-size ablation).

Scores of several retrievers can be fused first (``fuse``). The result is always sorted
(time order) and never holds more than ``topk`` frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class SelectionPolicy:
    topk: Optional[int] = 64
    adaptive: Optional[str] = None
    mass: float = 0.9
    temperature: float = 0.1
    min_frames: int = 1
    recent: int = 0
    group: int = 1

    def budget(self, frames: int) -> int:
        """Most frames a question may load out of ``frames`` stored."""
        return frames if self.topk is None else min(self.topk, frames)


def zscore(scores: torch.Tensor) -> torch.Tensor:
    """``(s - mean) / std``; zeros when every score is equal."""
    std = scores.std(unbiased=False)
    centred = scores - scores.mean()
    return centred / std if float(std) > 0 else torch.zeros_like(scores)


def mass_count(scores: torch.Tensor, mass: float, temperature: float) -> int:
    """Smallest n such that the n largest ``softmax(zscore(scores) / temperature)`` sum to >= mass."""
    probs = torch.softmax(zscore(scores.float()) / temperature, dim=0)
    cumulative = probs.sort(descending=True).values.cumsum(0)
    return int((cumulative < mass).sum()) + 1


def group_scores(scores: torch.Tensor, group: int) -> torch.Tensor:
    """Mean score of each run of ``group`` consecutive frames (the last may be shorter)."""
    if group == 1:
        return scores
    frames = scores.shape[0]
    owner = torch.arange(frames, device=scores.device) // group
    units = math.ceil(frames / group)
    sums = torch.zeros(units, dtype=scores.dtype, device=scores.device).index_add_(0, owner, scores)
    counts = torch.bincount(owner, minlength=units).to(scores.dtype)
    return sums / counts


def select(scores: torch.Tensor, policy: SelectionPolicy) -> torch.Tensor:
    """Frame indices to load for one layer, sorted; ``scores`` is ``(frames,)``."""
    frames = scores.shape[0]
    budget = policy.budget(frames)
    if budget >= frames:
        return torch.arange(frames, device=scores.device)
    recent = min(policy.recent, budget)
    head = frames - recent  # groups are formed over the frames before the recent ones
    units = group_scores(scores[:head].float(), policy.group)
    slots = min((budget - recent) // policy.group, units.shape[0])
    count = slots
    if policy.adaptive == "mass":
        low = min(slots, math.ceil(max(0, policy.min_frames - recent) / policy.group))
        count = max(low, min(slots, mass_count(units, policy.mass, policy.temperature)))
    chosen = torch.topk(units, count).indices if count else units.new_empty(0, dtype=torch.long)
    offsets = torch.arange(policy.group, device=scores.device)
    picked = (chosen[:, None] * policy.group + offsets[None, :]).reshape(-1)
    picked = torch.cat([picked[picked < head], torch.arange(head, frames, device=scores.device)])
    return torch.unique(picked)  # sorted


def fuse(internal: torch.Tensor, external: torch.Tensor, rule: str, alpha: float, rrf_k: float = 60.0) -> torch.Tensor:
    """Hybrid score: ``alpha`` weighs the external retriever, ``1 - alpha`` the internal one.

    ``"zscore"``: ``alpha * z(external) + (1 - alpha) * z(internal)``;
    ``"rrf"``: reciprocal-rank fusion ``alpha / (k + rank_ext) + (1 - alpha) / (k + rank_int)``."""
    internal, external = internal.float(), external.float()
    if rule == "zscore":
        return alpha * zscore(external) + (1 - alpha) * zscore(internal)
    if rule == "rrf":
        return alpha / (rrf_k + _ranks(external)) + (1 - alpha) / (rrf_k + _ranks(internal))
    raise ValueError(f"unknown fusion rule {rule!r}")


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    """1-based rank of each score (1 = best)."""
    order = scores.argsort(descending=True)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, scores.shape[0] + 1, dtype=scores.dtype, device=scores.device)
    return ranks
