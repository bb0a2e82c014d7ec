"""Curry-DPO stages (Pattnaik et al., arXiv 2403.07230; docs/pipeline.md), pure.

A prompt's selected group (positive in slot 0, then its negatives) gives one pair (slot 0, slot j)
per negative. Its pairs are ranked easy -> hard by the reward gap `r_0 - r_j` (largest first). A
round with `train.curriculum: pairs` trains in stages: stage t (1-based) trains every prompt's t-th
easiest pair, for the prompts that have at least t negatives, with the reference moved forward to
the previous stage's policy (the pipeline does that part).
"""

from __future__ import annotations

from collections.abc import Sequence


def pair_order(rewards: Sequence[float]) -> list[int]:
    """The negative slots of one group (`rewards[0]` = the positive's), easiest pair first:
    descending gap `r_0 - r_j`, ties to the lower slot.

    Toy rewards [2, 1, -0.5, -1.5]: gaps 1, 2.5, 3.5, so the order is [3, 2, 1].
    """
    return sorted(range(1, len(rewards)), key=lambda j: (rewards[j] - rewards[0], j))


def stage_count(groups: Sequence[Sequence[float]]) -> int:
    """How many stages a round's groups need: the most negatives any group has (a group is any
    sequence with one entry per slot: its rewards or its selected indices)."""
    return max((len(r) - 1 for r in groups), default=0)


def stage_pairs(groups: Sequence[Sequence[float]], t: int) -> list[tuple[int, int]]:
    """Stage t (1-based): `(group index, negative slot)` of every group's t-th easiest pair, in
    group order; groups with fewer than t negatives sit the stage out."""
    if t < 1:
        raise ValueError(f"stages count from 1, got {t}")
    return [(i, pair_order(r)[t - 1]) for i, r in enumerate(groups) if len(r) - 1 >= t]
