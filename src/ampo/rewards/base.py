"""The reward contracts: `RewardFn` (one score per response) and `PairwiseScorer` (one preference
matrix per prompt), the one call site `score_texts`, and the checks every scorer's output passes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np


class RewardFn(Protocol):
    """Scores a batch of (prompt, response) pairs: float64 array, one finite value per pair."""

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray: ...


def score_texts(reward_fn: RewardFn, prompts: list[str], responses: list[str],
                metas: Sequence[Mapping[str, Any] | None] | None = None) -> np.ndarray:
    """Call a reward, with each pair's prompt `meta` when the reward declares `needs_meta`."""
    if not getattr(reward_fn, "needs_meta", False):
        return reward_fn(prompts, responses)
    name = getattr(reward_fn, "name", type(reward_fn).__name__)
    missing = [i for i, m in enumerate(metas or [None] * len(prompts)) if m is None]
    if missing:
        raise ValueError(f"reward {name!r} needs each prompt's 'meta' from the prompt file; prompt "
                         f"{prompts[missing[0]][:60]!r} has none")
    return reward_fn(prompts, responses, metas=list(metas))


def validate_rewards(name: str, scores: Any, n: int) -> np.ndarray:
    """`scores` as a float64 vector of length `n`, or ValueError naming the reward and the index."""
    try:
        values = np.asarray(scores, dtype=np.float64)
    except OverflowError:
        raise ValueError(f"reward {name!r} returned a number too large for a float") from None
    except (TypeError, ValueError) as error:
        raise ValueError(f"reward {name!r} returned non-numeric scores: {error}") from None
    if values.ndim != 1 or len(values) != n:
        raise ValueError(f"reward {name!r} returned shape {values.shape} for {n} responses")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"reward {name!r} returned {values[bad[0]]} at index {bad[0]}")
    return values


def _check_pairs(name: str, prompts: Sequence[str], responses: Sequence[str]) -> None:
    """Refuse batches whose prompt and response lists differ in length."""
    if len(prompts) != len(responses):
        raise ValueError(f"reward {name!r}: {len(prompts)} prompts but {len(responses)} responses")


class PairwiseScorer(Protocol):
    """Scores each prompt's responses against each other: `matrices(prompts, pools)` returns, per
    prompt, `S [N, N]` with `S_ij = logit P(response i beats response j)` (`ampo.preferences`)."""

    pairwise: bool  # True: callers branch on `is_pairwise`, never on the class

    def matrices(self, prompts: list[str], pools: list[list[str]]) -> list[np.ndarray]: ...


def is_pairwise(scorer: Any) -> bool:
    """Whether a scorer returns preference matrices (`PairwiseScorer`) rather than rewards."""
    return bool(getattr(scorer, "pairwise", False))


def validate_matrix(name: str, S: Any, n: int) -> np.ndarray:
    """A judge's output as a valid `[n, n]` preference matrix (float64, finite, skew-symmetric:
    `(S - S^T)/2`, which averages both presentation orders), or ValueError naming the scorer."""
    from ..preferences import check_logits

    try:
        values = np.asarray(S, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as error:
        raise ValueError(f"pairwise scorer {name!r} returned a non-numeric matrix: {error}") from None
    if values.shape != (n, n):
        raise ValueError(f"pairwise scorer {name!r} returned shape {values.shape} for {n} responses "
                         f"(expected ({n}, {n}))")
    bad = np.argwhere(~np.isfinite(values))
    if bad.size:
        i, j = bad[0]
        raise ValueError(f"pairwise scorer {name!r} returned {values[i, j]} at [{i}, {j}]")
    return check_logits(values)
