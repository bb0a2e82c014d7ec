"""GPO with a trained GPM scorer against DPO with the scalar reward, on the demo task, same budget.

    python benchmarks/bench_gpo_gpm.py --quick     # smoke run (tiny sizes, one round)
    python benchmarks/bench_gpo_gpm.py             # full: the demo recipe's sizes, 2 rounds (not yet run)

1. The `dpo` arm: the demo recipe with best-vs-worst pairs and DPO on the built-in (scalar) reward.
2. A GPM reward model (`ampo train-rm --head gpm`, MiniLM, value_head_dim 4) trained on pairs of
   the dpo arm's round-0 pool labelled by the built-in reward (the best response against each
   other one; ties skipped): the pairwise scorer distilled from the same signal.
3. The `gpo` arm: the same recipe with that GPM folder as `score.reward`, `score.aggregate:
   mean_logit` (GPO's target), best-vs-worst pairs and the `gpo` loss against the round's
   starting policy. It reuses the dpo arm's split and round-0 samples and embeddings, so both
   arms train on the same prompts, the same round-0 responses and the same number of optimizer
   steps (one pair per prompt, same prompts per step, same epochs and rounds).
4. Both arms' final held-out samples are judged by both scorers against the same baseline
   samples (the initial policy's, identical in both runs): the built-in reward (mean reward and
   win rate, ties half) and the GPM (mean win probability).

Writes results.json and gpo_gpm.md into --out. GPO's beta for this scale is ampo's choice
(`--gpo-beta`, default 2: the mean-logit targets of a tau = 0.1 GPM reach +-20 nats at beta 1).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from seed_run import copy_stages

from ampo.cli import DEMO_RECIPE
from ampo.config import load_config
from ampo.data import prompt_text
from ampo.evaluation import mean_with_ci, pairwise_vs_base, win_rate
from ampo.rewards.gpm import GPMHead
from ampo.pipeline import Pipeline
from ampo.rewards import BuiltinReward, load_reward, train_reward_model

SHARED = ("split.json", "round-0/pool.parquet", "round-0/embeddings.npy")
SHARED_STAGES = ("split", "round-0/generate", "round-0/embed")


def sizes(quick: bool) -> list[str]:
    if quick:
        return ["rounds=1", "data.train_prompts=8", "data.heldout=8", "generate.n=4", "generate.max_new_tokens=16",
                "eval.samples_per_prompt=1", "eval.max_new_tokens=16", "eval.bootstrap=200"]
    return []  # the demo recipe: 2 rounds, 48 train prompts a round, 48 held out, n = 8, 48 tokens


def rm_pairs(run: Path) -> list[dict]:
    """Round-0 pairs of a run: each prompt's best response (built-in reward) against every other."""
    pool = pq.read_table(run / "round-0" / "pool.parquet").to_pylist()
    rewards = pq.read_table(run / "round-0" / "rewards.parquet").to_pylist()
    pairs = []
    for rec, row in zip(pool, rewards, strict=True):
        r = np.asarray(row["rewards"])
        best = int(np.argmax(r))
        pairs += [{"prompt": prompt_text(rec["prompt"]), "chosen": rec["responses"][best], "rejected": rec["responses"][j],
                   "score_chosen": float(r[best]), "score_rejected": float(r[j])}
                  for j in range(len(r)) if r[j] < r[best]]
    return pairs


def copy_shared(base: Path, out: Path) -> None:
    """Give the gpo arm the dpo arm's split and round-0 samples and embeddings (found up to date)."""
    if out.exists():
        return
    copy_stages(base, out, SHARED, SHARED_STAGES)


def judge(run: Path, rounds: int, builtin: BuiltinReward, gpm, bootstrap: int) -> dict:
    """The final round's held-out samples judged against the baseline by both scorers."""
    rows = pq.read_table(run / f"round-{rounds - 1}" / "eval_samples.parquet").to_pylist()
    base = pq.read_table(run / "baseline" / "samples.parquet").to_pylist()
    score = lambda rs: np.array([builtin([prompt_text(r["prompt"])] * len(r["responses"]), r["responses"]) for r in rs])
    new, old = score(rows), score(base)
    wr, ci = win_rate(new, old, bootstrap)
    gpm_wr, gpm_ci = mean_with_ci(pairwise_vs_base(gpm, rows, base).mean(axis=1), bootstrap)
    return {"builtin_reward": float(new.mean()), "baseline_builtin_reward": float(old.mean()),
            "builtin_win_rate": wr, "builtin_win_rate_ci": ci, "gpm_win_rate": gpm_wr, "gpm_win_rate_ci": gpm_ci}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_gpo_gpm"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gpo-beta", type=float, default=2.0)
    ap.add_argument("--rm-epochs", type=int, default=3)
    args = ap.parse_args()
    common = [*sizes(args.quick), f"seed={args.seed}"]
    rounds = load_config(DEMO_RECIPE, common).rounds
    t0 = time.perf_counter()
    dpo_run, gpo_run, rm = args.out / "dpo", args.out / "gpo", args.out / "gpm"
    arms = {"dpo": ["select.strategy=best_worst", "select.k=1", "train.loss=dpo"]}
    with Pipeline(load_config(DEMO_RECIPE, [*common, *arms["dpo"], f"out={dpo_run}"]), progress=False) as pipe:
        pipe.run()
    if not (rm / "gpm.json").exists():
        pairs = rm_pairs(dpo_run)
        train_reward_model(pairs, rm, head="gpm", gpm=GPMHead(value_head_dim=4, tau=0.1),
                           epochs=1 if args.quick else args.rm_epochs, seed=args.seed)
    arms["gpo"] = [f"score.reward={rm}", "score.aggregate=mean_logit", "select.strategy=best_worst", "select.k=1",
                   "train.loss=gpo", f"train.hparams.beta={args.gpo_beta}", "train.reference=round_start"]
    copy_shared(dpo_run, gpo_run)
    with Pipeline(load_config(DEMO_RECIPE, [*common, *arms["gpo"], f"out={gpo_run}"]), progress=False) as pipe:
        pipe.run()
    builtin, gpm = BuiltinReward(), load_reward(str(rm))
    bootstrap = load_config(DEMO_RECIPE, common).eval.bootstrap
    results = {arm: judge(args.out / arm, rounds, builtin, gpm, bootstrap) for arm in arms}
    info = {"arms": arms, "common": common, "rm_pairs": len(rm_pairs(dpo_run)), "quick": args.quick,
            "seconds": round(time.perf_counter() - t0, 1)}
    (args.out / "results.json").write_text(json.dumps({"info": info, "results": results}, indent=1) + "\n")
    lines = [f"GPO + GPM vs DPO + built-in reward, demo task, seed {args.seed}, after {rounds} round(s)"
             f"{' (quick sizes)' if args.quick else ''}; GPM trained on {info['rm_pairs']} round-0 pairs\n",
             "| arm | built-in reward (initial) | win rate vs initial, built-in [95% CI] | win rate vs initial, GPM [95% CI] |",
             "|---|---|---|---|"]
    for arm, r in results.items():
        lines.append(f"| {arm} | {r['builtin_reward']:.3f} ({r['baseline_builtin_reward']:.3f}) | "
                     f"{r['builtin_win_rate']:.3f} [{r['builtin_win_rate_ci'][0]:.3f}, {r['builtin_win_rate_ci'][1]:.3f}] | "
                     f"{r['gpm_win_rate']:.3f} [{r['gpm_win_rate_ci'][0]:.3f}, {r['gpm_win_rate_ci'][1]:.3f}] |")
    (args.out / "gpo_gpm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\n{info['seconds']} s; {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
