"""Why do (or don't) the selection strategies differ? Statistics of the alignment benchmark's
round-0 pools, read from its run folders.

    python benchmarks/pool_analysis.py runs/bench_alignment      # after bench_alignment.py

For every seed: how saturated and how spread the rewards are, how much the strategies' negative
sets overlap and how far apart (in embedding space) and how bad their picks are, and whether
the embedding sees the reward at all: the within-prompt rank correlation of embedding distance
with reward difference, and how much within-prompt reward variance a cross-validated ridge
regression on the embedding explains. Prints a markdown table and writes `pool_analysis.json`.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

STRATEGIES = {"bottomk": "ampo+bottomk", "coreset": "ampo+coreset", "optselect": "ampo+optselect",
              "random": "ampo+random"}


def load_seed(seed_dir: Path) -> dict:
    """Rewards and embeddings per prompt, and each strategy's selected negatives."""
    base = seed_dir / STRATEGIES["optselect"] / "round-0"
    rewards = pd.read_parquet(base / "rewards.parquet")["rewards"].map(np.asarray).tolist()
    flat = np.load(base / "embeddings.npy")
    bounds = np.cumsum([0] + [len(r) for r in rewards])
    embeddings = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    negatives = {}
    for name, arm in STRATEGIES.items():
        path = seed_dir / arm / "round-0" / "selection.parquet"
        if path.exists():
            negatives[name] = [set(s[1:].tolist()) for s in pd.read_parquet(path)["selected"]]
    return {"rewards": rewards, "embeddings": embeddings, "negatives": negatives}


def within_prompt_r2(rewards: list[np.ndarray], embeddings: list[np.ndarray], folds: int = 5) -> float:
    """Cross-validated R^2 of ridge regression from the embedding to the reward, both centred per
    prompt (so topic, which the prompt fixes, cannot explain anything); folds split by prompt."""
    from sklearn.linear_model import RidgeCV

    x = np.concatenate([e - e.mean(0) for e in embeddings])
    y = np.concatenate([r - r.mean() for r in rewards])
    prompt = np.concatenate([[i] * len(r) for i, r in enumerate(rewards)])
    predicted = np.zeros_like(y)
    for f in range(folds):
        test = prompt % folds == f
        model = RidgeCV(alphas=np.logspace(-2, 3, 12)).fit(x[~test], y[~test])
        predicted[test] = model.predict(x[test])
    return float(1 - ((y - predicted) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def analyse(data: dict) -> dict:
    rewards, embeddings, negatives = data["rewards"], data["embeddings"], data["negatives"]
    all_rewards = np.concatenate(rewards)
    correlations = []
    for r, e in zip(rewards, embeddings):
        unit = e / np.linalg.norm(e, axis=1, keepdims=True)
        i, j = np.triu_indices(len(r), 1)
        distance = 1 - (unit[i] * unit[j]).sum(-1)
        correlations.append(spearmanr(distance, np.abs(r[i] - r[j])).statistic)
    result = {
        "pools": len(rewards),
        "reward_mean": float(all_rewards.mean()),
        "reward_within_prompt_sd": float(np.mean([r.std() for r in rewards])),
        "best_reward_mean": float(np.mean([r.max() for r in rewards])),
        "pools_best_above_0.9": float(np.mean([r.max() > 0.9 for r in rewards])),
        "embedding_distance_vs_reward_gap_spearman": float(np.nanmean(correlations)),
        "embedding_explains_within_prompt_reward_r2": within_prompt_r2(rewards, embeddings),
        "strategies": {},
    }
    for name, sets in negatives.items():
        picked = [np.asarray(sorted(s)) for s in sets]
        spread = []
        for e, idx in zip(embeddings, picked):
            unit = e[idx] / np.linalg.norm(e[idx], axis=1, keepdims=True)
            spread.append(np.mean([1 - unit[a] @ unit[b] for a, b in itertools.combinations(range(len(idx)), 2)]))
        result["strategies"][name] = {
            "negative_reward_mean": float(np.mean([r[idx].mean() for r, idx in zip(rewards, picked)])),
            "negative_cosine_spread": float(np.mean(spread)),
        }
    names = sorted(negatives)
    result["jaccard"] = {
        f"{a}/{b}": float(np.mean([len(x & y) / len(x | y) for x, y in zip(negatives[a], negatives[b])]))
        for a, b in itertools.combinations(names, 2)
    }
    return result


def table(results: dict[str, dict]) -> str:
    seeds = list(results)
    def row(label, get):
        return f"| {label} | " + " | ".join(f"{get(results[s]):.3f}" for s in seeds) + " |"
    lines = ["| pool statistic | " + " | ".join(seeds) + " |", "|---|" + "---|" * len(seeds),
             row("mean reward (all samples)", lambda r: r["reward_mean"]),
             row("within-prompt reward sd", lambda r: r["reward_within_prompt_sd"]),
             row("mean best reward per prompt", lambda r: r["best_reward_mean"]),
             row("share of prompts whose best reward > 0.9", lambda r: r["pools_best_above_0.9"]),
             row("Spearman(embedding distance, reward gap), within prompt",
                 lambda r: r["embedding_distance_vs_reward_gap_spearman"]),
             row("R^2 of reward from embedding, within prompt (5-fold CV)",
                 lambda r: r["embedding_explains_within_prompt_reward_r2"])]
    for name in results[seeds[0]]["strategies"]:
        lines.append(row(f"{name}: mean reward of negatives", lambda r: r["strategies"][name]["negative_reward_mean"]))
        lines.append(row(f"{name}: mean cosine distance among negatives",
                         lambda r: r["strategies"][name]["negative_cosine_spread"]))
    for pair in results[seeds[0]]["jaccard"]:
        lines.append(row(f"Jaccard overlap of negatives, {pair}", lambda r: r["jaccard"][pair]))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="bench_alignment.py's --out folder")
    args = ap.parse_args()
    seed_dirs = sorted(p for p in args.out.glob("seed*") if (p / STRATEGIES["optselect"] / "round-0").exists())
    if not seed_dirs:
        raise SystemExit(f"pool_analysis: no seed*/{STRATEGIES['optselect']}/round-0 under {args.out}")
    results = {d.name: analyse(load_seed(d)) for d in seed_dirs}
    (args.out / "pool_analysis.json").write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
