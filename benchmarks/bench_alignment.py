"""Does active selection beat best-vs-worst? AMPO arms against pairwise baselines, on the demo task
(`--task demo`, the default; below) or on IFEval (`--task ifeval`: see alignment_ifeval.py).

Every arm starts from the same round-0 pool of the same seed (generation, rewards, embeddings and
the initial policy's held-out samples are made once per seed and copied into each arm's run
folder, where the pipeline finds them up to date), then selects, trains one round with the same
number of optimizer steps (one group per prompt, same prompts per step) and is evaluated on the
same held-out prompts.

    python benchmarks/bench_alignment.py              # full: 3 seeds, ~1 h on 2 CPU cores
    python benchmarks/bench_alignment.py --quick      # smoke run, a few minutes
    python benchmarks/bench_alignment.py --task ifeval --estimate         # the IFEval benchmark's cost
    python benchmarks/bench_alignment.py --task ifeval --jobs 2           # run it (resumable), hours
    python benchmarks/bench_alignment.py --task ifeval --quick --jobs 2   # every arm at toy size

Writes `results.json`, `alignment.md` (with `pool_analysis.py`'s statistics of the round-0 pools)
and `alignment.png` into --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pool_analysis
from seed_run import copy_stages

from ampo.cli import DEMO_RECIPE
from ampo.config import load_config
from ampo.pipeline import Pipeline

ARMS = {
    "ampo+coreset": ["select.strategy=coreset", "train.loss=ampo"],
    "ampo+optselect": ["select.strategy=optselect", "train.loss=ampo"],
    "ampo+bottomk": ["select.strategy=bottomk", "train.loss=ampo"],
    "ampo+random": ["select.strategy=random", "train.loss=ampo"],
    # the same selectors on the policy's own hidden states, which see the reward better than MiniLM
    "ampo+coreset+policy-emb": ["select.strategy=coreset", "train.loss=ampo", "embed.embedder=policy"],
    "ampo+optselect+policy-emb": ["select.strategy=optselect", "train.loss=ampo", "embed.embedder=policy"],
    "simpo best-vs-worst": ["select.strategy=best_worst", "select.k=1", "train.loss=simpo"],
    "dpo best-vs-worst": ["select.strategy=best_worst", "select.k=1", "train.loss=dpo"],
}
SHARED = ("split.json", "baseline", "round-0/pool.parquet", "round-0/rewards.parquet", "round-0/embeddings.npy")
SHARED_STAGES = ("split", "baseline", "round-0/generate", "round-0/score", "round-0/embed")


def sizes(quick: bool) -> list[str]:
    if quick:
        return ["data.train_prompts=8", "data.heldout=8", "generate.n=6", "generate.max_new_tokens=24",
                "eval.samples_per_prompt=1", "eval.max_new_tokens=24", "train.prompts_per_step=4"]
    return ["data.train_prompts=64", "data.heldout=48", "generate.n=8", "generate.max_new_tokens=48",
            "eval.samples_per_prompt=2", "eval.max_new_tokens=48", "train.prompts_per_step=4"]


def run_arm(out: Path, base: Path, overrides: list[str]) -> dict:
    """Copy the seed's shared round-0 files into the arm's folder, then run the pipeline there."""
    if base.exists() and not out.exists():
        out.mkdir(parents=True)
        copy_stages(base, out, SHARED, SHARED_STAGES)
    config = load_config(DEMO_RECIPE, [*overrides, f"out={out}"])
    t0 = time.perf_counter()
    with Pipeline(config, progress=False) as pipe:  # releases the run folder's lock when done
        result = pipe.run()[0]
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=["demo", "ifeval"], default="demo")
    ap.add_argument("--out", default=None, help="default: runs/bench_alignment[_ifeval]")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--quick", action="store_true", help="toy sizes: a smoke run of every arm")
    ap.add_argument("--arms", nargs="+", default=None,
                    help="run only these arms (the first run of a seed also makes its shared round-0 pool)")
    ifeval = ap.add_argument_group("--task ifeval")
    ifeval.add_argument("--jobs", type=int, default=1, help="units (seeds, the initial policy) run at once, "
                        "each a single-threaded process (OMP_NUM_THREADS=1)")
    ifeval.add_argument("--estimate", action="store_true", help="print the cost estimate per part and exit")
    ifeval.add_argument("--report", action="store_true", help="write alignment.md / results.json from what is "
                        "finished in --out (missing arms and seeds are named) and exit; runs nothing")
    ifeval.add_argument("--rates-from", help="with --estimate: take the per-unit costs from this finished "
                        "(small) run's results.json instead of the built-in RATES")
    ifeval.add_argument("--train-prompts", type=int, help="training prompts per seed (default 64; quick 4)")
    ifeval.add_argument("--n", type=int, help="samples per prompt (default 16; quick 4)")
    ifeval.add_argument("--k", type=int, help="negatives per group for the group arms (default 7; quick 2)")
    ifeval.add_argument("--gen-tokens", type=int, help="max new tokens of the pool samples (default 128)")
    ifeval.add_argument("--eval-tokens", type=int, help="max new tokens of the greedy benchmark answers (default 128: the pools' length; see docs/benchmarks.md)")
    ifeval.add_argument("--limit", type=int, help="benchmark prompts per benchmark, a fixed subset (default 0 = "
                        "all 541 + 300; quick 3)")
    ifeval.add_argument("--rounds", type=int, default=1, choices=[1, 2], help="2: a second round per arm, "
                        "on its own pool")
    ifeval.add_argument("--archive", help="also copy every finished unit's results (answers, scores, manifest, "
                        "selection; each seed's pool once) into this folder, meant to be committed; units found "
                        "there are not run again, and `--report --out ARCHIVE` reports from it alone")
    ifeval.add_argument("--unit", help=argparse.SUPPRESS)  # one unit of work, as --jobs starts it
    args = ap.parse_args()
    args.out = args.out or ("runs/bench_alignment_ifeval" if args.task == "ifeval" else "runs/bench_alignment")
    for name in ("jobs", "train_prompts", "n", "k", "gen_tokens", "eval_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.limit is not None and args.limit < 0:
        ap.error(f"--limit must be >= 0, got {args.limit}")
    return args


def main() -> None:
    args = parse_args()
    if args.task == "ifeval":
        import alignment_ifeval

        alignment_ifeval.main(args)
        return
    unknown = set(args.arms or []) - set(ARMS)
    if unknown:
        raise SystemExit(f"bench_alignment: unknown demo arm(s) {sorted(unknown)}; known: {list(ARMS)}")
    args.arms = args.arms or list(ARMS)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    out = Path(args.out)
    common = ["rounds=1", *sizes(args.quick)]
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS if arm in args.arms}
    for seed in seeds:
        base = out / f"seed{seed}" / "ampo+optselect"
        for arm in sorted(results, key=lambda name: name != "ampo+optselect"):
            overrides = ARMS[arm]
            folder = out / f"seed{seed}" / arm.replace(" ", "_")
            r = run_arm(folder, base, [*common, f"seed={seed}", *overrides])
            results[arm].append(r)
            print(f"seed {seed} {arm:22s} reward {r['mean_reward']:+.4f} (initial {r['baseline_mean_reward']:+.4f}) "
                  f"win {r['win_rate']:.3f} [{r['win_rate_ci'][0]:.3f}, {r['win_rate_ci'][1]:.3f}] "
                  f"len {r['mean_length']:.1f} d2 {r['distinct_2']:.3f} ({r['seconds']} s)", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_table(out, results, seeds, common)
    pools = {f"seed{s}": pool_analysis.analyse(pool_analysis.load_seed(out / f"seed{s}")) for s in seeds}
    (out / "pool_analysis.json").write_text(json.dumps(pools, indent=2))
    with open(out / "alignment.md", "a") as f:
        f.write("\n" + pool_analysis.table(pools) + "\n")
    print(pool_analysis.table(pools))


def write_table(out: Path, results: dict[str, list[dict]], seeds: list[int], common: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def ms(values):
        v = np.asarray(values, dtype=float)
        return f"{v.mean():+.4f} ± {v.std(ddof=1):.4f}" if len(v) > 1 else f"{v.mean():+.4f} (one seed)"

    def gains(arm):
        return np.array([r["mean_reward"] - r["baseline_mean_reward"] for r in results[arm]])

    def paired(arm, baseline):
        if baseline not in results:
            return "–"
        d = gains(arm) - gains(baseline)
        return f"{d.mean():+.3f} ({', '.join(f'{x:+.3f}' for x in d)})"

    lines = [f"Seeds {seeds}; settings: demo recipe + `{' '.join(common)}`.", "",
             "| arm | held-out reward gain (mean ± sd over seeds) | gain − SimPO b-v-w, per seed | "
             "gain − DPO b-v-w, per seed | win rate vs initial | mean length | distinct-2 | embedding diversity |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, rs in results.items():
        wr = [r["win_rate"] for r in rs]
        lines.append(f"| {arm} | {ms(gains(arm))} | {paired(arm, 'simpo best-vs-worst')} | "
                     f"{paired(arm, 'dpo best-vs-worst')} | {np.mean(wr):.3f} (CIs: "
                     + ", ".join(f"[{r['win_rate_ci'][0]:.2f}, {r['win_rate_ci'][1]:.2f}]" for r in rs)
                     + f") | {np.mean([r['mean_length'] for r in rs]):.1f} | {np.mean([r['distinct_2'] for r in rs]):.3f} | "
                     + f"{np.mean([r['embedding_diversity'] or 0 for r in rs]):.3f} |")
    (out / "alignment.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for i, arm in enumerate(results):
        g = gains(arm)
        for seed, value in zip(seeds, g):
            ax.scatter(i, value, color=f"C{seed % 10}", label=f"seed {seed}" if i == 0 else None)
        ax.errorbar(i, g.mean(), yerr=g.std(), fmt="_", color="k", capsize=6)
    ax.legend(fontsize=7)
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(results)), list(results), rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("held-out reward gain")
    fig.savefig(out / "alignment.png", dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()
