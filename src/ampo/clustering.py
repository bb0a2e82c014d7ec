"""The maths behind the embedding strategies of `ampo.selection`, pure NumPy on the squared
distance matrices of many equal-size candidate pools at once (HiGHS through ``highspy`` for the
exact MIP): k-means coreset, weighted k-medoids local search (opt-select) and the exact
k-median. Formulas: docs/selection.md. Positions returned
are into each candidate pool, in ascending reward (ties by position).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from threadpoolctl import ThreadpoolController

_KMEANS_RESTARTS = 4  # k-means++ restarts for coreset; the lowest-inertia run wins
_KMEANS_MAX_ITER = 100  # Lloyd iterations per restart (pools are tiny; convergence is quick)
_SWAP_REL_TOL = 1e-10  # a swap must lower the cost by more than this fraction of it
_MAX_SWAPS = 10_000  # safety bound on local-search swaps; never reached in practice
_REFINE_REL = 1e-4  # squared distances below this fraction of the pool's spread are recomputed


def by_reward(rewards: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Sort ``positions`` by ascending reward, ties by position (the canonical negative order)."""
    positions = np.asarray(positions, dtype=np.int64)
    return positions[np.lexsort((positions, rewards[positions]))]


def relative_weights(rewards: np.ndarray) -> np.ndarray:
    """``exp(min(r) - r)``: opt-select's weights ``exp(mean(r) - r)`` divided by a constant, so the
    argmin is the same.

    Scaling by ``exp(min(r) - mean(r))`` keeps every weight in (0, 1] and avoids overflow for
    reward models with a large range. Works on the last axis.
    """
    return np.exp(rewards.min(axis=-1, keepdims=True) - rewards)


def sq_distances(embeddings: Sequence[np.ndarray]) -> np.ndarray:
    """Squared Euclidean distance matrices ``[B, n, n]`` for ``B`` pools of ``n`` embeddings.

    Uses the Gram matrix of the centred points (fast for d >> n). Gram distances lose precision
    for close points, so pairs closer than ``_REFINE_REL`` of the pool's spread are recomputed
    from differences: identical embeddings then have distance exactly 0.
    """
    x = np.stack(embeddings, dtype=np.float64)
    x -= x.mean(axis=1, keepdims=True)  # in place: x is our own copy, and big
    gram = x @ x.transpose(0, 2, 1)
    sq = np.diagonal(gram, axis1=1, axis2=2)
    d2 = np.triu(sq[:, :, None] + sq[:, None, :] - 2.0 * gram, 1)
    close = np.triu(d2 < _REFINE_REL * sq.max(axis=1)[:, None, None], 1)
    b, i, j = np.nonzero(close)
    d2[b, i, j] = ((x[b, i] - x[b, j]) ** 2).sum(axis=-1)
    return d2 + d2.transpose(0, 2, 1)


def fill_lowest(rewards: np.ndarray, chosen: np.ndarray, k: int) -> np.ndarray:
    """Add the lowest-reward unchosen positions to ``chosen`` until it has ``k`` entries."""
    taken = np.zeros(rewards.size, dtype=bool)
    taken[chosen] = True
    rest = by_reward(rewards, np.flatnonzero(~taken))
    return np.concatenate([chosen, rest[: k - chosen.size]])


@functools.cache
def _blas_controller() -> ThreadpoolController:
    """The threadpoolctl controller for the BLAS numpy loaded (found once: scanning is slow)."""
    return ThreadpoolController()


def one_blas_thread():
    """Context manager limiting numpy's BLAS to one thread.

    Selection does many tiny matrix products, for which BLAS threads only add overhead; on a
    busy machine OpenBLAS's spinning threads made them ~100x slower (measured: 8 s instead of
    0.04 s for 488 Gram matrices of 48 x 384 on 2 shared cores).
    """
    return _blas_controller().limit(limits=1, user_api="blas")


# --------------------------------------------------------------------------------------------
# Coreset: k-means in embedding space, lowest-reward member per cluster


def _kmeanspp_init(d2: np.ndarray, u: np.ndarray) -> np.ndarray:
    """k-means++ seeding on distance matrices ``d2 [B, n, n]`` with uniforms ``u [B, k]``.

    The first centre is uniform; each next one is drawn with probability proportional to the
    squared distance to the nearest centre so far. Needs at least ``k`` distinct points.
    """
    batch, n, _ = d2.shape
    rows = np.arange(batch)
    centres = np.empty(u.shape, dtype=np.int64)
    centres[:, 0] = np.minimum((u[:, 0] * n).astype(np.int64), n - 1)
    nearest = d2[rows, centres[:, 0]]
    for t in range(1, u.shape[1]):
        cum = np.cumsum(nearest, axis=1)
        threshold = u[:, t] * cum[:, -1]
        centres[:, t] = np.minimum((cum <= threshold[:, None]).sum(axis=1), n - 1)
        nearest = np.minimum(nearest, d2[rows, centres[:, t]])
    return centres


def _kmeans_labels(d2: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means from the given centre points, on distance matrices only.

    A centroid is kept as coefficients ``m`` over the points (rows sum to 1); then
    ``||x_i - sum_l m_l x_l||^2 = (d2 @ m)_i - m^T d2 m / 2``, so no embedding is touched. An
    emptied cluster keeps its previous centroid. Returns (labels ``[B, n]``, inertia ``[B]``).
    """
    batch, n, _ = d2.shape
    k = centres.shape[1]
    coef = np.zeros((batch, k, n))
    coef[np.arange(batch)[:, None], np.arange(k)[None, :], centres] = 1.0
    labels = np.full((batch, n), -1, dtype=np.int64)
    for _ in range(_KMEANS_MAX_ITER):
        t = d2 @ coef.transpose(0, 2, 1)  # [B, n, k]
        dist = t - 0.5 * np.einsum("bkn,bnk->bk", coef, t)[:, None, :]
        new = dist.argmin(axis=2)
        if np.array_equal(new, labels):
            break
        labels = new
        onehot = (labels[:, None, :] == np.arange(k)[None, :, None]).astype(np.float64)
        counts = onehot.sum(axis=2, keepdims=True)
        coef = np.where(counts > 0, onehot / np.maximum(counts, 1.0), coef)
    inertia = np.take_along_axis(dist, labels[:, :, None], axis=2)[:, :, 0].sum(axis=1)
    return labels, inertia


def coreset_block(rewards: np.ndarray, d2: np.ndarray, k: int, seeds: Sequence[int]) -> list:
    """Coreset for a block of equal-size pools; returns one position array per pool.

    Pools with fewer than ``k`` distinct embeddings are clustered into as many clusters as
    they have distinct points, then topped up with the lowest-reward unchosen responses.
    """
    batch, n = rewards.shape
    distinct = n - np.tril(d2 == 0.0, -1).any(axis=2).sum(axis=1)
    out: list = [None] * batch
    full = np.flatnonzero(distinct >= k)
    if full.size:
        picks = _coreset_clusters(rewards[full], d2[full], k, [seeds[i] for i in full])
        for row, pick in zip(full, picks):
            out[row] = pick
    for row in np.flatnonzero(distinct < k):
        one = slice(row, row + 1)
        pick = _coreset_clusters(rewards[one], d2[one], distinct[row], [seeds[row]])[0]
        out[row] = fill_lowest(rewards[row], pick, k)
    return [by_reward(rewards[i], out[i]) for i in range(batch)]


def _coreset_clusters(rewards: np.ndarray, d2: np.ndarray, k: int, seeds: Sequence[int]) -> list:
    """k-means (best of ``_KMEANS_RESTARTS`` k-means++ runs), then each cluster's lowest reward."""
    batch, n = rewards.shape
    u = np.stack([np.random.default_rng(s).random((_KMEANS_RESTARTS, k)) for s in seeds])
    rep = np.repeat(d2, _KMEANS_RESTARTS, axis=0)
    labels, inertia = _kmeans_labels(rep, _kmeanspp_init(rep, u.reshape(-1, k)))
    labels = labels.reshape(batch, _KMEANS_RESTARTS, n)
    best = inertia.reshape(batch, _KMEANS_RESTARTS).argmin(axis=1)  # ties -> first restart
    labels = labels[np.arange(batch), best]
    rank = np.argsort(np.argsort(rewards, axis=1, kind="stable"), axis=1)  # 0 = lowest reward
    member = labels[:, None, :] == np.arange(k)[None, :, None]  # [B, k, n]
    masked = np.where(member, rank[:, None, :], n)
    picks = masked.argmin(axis=2)
    nonempty = member.any(axis=2)
    out = []
    for row in range(batch):
        chosen = picks[row][nonempty[row]]
        out.append(fill_lowest(rewards[row], chosen, k) if chosen.size < k else chosen)
    return out


# --------------------------------------------------------------------------------------------
# Opt-select: weighted k-medoids by single-swap local search


def _greedy_build(dist: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """PAM BUILD for the weighted cost: add, ``k`` times, the point that lowers it most."""
    batch, n, _ = dist.shape
    rows = np.arange(batch)
    chosen = np.zeros((batch, n), dtype=bool)
    medoids = np.empty((batch, k), dtype=np.int64)
    nearest = np.full((batch, n), np.inf)
    for t in range(k):
        cost = (w[:, :, None] * np.minimum(nearest[:, :, None], dist)).sum(axis=1)
        cost[chosen] = np.inf
        medoids[:, t] = cost.argmin(axis=1)
        chosen[rows, medoids[:, t]] = True
        nearest = np.minimum(nearest, dist[rows, :, medoids[:, t]])
    return medoids


def _nearest_two(dist: np.ndarray, medoids: np.ndarray):
    """Per point: distance to the nearest medoid, its slot, and the second-nearest distance."""
    to_med = np.take_along_axis(dist, medoids[:, None, :], axis=2)  # [B, n, k]
    slot = to_med.argmin(axis=2)
    d1 = np.take_along_axis(to_med, slot[:, :, None], axis=2)[:, :, 0]
    if medoids.shape[1] == 1:
        return d1, slot, np.full_like(d1, np.inf)
    np.put_along_axis(to_med, slot[:, :, None], np.inf, axis=2)
    return d1, slot, to_med.min(axis=2)


def local_search(dist: np.ndarray, w: np.ndarray, medoids: np.ndarray):
    """Best-improvement single-swap local search; returns (medoids, cost) per pool.

    The cost change of swapping medoid slot ``m`` for candidate ``c`` is evaluated for all
    ``(m, c)`` at once (FastPAM1 decomposition): a point either moves to ``c`` (if closer than
    its medoid, whatever ``m`` is) or, when its own medoid is removed, to ``min(d2, A_ic)``.
    """
    medoids = medoids.copy()
    batch, n, _ = dist.shape
    k = medoids.shape[1]
    cost = np.empty(batch)
    active = np.arange(batch)
    for _ in range(_MAX_SWAPS):
        dd, ww, mm = dist[active], w[active], medoids[active]
        d1, slot, d2 = _nearest_two(dd, mm)
        cur = (ww * d1).sum(axis=1)
        cost[active] = cur
        gain_all = (ww[:, :, None] * np.minimum(dd - d1[:, :, None], 0.0)).sum(axis=1)  # [b, n]
        lost = np.where(
            dd >= d1[:, :, None], np.minimum(d2[:, :, None], dd) - d1[:, :, None], 0.0
        ) * ww[:, :, None]  # [b, n(points), n(candidates)]
        onehot = (slot[:, :, None] == np.arange(k)).astype(np.float64)  # [b, n, k]
        delta = gain_all[:, None, :] + onehot.transpose(0, 2, 1) @ lost  # [b, k, n]
        in_set = np.broadcast_to(mm[:, None, :], (mm.shape[0], k, k))
        np.put_along_axis(delta, in_set, np.inf, axis=2)  # candidates must be outside S
        flat = delta.reshape(delta.shape[0], -1).argmin(axis=1)  # ties -> first (slot, candidate)
        best = delta.reshape(delta.shape[0], -1)[np.arange(flat.size), flat]
        improve = best < -_SWAP_REL_TOL * cur
        if not improve.any():
            break
        rows = active[improve]
        medoids[rows, flat[improve] // n] = flat[improve] % n
        active = rows
    return medoids, cost


def optselect_block(rewards: np.ndarray, d2: np.ndarray, k: int, seeds: Sequence[int] = ()) -> list:
    """Opt-select for a block of equal-size pools; returns one position array per pool.

    Local search runs from two starts, bottom-k and the greedy build, and the
    lower final cost wins (ties to bottom-k). Two starts cost little and avoid most poor local
    optima of either start. Deterministic: ``seeds`` is unused.
    """
    batch = rewards.shape[0]
    dist = np.sqrt(d2)
    w = relative_weights(rewards)
    bottom = np.argsort(rewards, axis=1, kind="stable")[:, :k]  # ties by position
    starts = np.concatenate([bottom, _greedy_build(dist, w, k)])
    medoids, cost = local_search(np.concatenate([dist, dist]), np.concatenate([w, w]), starts)
    use_build = cost[batch:] < cost[:batch]
    final = np.where(use_build[:, None], medoids[batch:], medoids[:batch])
    return [by_reward(rewards[i], final[i]) for i in range(batch)]


def solve_kmedian(dist: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Solve the weighted k-median MIP with HiGHS; returns the chosen medoid positions."""
    import highspy

    n = dist.shape[0]
    nz = n * n  # z_ij is column n + i*n + j
    lp = highspy.HighsLp()
    lp.num_col_ = n + nz
    lp.num_row_ = n + nz + 1
    lp.col_cost_ = np.concatenate([np.zeros(n), (w[:, None] * dist).ravel()])
    lp.col_lower_ = np.zeros(n + nz)
    lp.col_upper_ = np.ones(n + nz)
    lp.integrality_ = [highspy.HighsVarType.kInteger] * n + [highspy.HighsVarType.kContinuous] * nz
    z = n + np.arange(nz).reshape(n, n)
    assign_idx = z.ravel()  # rows 0..n-1: sum_j z_ij = 1 (n entries each)
    link_idx = np.stack([z.ravel(), np.tile(np.arange(n), n)], axis=1).ravel()  # z_ij - x_j <= 0
    index = np.concatenate([assign_idx, link_idx, np.arange(n)])
    value = np.concatenate([np.ones(nz), np.tile([1.0, -1.0], nz), np.ones(n)])
    start = np.concatenate([np.arange(n) * n, nz + 2 * np.arange(nz), [3 * nz], [3 * nz + n]])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_ = n + nz
    lp.a_matrix_.num_row_ = n + nz + 1
    lp.a_matrix_.start_ = start.astype(np.int32)
    lp.a_matrix_.index_ = index.astype(np.int32)
    lp.a_matrix_.value_ = value
    lp.row_lower_ = np.concatenate([np.ones(n), np.full(nz, -highspy.kHighsInf), [k]])
    lp.row_upper_ = np.concatenate([np.ones(n), np.zeros(nz), [k]])
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 0.0)
    h.setOptionValue("threads", 1)
    h.passModel(lp)
    h.run()
    status = h.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        raise ValueError(
            f"exact: HiGHS did not solve the k-median MIP (status {h.modelStatusToString(status)})"
        )
    x = np.asarray(h.getSolution().col_value[:n])
    medoids = np.flatnonzero(x > 0.5)
    if medoids.size != k:
        raise ValueError(f"exact: HiGHS returned {medoids.size} medoids instead of {k}")
    return medoids
