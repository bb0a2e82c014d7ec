"""Active selection: the positive plus ``k`` informative negatives from one prompt's pool.

Pure NumPy (HiGHS through ``highspy`` for the exact MIP). Every function is deterministic for a
given seed. The formulas follow AMPO (arXiv 2502.18293) as written up in docs/selection.md:

* the positive is the highest-reward response (ties to the lowest index);
* the negatives come from the candidate pool ``P`` = every other response;
* opt-select minimises ``cost(S) = sum_{i in P} w_i * min_{j in S} ||e_i - e_j||_2`` with
  ``w_i = exp(mean_P(r) - r_i)``, so low-reward responses must be close to a selected negative.

``select`` handles one prompt, ``select_batch`` many (vectorised across prompts of equal pool
size for ``coreset`` and ``optselect``). Negatives are always returned in ascending reward, ties
by index, so the layout of a selection does not depend on how a strategy found its set. Each
strategy is one entry of the table ``SELECTORS``; the clustering maths behind the embedding
strategies is in ``ampo.clustering``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .clustering import (by_reward, coreset_block, one_blas_thread, optselect_block, relative_weights, solve_kmedian,
                         sq_distances)

# Candidate pools larger than this are refused by ``exact`` unless ``max_pool=None`` is passed.
EXACT_MAX_POOL = 64

_BLOCK_ROWS = 4096  # responses per vectorised block in select_batch (measured sweet spot)


# --------------------------------------------------------------------------------------------
# Validation and shared helpers


def _check_k(k: int) -> int:
    """Return ``k`` as an int after checking it is a non-negative integer."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer, got {k!r}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return int(k)


def _check_seed(seed: int) -> int:
    """Return ``seed`` as an int after checking it is a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_strategy(strategy: str, k: int) -> Selector:
    """The strategy's table entry; refuses unknown strategies and one-negative ones with ``k != 1``."""
    if strategy not in SELECTORS:
        raise ValueError(f"unknown selection strategy {strategy!r}; known: {', '.join(SELECTORS)}")
    spec = SELECTORS[strategy]
    if spec.one_negative and k != 1:
        raise ValueError(f"strategy {strategy!r} selects exactly one negative; got k={k}")
    return spec


def _check_pool(
    rewards, embeddings, needs_embeddings: bool, where: str = ""
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate one pool and return (float64 rewards, embeddings or None).

    Raises ValueError naming the problem (prefixed by ``where``, e.g. "prompt 3: ").
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"{where}rewards must be 1-D, got shape {r.shape}")
    if r.size == 0:
        raise ValueError(f"{where}empty pool: no responses to select from")
    if not np.isfinite(r).all():
        bad = int(np.flatnonzero(~np.isfinite(r))[0])
        raise ValueError(f"{where}rewards must be finite; reward {bad} is {r[bad]}")
    if embeddings is None:
        if needs_embeddings:
            raise ValueError(f"{where}this strategy needs embeddings, got None")
        return r, None
    e = np.asarray(embeddings)
    if e.ndim != 2:
        raise ValueError(f"{where}embeddings must be 2-D (responses x dims), got shape {e.shape}")
    if e.shape[0] != r.size:
        raise ValueError(
            f"{where}embeddings have {e.shape[0]} rows but there are {r.size} rewards"
        )
    if e.dtype.kind not in "fiu":
        raise ValueError(f"{where}embeddings must be numeric, got dtype {e.dtype}")
    if needs_embeddings and not np.isfinite(e).all():
        raise ValueError(f"{where}embeddings contain NaN or inf")
    return r, e


def _check_selector_input(rewards, embeddings, k: int, needs_embeddings: bool):
    """Validate a direct call to a ``SELECTORS`` function (``1 <= k < len(rewards)``)."""
    r, e = _check_pool(rewards, embeddings, needs_embeddings)
    k = _check_k(k)
    if not 1 <= k < r.size:
        raise ValueError(
            f"selectors need 1 <= k < pool size; got k={k} for {r.size} candidates "
            "(select() handles k=0 and short pools)"
        )
    return r, e, k


# --------------------------------------------------------------------------------------------
# The strategies (one pool each; ``select``/``select_batch`` validate and handle short pools)


def bottomk(rewards, embeddings, k: int, seed: int = 0) -> np.ndarray:
    """The ``k`` lowest-reward candidates (ties by index): AMPO's BottomK baseline.

    Cheap and needs no embeddings, but the negatives often sit in one region of response space.
    """
    r, _, k = _check_selector_input(rewards, embeddings, k, needs_embeddings=False)
    return by_reward(r, np.arange(r.size))[:k]


def coreset(rewards, embeddings, k: int, seed: int = 0) -> np.ndarray:
    """Cluster the candidates' embeddings into ``k`` clusters, take each cluster's lowest reward.

    AMPO-Coreset: every semantic mode contributes one negative. Clustering is k-means (Lloyd)
    seeded by k-means++ with 4 seeded restarts (``ampo.clustering``), keeping the lowest inertia:
    k-means is what the worked example of docs/selection.md assumes, and restarts make the result stable
    across seeds on well-separated data. With fewer than ``k`` distinct embeddings, each distinct
    point is a cluster and the remaining slots take the lowest-reward unchosen candidates.
    """
    r, e, k = _check_selector_input(rewards, embeddings, k, needs_embeddings=True)
    return _vectorised(coreset_block, [(r, e)], k, [_check_seed(seed)])[0]


def optselect(rewards, embeddings, k: int, seed: int = 0) -> np.ndarray:
    """Minimise the weighted k-medoids cost ``sum_i w_i min_{j in S} ||e_i - e_j||`` (local search)

    AMPO-OptSelect: low-reward candidates (large ``w_i``) must lie near a selected negative, so
    the set covers the failure modes weighted by how bad they are. Single-swap best-improvement
    local search from bottom-k and from a greedy build; the better result is kept. Deterministic
    (the seed is unused). Local search is a 5-approximation in theory and usually optimal on
    small pools (see docs/selection.md).
    """
    r, e, k = _check_selector_input(rewards, embeddings, k, needs_embeddings=True)
    return _vectorised(optselect_block, [(r, e)], k, [0])[0]


def exact(
    rewards, embeddings, k: int, seed: int = 0, *, max_pool: int | None = EXACT_MAX_POOL
) -> np.ndarray:
    """Solve the opt-select objective to optimality as a k-median MIP with HiGHS.

    ``min sum_ij w_i A_ij z_ij`` s.t. ``sum_j z_ij = 1``, ``z_ij <= x_j``, ``sum_j x_j = k``,
    ``x`` binary (``z`` may be continuous: an optimal ``z`` is integral once ``x`` is fixed).
    A reference for judging ``optselect``; the MIP grows as ``n^2``, so candidate pools larger
    than ``max_pool`` are refused (pass ``max_pool=None`` to force).
    """
    r, e, k = _check_selector_input(rewards, embeddings, k, needs_embeddings=True)
    n = r.size
    if max_pool is not None and n > max_pool:
        raise ValueError(
            f"exact: the candidate pool has {n} responses; the MIP is limited to {max_pool} "
            "(call SELECTORS['exact'].fn(..., max_pool=None) to force)"
        )
    with one_blas_thread():
        dist = np.sqrt(sq_distances([e])[0])
    return by_reward(r, solve_kmedian(dist, relative_weights(r), k))


def random(rewards, embeddings, k: int, seed: int = 0) -> np.ndarray:
    """``k`` distinct candidates drawn uniformly at random (seeded): the best-vs-random baseline."""
    r, _, k = _check_selector_input(rewards, embeddings, k, needs_embeddings=False)
    picks = np.random.default_rng(_check_seed(seed)).choice(r.size, size=k, replace=False)
    return by_reward(r, picks)


def best_worst(rewards, embeddings, k: int = 1, seed: int = 0) -> np.ndarray:
    """The single lowest-reward candidate (ties by index): the SimPO / RLHFlow best-vs-worst pair.

    ``k`` must be 1; any other value raises ValueError so a config cannot silently ask for a
    group it will not get.
    """
    r, _, k = _check_selector_input(rewards, embeddings, k, needs_embeddings=False)
    if k != 1:
        raise ValueError(f"strategy 'best_worst' selects exactly one negative; got k={k}")
    return by_reward(r, np.arange(r.size))[:1]


def sweet_spot_target(rewards) -> float:
    """``mean - 2 * sd`` of a whole pool's rewards (population sd, the positive included): where
    "Finding the Sweet Spot" (arXiv 2502.16825) found the most useful rejected response."""
    r = np.asarray(rewards, dtype=np.float64)
    return float(r.mean() - 2.0 * r.std())


def sweet_spot(rewards, embeddings, k: int = 1, seed: int = 0, *, target: float | None = None) -> np.ndarray:
    """The single candidate whose reward is nearest to ``target`` (ties to the lower position).

    ``target`` is ``sweet_spot_target`` of the *whole* pool, positive included; ``select`` and
    ``select_batch`` compute it before the positive is removed and pass it in. Without it, the
    rewards given are taken as the whole pool. ``k`` must be 1, as for ``best_worst``.
    """
    r, _, k = _check_selector_input(rewards, embeddings, k, needs_embeddings=False)
    if k != 1:
        raise ValueError(f"strategy 'sweet_spot' selects exactly one negative; got k={k}")
    t = sweet_spot_target(r) if target is None else float(target)
    return np.array([int(np.argmin(np.abs(r - t)))], dtype=np.int64)  # argmin: first of equal distances


def all_responses(rewards, embeddings, k: int = 0, seed: int = 0) -> np.ndarray:
    """Every candidate, ascending reward (``k`` is ignored): the "all responses" baseline."""
    r, _ = _check_pool(rewards, embeddings, needs_embeddings=False)
    return by_reward(r, np.arange(r.size))


@dataclass(frozen=True)
class Selector:
    """What a strategy computes and what it needs, so callers never branch on strategy names.

    ``fn(rewards, embeddings, k, seed=0) -> positions`` works on the *candidate pool* (the
    responses other than the positive) and returns ``k`` distinct positions into it, in ascending
    reward (ties by position). Direct calls need ``1 <= k < len(rewards)``; ``select`` handles
    ``k = 0`` and short pools.
    """

    fn: Callable[..., np.ndarray]
    needs_embeddings: bool = False  # reads the embeddings; the others accept ``embeddings=None``
    one_negative: bool = False  # picks exactly one negative (a pair): ``k`` must be 1
    every_candidate: bool = False  # ignores ``k``: the whole candidate pool, never "short"
    # ``target=pool_target(rewards)`` of the whole pool (positive included) is passed to ``fn``
    pool_target: Callable[[np.ndarray], float] | None = None
    # ``block(rewards [B, n], squared distances [B, n, n], k, seeds) -> positions per pool``:
    # ``fn`` vectorised over equal-size candidate pools (used by ``select_batch``)
    block: Callable[..., list] | None = None


SELECTORS: dict[str, Selector] = {
    "bottomk": Selector(bottomk),
    "coreset": Selector(coreset, needs_embeddings=True, block=coreset_block),
    "optselect": Selector(optselect, needs_embeddings=True, block=optselect_block),
    "exact": Selector(exact, needs_embeddings=True),
    "random": Selector(random),
    "best_worst": Selector(best_worst, one_negative=True),
    "sweet_spot": Selector(sweet_spot, one_negative=True, pool_target=sweet_spot_target),
    "all": Selector(all_responses, every_candidate=True),
}
"""Strategy name -> ``Selector``: the one place a new strategy is added (docs/selection.md)."""


# --------------------------------------------------------------------------------------------
# Public entry points


@dataclass(frozen=True)
class BatchSelection:
    """Result of ``select_batch``: one index array per prompt, and which pools were short.

    ``short[i]`` is True when prompt ``i`` had at most ``k + 1`` responses, so all of them were
    returned (always False for ``all``, which ignores ``k``).
    """

    indices: list[np.ndarray]
    short: np.ndarray


def prompt_seed(seed: int, index: int) -> int:
    """The seed ``select_batch`` uses for prompt ``index``: mixed from ``(seed, index)``.

    Derived with ``numpy.random.SeedSequence``, so each prompt gets an independent stream and its
    result depends only on its own pool, ``seed`` and its position, never on the other prompts.
    """
    seq = np.random.SeedSequence([_check_seed(seed), _check_seed(index)])
    return int(seq.generate_state(1, np.uint64)[0])


def select(strategy: str, rewards, embeddings, k: int, seed: int = 0) -> np.ndarray:
    """Select the positive and ``k`` negatives from one prompt's pool.

    Returns int64 indices into the pool: the positive (highest reward, ties to the lowest index)
    first, then the negatives in ascending reward (ties by index). If the pool has at most
    ``k + 1`` responses, all of it is returned in that order; ``k = 0`` returns the positive
    alone. ``all`` ignores ``k``; ``best_worst`` and ``sweet_spot`` need ``k = 1``. ``embeddings``
    may be None for strategies that do not use them (``SELECTORS[strategy].needs_embeddings``).
    """
    k = _check_k(k)
    spec = _check_strategy(strategy, k)
    seed = _check_seed(seed)
    pool = _check_pool(rewards, embeddings, spec.needs_embeddings)
    return _select_many(strategy, [pool], k, [seed], progress=False)[0]


def select_batch(
    strategy: str,
    rewards: Sequence[np.ndarray],
    embeddings: Sequence[np.ndarray] | None,
    k: int,
    seed: int = 0,
    progress: bool = False,
) -> BatchSelection:
    """Run ``select`` over many prompts (pools may differ in size).

    Prompt ``i`` gets exactly ``select(strategy, rewards[i], embeddings[i], k,
    seed=prompt_seed(seed, i))``. ``coreset`` and ``optselect`` are vectorised across prompts
    with the same pool size. ``embeddings`` may be None for strategies that do not use them.
    ``progress=True`` shows a tqdm bar.
    """
    k = _check_k(k)
    spec = _check_strategy(strategy, k)
    seed = _check_seed(seed)
    if embeddings is not None and len(embeddings) != len(rewards):
        raise ValueError(
            f"got {len(rewards)} reward arrays but {len(embeddings)} embedding arrays"
        )
    pools = [
        _check_pool(r, None if embeddings is None else embeddings[i], spec.needs_embeddings, f"prompt {i}: ")
        for i, r in enumerate(rewards)
    ]
    seeds = [prompt_seed(seed, i) for i in range(len(pools))]
    indices = _select_many(strategy, pools, k, seeds, progress)
    short = np.array([not spec.every_candidate and r.size <= k + 1 for r, _ in pools], dtype=bool)
    return BatchSelection(indices=indices, short=short)


def coverage_cost(rewards, embeddings, indices) -> float:
    """The opt-select objective of a selection (indices as returned by ``select``).

    ``P`` = every response except ``indices[0]`` (the positive), ``S = indices[1:]``;
    returns ``sum_{i in P} exp(mean_P(r) - r_i) * min_{j in S} ||e_i - e_j||_2`` with exact
    (not Gram-matrix) distances. 0.0 if ``P`` is empty; inf if ``S`` is empty but ``P`` is not.
    """
    r, e = _check_pool(rewards, embeddings, needs_embeddings=True)
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu":
        raise ValueError(f"indices must be a non-empty 1-D integer array, got {indices!r}")
    if idx.min() < 0 or idx.max() >= r.size:
        raise ValueError(f"indices must lie in [0, {r.size}), got {idx.tolist()}")
    if np.unique(idx).size != idx.size:
        raise ValueError(f"indices must be distinct, got {idx.tolist()}")
    pool = np.delete(np.arange(r.size), idx[0])
    if pool.size == 0:
        return 0.0
    if idx.size == 1:
        return float("inf")
    e = np.asarray(e, dtype=np.float64)
    w = np.exp(r[pool].mean() - r[pool])
    dist = np.linalg.norm(e[pool][:, None, :] - e[idx[1:]][None, :, :], axis=-1)
    return float((w * dist.min(axis=1)).sum())


def _select_many(strategy: str, pools: list, k: int, seeds: list[int], progress: bool) -> list:
    """Selection for validated pools: trivial cases directly, the rest per strategy.

    Strategies with a ``block`` run vectorised over blocks of equal-size candidate pools; the
    others call their ``fn`` per prompt.
    """
    from tqdm.auto import tqdm

    spec = SELECTORS[strategy]
    out: list = [None] * len(pools)
    todo: dict[int, list[int]] = defaultdict(list)  # candidate-pool size -> prompt numbers
    positives, rests = [], []  # per prompt: the positive, the candidates (full-pool indices)
    bar = tqdm(total=len(pools), disable=not progress, desc=f"select[{strategy}]", unit="prompt")
    for i, (r, _) in enumerate(pools):
        pos = int(np.argmax(r))
        rest = np.delete(np.arange(r.size, dtype=np.int64), pos)
        positives.append(pos)
        rests.append(rest)
        if spec.every_candidate or r.size <= k + 1 or k == 0:
            chosen = rest if k > 0 or spec.every_candidate else rest[:0]
            out[i] = np.concatenate([[pos], by_reward(r, chosen)])
            bar.update(1)
        else:
            todo[rest.size].append(i)
    for n, members in todo.items():
        step = max(1, _BLOCK_ROWS // (n + 1))
        for lo in range(0, len(members), step):
            block = members[lo : lo + step]
            cands = [
                (pools[i][0][rests[i]], pools[i][1][rests[i]] if spec.needs_embeddings else None)
                for i in block
            ]
            targets = [spec.pool_target(pools[i][0]) for i in block] if spec.pool_target else None
            negatives = _select_block(spec, cands, k, [seeds[i] for i in block], targets)
            for i, local in zip(block, negatives):
                out[i] = np.concatenate([[positives[i]], rests[i][local]])
            bar.update(len(block))
    bar.close()
    return out


def _select_block(spec: Selector, cands: list, k: int, seeds: list[int], targets: list[float] | None) -> list:
    """Negatives (positions in each candidate pool) for candidate pools of equal size; ``targets``:
    each whole pool's ``spec.pool_target`` (None when the strategy has none)."""
    if spec.block is not None:
        return _vectorised(spec.block, cands, k, seeds)
    if targets is not None:
        return [spec.fn(r, e, k, s, target=t) for (r, e), s, t in zip(cands, seeds, targets)]
    return [spec.fn(r, e, k, s) for (r, e), s in zip(cands, seeds)]


def _vectorised(block: Callable[..., list], cands: list, k: int, seeds: list[int]) -> list:
    """Run a ``Selector.block`` on equal-size candidate pools ``[(rewards, embeddings), ...]``."""
    rewards = np.stack([r for r, _ in cands])
    with one_blas_thread():
        return block(rewards, sq_distances([e for _, e in cands]), k, seeds)
