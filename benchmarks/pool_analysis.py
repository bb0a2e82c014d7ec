"""Why do (or don't) the selection strategies differ? Statistics of the alignment benchmark's
round-0 pools, read from its run folders.

    python benchmarks/pool_analysis.py runs/bench_alignment      # after bench_alignment.py
    python benchmarks/pool_analysis.py runs/bench_alignment --policy-embeddings

For every seed: how saturated and how spread the rewards are, how much the strategies' negative
sets overlap and how far apart (in embedding space) and how bad their picks are, and whether
the embedding sees the reward at all: the within-prompt rank correlation of embedding distance
with reward difference, and how much within-prompt reward variance a cross-validated ridge
regression on the embedding explains. With `--policy-embeddings`, the same two questions are
also asked of the initial policy's own hidden states (`embed.embedder=policy`). Prints a markdown
table and writes `pool_analysis.json`.
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


def load_seed(seed_dir: Path, policy=None) -> dict:
    """Rewards and embeddings per prompt, and each strategy's selected negatives; with `policy`
    (model, tokenizer), also the responses embedded by that policy."""
    base = seed_dir / STRATEGIES["optselect"] / "round-0"
    rewards = pd.read_parquet(base / "rewards.parquet")["rewards"].map(np.asarray).tolist()
    bounds = np.cumsum([0] + [len(r) for r in rewards])

    def per_prompt(flat: np.ndarray) -> list[np.ndarray]:
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    embeddings = per_prompt(np.load(base / "embeddings.npy"))
    policy_embeddings = None
    if policy is not None:
        from ampo.embeddings import PolicyEmbedder

        texts = [t for ts in pd.read_parquet(base / "pool.parquet")["responses"] for t in ts]
        policy_embeddings = per_prompt(PolicyEmbedder(*policy)(texts))
    negatives = {}
    for name, arm in STRATEGIES.items():
        path = seed_dir / arm / "round-0" / "selection.parquet"
        if path.exists():
            negatives[name] = [set(s[1:].tolist()) for s in pd.read_parquet(path)["selected"]]
    return {"rewards": rewards, "embeddings": embeddings, "negatives": negatives,
            "policy_embeddings": policy_embeddings}


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


def distance_reward_correlation(rewards: list[np.ndarray], embeddings: list[np.ndarray]) -> float:
    """Mean over prompts of Spearman(cosine distance, |reward difference|) over response pairs."""
    correlations = []
    for r, e in zip(rewards, embeddings):
        unit = e / np.linalg.norm(e, axis=1, keepdims=True)
        i, j = np.triu_indices(len(r), 1)
        distance = 1 - (unit[i] * unit[j]).sum(-1)
        correlations.append(spearmanr(distance, np.abs(r[i] - r[j])).statistic)
    return float(np.nanmean(correlations))


def analyse(data: dict) -> dict:
    rewards, embeddings, negatives = data["rewards"], data["embeddings"], data["negatives"]
    all_rewards = np.concatenate(rewards)
    result = {
        "pools": len(rewards),
        "reward_mean": float(all_rewards.mean()),
        "reward_within_prompt_sd": float(np.mean([r.std() for r in rewards])),
        "best_reward_mean": float(np.mean([r.max() for r in rewards])),
        "pools_best_above_0.9": float(np.mean([r.max() > 0.9 for r in rewards])),
        "embedding_distance_vs_reward_gap_spearman": distance_reward_correlation(rewards, embeddings),
        "embedding_explains_within_prompt_reward_r2": within_prompt_r2(rewards, embeddings),
        "strategies": {},
    }
    if data.get("policy_embeddings") is not None:
        result["policy_embedding_distance_vs_reward_gap_spearman"] = distance_reward_correlation(
            rewards, data["policy_embeddings"])
        result["policy_embedding_explains_within_prompt_reward_r2"] = within_prompt_r2(
            rewards, data["policy_embeddings"])
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
    if "policy_embedding_explains_within_prompt_reward_r2" in results[seeds[0]]:
        lines += [row("same Spearman, policy hidden states as the embedding",
                      lambda r: r["policy_embedding_distance_vs_reward_gap_spearman"]),
                  row("same R^2, policy hidden states as the embedding",
                      lambda r: r["policy_embedding_explains_within_prompt_reward_r2"])]
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
    ap.add_argument("--policy-embeddings", action="store_true",
                    help="also embed the pools with the initial policy (SmolLM2) and ask the same questions")
    args = ap.parse_args()
    policy = None
    if args.policy_embeddings:
        from ampo.models import DEFAULT_POLICY, load_policy

        policy = load_policy(DEFAULT_POLICY)
    seed_dirs = sorted(p for p in args.out.glob("seed*") if (p / STRATEGIES["optselect"] / "round-0").exists())
    if not seed_dirs:
        raise SystemExit(f"pool_analysis: no seed*/{STRATEGIES['optselect']}/round-0 under {args.out}")
    results = {d.name: analyse(load_seed(d, policy)) for d in seed_dirs}
    (args.out / "pool_analysis.json").write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
