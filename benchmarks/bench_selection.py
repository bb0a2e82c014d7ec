"""Benchmark ampo.selection: selection quality against the exact MIP, and speed.

Usage: python benchmarks/bench_selection.py [--quick]

Prints markdown tables (copied into docs/selection.md):
1. quality: cost ratios strategy/exact on Gaussian-mixture pools (rewards tied to the clusters)
   and on uniform pools, N = 16, d = 384; and how often the negatives cover every cluster;
2. speed: select_batch over many prompts, exact per prompt, and time against N and k.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from ampo.selection import coverage_cost, select, select_batch

D = 384
N_QUALITY = 16
N_CLUSTERS = 3


def mixture_pool(rng: np.random.Generator, n: int, d: int = D):
    """Unit embeddings from ``N_CLUSTERS`` Gaussian clusters of unequal size; rewards follow the
    cluster (a per-cluster mean plus noise). Returns (rewards, embeddings, cluster labels)."""
    centres = rng.normal(size=(N_CLUSTERS, d)) / np.sqrt(d)
    labels = rng.choice(N_CLUSTERS, size=n, p=rng.dirichlet(np.full(N_CLUSTERS, 2.0)))
    emb = centres[labels] + 0.3 * rng.normal(size=(n, d)) / np.sqrt(d)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    rewards = rng.normal(size=N_CLUSTERS)[labels] + 0.3 * rng.normal(size=n)
    return rewards, emb.astype(np.float32), labels


def uniform_pool(rng: np.random.Generator, n: int, d: int = D):
    """Unit embeddings uniform on the sphere, rewards independent N(0, 1)."""
    emb = rng.normal(size=(n, d))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return rng.normal(size=n), emb.astype(np.float32), None


def covers_all_clusters(idx: np.ndarray, labels: np.ndarray) -> bool:
    """True if the negatives include a member of every cluster present among the candidates."""
    candidates = np.delete(np.arange(labels.size), idx[0])
    return set(labels[idx[1:]].tolist()) == set(labels[candidates].tolist())


def quality(seeds: int) -> None:
    """Cost ratio to the exact optimum (median, p95) and cluster coverage, per pool type and k."""
    strategies = ["optselect", "coreset", "bottomk", "random"]
    print(f"\n### Quality (N = {N_QUALITY}, d = {D}, {seeds} pools per row)\n")
    head = " | ".join(f"{s}/exact median, p95" for s in strategies)
    names = ", ".join(strategies)
    print(f"| pools | k | {head} | covers all {N_CLUSTERS} clusters: {names} |")
    print("|---|---|" + "---|" * len(strategies) + "---|")
    for kind, make in (("mixture", mixture_pool), ("uniform", uniform_pool)):
        for k in (3, 5, 7):
            ratios = {s: [] for s in strategies}
            covered = {s: 0 for s in strategies}
            for seed in range(seeds):
                rng = np.random.default_rng([seed, k, kind == "mixture"])
                r, e, labels = make(rng, N_QUALITY)
                best = coverage_cost(r, e, select("exact", r, e, k))
                for s in strategies:
                    idx = select(s, r, e, k, seed=seed)
                    ratios[s].append(coverage_cost(r, e, idx) / best)
                    covered[s] += labels is not None and covers_all_clusters(idx, labels)
            cells = " | ".join(
                f"{np.median(v):.3f}, {np.percentile(v, 95):.3f}" for v in ratios.values()
            )
            cover = ", ".join(f"{c / seeds:.0%}" for c in covered.values())
            if kind != "mixture":
                cover = "n/a"
            print(f"| {kind} | {k} | {cells} | {cover} |")


def timed(fn) -> tuple[float, float]:
    """(wall-clock, process CPU) seconds of one call. Selection is single-threaded, so CPU time
    is what an idle machine's wall clock would show when other jobs share the cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def make_batch(prompts: int, n: int, seed: int = 0):
    """Random reward/embedding lists (float32 unit embeddings, like a sentence embedder's)."""
    rng = np.random.default_rng(seed)
    rewards, embeddings = [], []
    for _ in range(prompts):
        e = rng.normal(size=(n, D)).astype(np.float32)
        embeddings.append(e / np.linalg.norm(e, axis=1, keepdims=True))
        rewards.append(rng.normal(size=n))
    return rewards, embeddings


def exact_each(rewards, embeddings, k: int) -> list:
    """``exact`` on each prompt in turn (it has no batched form)."""
    return [select("exact", r, e, k) for r, e in zip(rewards, embeddings)]


def speed(prompts: int) -> None:
    """select_batch throughput, exact per prompt, and scaling in N and k."""
    print(f"\n### Speed: select_batch, {prompts} prompts, N = 32, k = 7, d = {D}\n")
    print("| strategy | wall s | CPU s | CPU ms / prompt |")
    print("|---|---|---|---|")
    rewards, embeddings = make_batch(prompts, 32)
    for s in ("optselect", "coreset", "bottomk", "random"):
        wall, cpu = timed(lambda: select_batch(s, rewards, embeddings, 7))
        print(f"| {s} | {wall:.2f} | {cpu:.2f} | {1e3 * cpu / prompts:.3f} |")
    few = 10
    wall, cpu = timed(lambda: exact_each(rewards[:few], embeddings[:few], 7))
    print(f"| exact ({few} prompts, one by one) | {wall:.2f} | {cpu:.2f} | {1e3 * cpu / few:.1f} |")

    print("\n### Time against N (k = 7) and k (N = 32): CPU ms per prompt\n")
    print("| N | k | prompts | optselect | coreset | exact |")
    print("|---|---|---|---|---|---|")
    grid = [(n, 7) for n in (8, 16, 32, 64, 128, 256)] + [(32, k) for k in (1, 3, 15, 24)]
    for n, k in grid:
        count = min(prompts, max(50, 2_000_000 // n**2))
        rewards, embeddings = make_batch(count, n, seed=n + k)
        cells = []
        for s in ("optselect", "coreset"):
            cpu = timed(lambda: select_batch(s, rewards, embeddings, k))[1]
            cells.append(f"{1e3 * cpu / count:.3f}")
        if n <= 64:
            cpu = timed(lambda: exact_each(rewards[:3], embeddings[:3], k))[1]
            cells.append(f"{1e3 * cpu / 3:.1f}")
        else:
            cells.append("refused (N > 65)")
        print(f"| {n} | {k} | {count} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer pools and prompts (~30 s)")
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"numpy {np.__version__}, python {platform.python_version()}"
    )
    quality(seeds=20 if args.quick else 200)
    speed(prompts=2000 if args.quick else 10_000)


if __name__ == "__main__":
    main()
