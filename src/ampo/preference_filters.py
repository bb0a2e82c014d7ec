"""The preference filters around active selection (docs/preferences.md): `require_beats` keeps only
the candidates the positive beats under the prompt's preference matrix before a strategy picks
negatives, and `min_margin` drops a prompt whose group is too close in reward. Pure NumPy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .selection import select_batch


@dataclass(frozen=True)
class GroupSelection:
    """Result of ``select_groups``: per prompt its group (empty = dropped this round), which
    pools were short, and counts for the run manifest."""

    indices: list[np.ndarray]
    short: np.ndarray
    counts: dict[str, int]


def select_groups(
    strategy: str,
    rewards: Sequence[np.ndarray],
    embeddings: Sequence[np.ndarray] | None,
    k: int,
    seed: int = 0,
    prefs: Sequence[np.ndarray | None] | None = None,
    require_beats: float | None = None,
    min_margin: float | None = None,
    progress: bool = False,
) -> GroupSelection:
    """``select_batch`` with the pipeline's preference filters (docs/preferences.md).

    ``require_beats``: before the strategy picks negatives, each pool keeps only the positive
    (argmax reward, ties to the lowest index) and the responses ``j`` it beats with
    ``sigmoid(S[pos, j]) >= require_beats`` under the prompt's preference matrix ``prefs[i]``
    (``S_ij = r_i - r_j`` where a prompt has none); a smaller pool gives a short group.
    ``min_margin``: a prompt whose ``rewards[pos] - min(rewards[group])`` is below it is dropped
    (empty group). ``counts`` says how many prompts each filter touched.
    """
    from .preferences import beaten_by, scalar_to_logits

    pools = [np.asarray(r, dtype=np.float64) for r in rewards]
    candidates = [np.arange(r.size) for r in pools]
    counts: dict[str, int] = {}
    if require_beats is not None:
        removed = pruned = 0
        for i, r in enumerate(pools):
            if r.size < 2:
                continue
            S = prefs[i] if prefs is not None and prefs[i] is not None else scalar_to_logits(r)
            pos = int(np.argmax(r))
            keep = beaten_by(S, pos, require_beats)
            keep[pos] = True
            candidates[i] = np.flatnonzero(keep)
            removed += r.size - candidates[i].size
            pruned += candidates[i].size < r.size
        counts.update(require_beats_prompts=pruned, require_beats_removed=removed)
    sel = select_batch(strategy, [r[c] for r, c in zip(pools, candidates)],
                       None if embeddings is None else [np.asarray(e)[c] for e, c in zip(embeddings, candidates)],
                       k, seed=seed, progress=progress)
    indices = [c[idx] for c, idx in zip(candidates, sel.indices)]
    if min_margin is not None:
        dropped = 0
        for i, (r, idx) in enumerate(zip(pools, indices)):
            if r[idx[0]] - r[idx].min() < min_margin:
                indices[i] = idx[:0]
                dropped += 1
        counts["min_margin_dropped"] = dropped
    return GroupSelection(indices=indices, short=sel.short, counts=counts)
