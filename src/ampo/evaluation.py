"""Held-out evaluation of a policy against another: a round's policy against the initial one
(`Pipeline.evaluate`), or any two policies (`ampo evaluate --policy P --against Q`).

Metrics (written to each round's `eval.json`): mean reward, win rate against the initial
policy's samples judged by the reward function (ties count half) with a bootstrap confidence
interval over prompts, response length, diversity (distinct-n and mean pairwise embedding
distance), and drift (how much less likely the new responses are under the initial policy).

With a pairwise scorer (a judge or GPM giving preference matrices, no scalar reward) a held-out
response's "reward" is its mean win probability `sigmoid(S(new, base))` against the initial
policy's samples of the same prompt, so `mean_reward` is the win rate against the baseline
(ties count half automatically) and `baseline_mean_reward` is 0.5; the baseline samples' own
rewards are their win rates among themselves.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .data import prompt_text
from .rewards import is_pairwise


def sample_and_score(policy, reward_fn, prompts: list[dict], eval_cfg, seed: int, progress: bool = True,
                     dtype: str = "auto") -> list[dict]:
    """`samples_per_prompt` samples per held-out prompt, with their rewards. One row per prompt.
    Sample j of a prompt draws from the stream of (seed, prompt id, j) whichever policy samples:
    the baseline and every round share their random numbers (common random numbers). `dtype` is
    the sampling dtype (`generate.dtype`: "auto" is bf16 only where the machine has it natively)."""
    from .generation import GenerationConfig, HFGenerator

    model, tok = policy
    cfg = GenerationConfig(n=eval_cfg.samples_per_prompt, temperature=eval_cfg.temperature,
                           max_new_tokens=eval_cfg.max_new_tokens, seed=seed, dtype=dtype)
    samples = HFGenerator(model, tok, cfg).generate([p["prompt"] for p in prompts], progress=progress,
                                                    keys=[p["id"] for p in prompts])
    texts = [[s.text for s in ss] for ss in samples]
    if is_pairwise(reward_fn):
        from .preferences import aggregate

        matrices = reward_fn.matrices([prompt_text(p["prompt"]) for p in prompts], texts)
        rewards = [aggregate(S, "win_rate") if len(S) > 1 else np.full(len(S), 0.5) for S in matrices]
    else:
        rewards = _scalar_rewards(reward_fn, prompts, texts)
    return [{"id": p["id"], "prompt": p["prompt"], "responses": ts, "rewards": rw.tolist(),
             "n_tokens": [s.n_tokens for s in ss], "finished": [s.finished for s in ss]}
            for p, ts, rw, ss in zip(prompts, texts, rewards, samples)]


def _scalar_rewards(reward_fn, prompts: list[dict], texts: list[list[str]]) -> np.ndarray:
    """`[prompts, samples]` rewards of a scalar reward function."""
    from .rewards import score_texts

    flat = score_texts(reward_fn, [prompt_text(p["prompt"]) for p, ts in zip(prompts, texts) for _ in ts],
                       [t for ts in texts for t in ts], [p.get("meta") for p, ts in zip(prompts, texts) for _ in ts])
    return np.asarray(flat, dtype=np.float64).reshape(len(prompts), -1)


def pairwise_vs_base(scorer, rows: list[dict], base_rows: list[dict]) -> np.ndarray:
    """`[prompts, samples]`: each new sample's mean win probability `sigmoid(S(new, base))` against
    the same prompt's baseline samples, from one preference matrix over both sets per prompt."""
    from .preferences import sigmoid

    matrices = scorer.matrices([prompt_text(r["prompt"]) for r in rows],
                               [r["responses"] + b["responses"] for r, b in zip(rows, base_rows)])
    return np.array([sigmoid(S[: len(r["responses"]), len(r["responses"]):]).mean(axis=1)
                     for S, r in zip(matrices, rows)])


def judge_against(scorer, rows: list[dict], base_rows: list[dict]) -> bool:
    """With a pairwise scorer, replace each row's rewards by its samples' win probabilities against
    the same prompt's `base_rows` samples (`pairwise_vs_base`) and return True; a scalar reward
    leaves the rows alone (False)."""
    if not is_pairwise(scorer):
        return False
    for row, vs_base in zip(rows, pairwise_vs_base(scorer, rows, base_rows)):
        row["rewards"] = vs_base.tolist()
    return True


def win_rate(new: np.ndarray, base: np.ndarray, bootstrap: int = 1000, seed: int = 0) -> tuple[float, list[float]]:
    """Win rate of `new` over `base` rewards ([prompts, samples]); ties half; 95% bootstrap CI over prompts."""
    return mean_with_ci(((new > base) + 0.5 * (new == base)).mean(axis=1), bootstrap, seed)


def mean_with_ci(per_prompt: np.ndarray, bootstrap: int = 1000, seed: int = 0) -> tuple[float, list[float]]:
    """Mean of per-prompt values and its 95% bootstrap interval over prompts."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_prompt), size=(bootstrap, len(per_prompt)))
    boots = per_prompt[idx].mean(axis=1)
    return float(per_prompt.mean()), [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / all n-grams over a set of texts (word level)."""
    grams = [tuple(w[i: i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def embedding_diversity(embedder, rows: list[dict]) -> float | None:
    """Mean pairwise Euclidean distance between one prompt's samples, averaged over prompts."""
    if min(len(r["responses"]) for r in rows) < 2:
        return None
    emb = embedder([t for r in rows for t in r["responses"]])
    out, offset = [], 0
    for r in rows:
        e = emb[offset: offset + len(r["responses"])]
        offset += len(e)
        d = np.linalg.norm(e[:, None] - e[None], axis=-1)
        out.append(d[np.triu_indices(len(e), 1)].mean())
    return float(np.mean(out))


def per_token_logp(policy, rows: list[dict]) -> float:
    """Mean per-token log-prob of the rows' responses under `policy`."""
    from .layouts import response_logprobs

    model, tok = policy
    logps, counts = response_logprobs(model, tok, [r["prompt"] for r in rows], [r["responses"] for r in rows],
                                      [r["finished"] for r in rows])
    return float(np.concatenate(logps).sum() / max(np.concatenate(counts).sum(), 1))


def summarize(rows: list[dict], base_rows: list[dict], bootstrap: int, seed: int, pairwise: bool = False) -> dict:
    """The metrics that need only samples and rewards. `pairwise`: the rows' rewards are win
    probabilities against the baseline (`pairwise_vs_base`), so they are the win rate."""
    new = np.array([r["rewards"] for r in rows])
    base = np.array([r["rewards"] for r in base_rows])
    if pairwise:
        wr, ci = mean_with_ci(new.mean(axis=1), bootstrap, seed)
        base = np.full_like(new, 0.5)
    else:
        wr, ci = win_rate(new, base, bootstrap, seed)
    texts = [t for r in rows for t in r["responses"]]
    return {
        "mean_reward": float(new.mean()),
        "baseline_mean_reward": float(base.mean()),
        "reward_gain": float(new.mean() - base.mean()),
        "win_rate": wr,
        "win_rate_ci": ci,
        "mean_length": float(np.mean([n for r in rows for n in r["n_tokens"]])),
        "baseline_mean_length": float(np.mean([n for r in base_rows for n in r["n_tokens"]])),
        "finished_rate": float(np.mean([f for r in rows for f in r["finished"]])),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "n_prompts": len(rows),
    }


def baseline_summary(initial_policy, embedder, rows: list[dict]) -> dict:
    """Metrics of the initial policy's own samples, computed once per run."""
    return {"embedding_diversity": embedding_diversity(embedder, rows),
            "initial_logp_per_token": per_token_logp(initial_policy, rows)}


def compare(rows: list[dict], base_rows: list[dict], base_summary: dict, embedder, reference_policy,
            bootstrap: int, seed: int, pairwise: bool = False) -> dict:
    """A round's `eval.json` metrics for samples `rows` against `base_rows` (the same prompts and
    sampling seed): `summarize`, embedding diversity, and drift = how much less likely `rows` are
    under `reference_policy` than `base_rows` were (`base_summary`, from `baseline_summary`).
    `pairwise`: the rows' rewards are win probabilities against `base_rows` (`judge_against`)."""
    result = summarize(rows, base_rows, bootstrap, seed, pairwise)
    result["embedding_diversity"] = embedding_diversity(embedder, rows)
    result["baseline_embedding_diversity"] = base_summary["embedding_diversity"]
    result["initial_logp_per_token"] = per_token_logp(reference_policy, rows)
    result["baseline_initial_logp_per_token"] = base_summary["initial_logp_per_token"]
    result["drift"] = result["baseline_initial_logp_per_token"] - result["initial_logp_per_token"]
    return result


def evaluate_policies(policy: str, against: str, base: str, prompts: list[dict], out: Path, eval_cfg, *,
                      reward: str, embedder: str, seed: int, dtype: str = "float32", progress: bool = True) -> dict:
    """`ampo evaluate` without a benchmark: `policy` against `against` (each a built-in name, a
    model folder, or a LoRA adapter on `base`) on held-out `prompts`, as a round is evaluated
    against the initial policy. Writes `out/eval.json` (a round's schema, with `policy` and
    `against` in place of `round`), `out/eval_samples.parquet`, `out/baseline/`; resumable."""
    from .hashing import config_key, seed_from
    from .data import write_json, write_rows
    from .embeddings import load_embedder
    from .ifeval.evaluate import load_eval_policy, policy_fingerprint
    from .rewards import load_reward
    from .runner import Runner

    import dataclasses

    from .stage_keys import sampling_dtype_option

    options = {**dataclasses.asdict(eval_cfg), **sampling_dtype_option("auto")}  # the samplers' dtype, as a run's
    ids = [[p["id"], p["prompt"]] for p in prompts]
    from .sampling import SAMPLER

    key_base = config_key("baseline", policy_fingerprint(against, base, dtype), ids, reward, embedder, options, seed,
                          SAMPLER)
    key_eval = config_key("eval", key_base, policy_fingerprint(policy, base, dtype))
    samples_base, summary_base = out / "baseline" / "samples.parquet", out / "baseline" / "summary.json"
    with Runner(out, progress=progress) as run:
        loaded = {}

        def component(name):
            if name not in loaded:
                loaded[name] = {"reward": lambda: load_reward(reward),
                                "against": lambda: load_eval_policy(against, base, dtype)}[name]()
            return loaded[name]

        def embedder_of(pol):  # `policy` embeds with the policy whose samples it measures, as in a run
            return load_embedder(embedder, policy=pol if embedder == "policy" else None)

        def make_baseline():
            rows = sample_and_score(component("against"), component("reward"), prompts, eval_cfg,
                                    seed=seed_from("eval", seed), progress=run.progress)
            write_rows(samples_base, rows)
            write_json(summary_base, baseline_summary(component("against"), embedder_of(component("against")), rows))

        def make_eval():
            evaluated = load_eval_policy(policy, base, dtype)
            import pyarrow.parquet as pq

            rows = sample_and_score(evaluated, component("reward"), prompts, eval_cfg,
                                    seed=seed_from("eval", seed), progress=run.progress)
            base_rows = pq.read_table(samples_base).to_pylist()
            pairwise = judge_against(component("reward"), rows, base_rows)
            write_rows(out / "eval_samples.parquet", rows)
            result = {"policy": policy, "against": against,
                      **compare(rows, base_rows, json.loads(summary_base.read_text()),
                                embedder_of(evaluated), component("against"), eval_cfg.bootstrap, seed, pairwise)}
            write_json(out / "eval.json", result)

        run.stage("baseline", key_base, make_baseline, [samples_base, summary_base])
        run.stage("evaluate", key_eval, make_eval, [out / "eval.json", out / "eval_samples.parquet"])
    return json.loads((out / "eval.json").read_text())
