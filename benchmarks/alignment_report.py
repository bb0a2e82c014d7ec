"""The IFEval alignment benchmark's report (`bench_alignment.py --task ifeval --report`, and at the
end of every run): reads what has finished under OUT (the layout of alignment_ifeval.py), computes
the statistics (alignment_stats.py) and writes OUT/results.json, OUT/alignment.md and
OUT/alignment.png. Runs nothing; a missing arm or seed is named, not guessed."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

import alignment_stats as stats
from alignment_ifeval import (BENCHMARKS, EMBEDDER_STAGES, POOL_FILES, POOL_STAGES, Sizes, archive_round0, arm_dir,
                              arm_order, embedder_of)

BASELINES = ("dpo best-vs-worst", "ampo+random")  # the paired differences are taken against these
# (arm, against, what their paired difference measures): the diagnostic arms' comparisons
CONTRASTS = (
    ("swepo+random", "ampo+random", "the loss: SWEPO against AMPO on the same selected responses"),
    ("swepo all", "swepo+random", "the set: all N responses against a positive and k random negatives, under SWEPO"),
    ("swepo+optselect", "swepo+random", "active selection under SWEPO: opt-select's k negatives against random ones"),
    ("ampo+optselect", "ampo+random", "active selection under AMPO: opt-select's k negatives against random ones"),
    ("ampo+coreset", "ampo+random", "active selection under AMPO: coreset's k negatives against random ones"),
    ("ampo+bottomk", "ampo+random", "active selection under AMPO: bottom-k's k negatives against random ones"),
)
SHOWN = ("dpo best-vs-worst", "grpo all", "ampo+optselect", "ampo+coreset", "ampo+random")  # answers side by side
# selector label in the pool statistics -> the arm whose round-0 selection it is (simpo best-vs-worst
# has the same selection as dpo best-vs-worst; `all` selects everything)
SELECTIONS = {"bottomk": "ampo+bottomk", "random": "ampo+random", "coreset/minilm": "ampo+coreset",
              "coreset/policy": "ampo+coreset+policy-emb", "optselect/minilm": "ampo+optselect",
              "optselect/policy": "ampo+optselect+policy-emb", "best_worst": "dpo best-vs-worst",
              "sweet_spot": "dpo sweet-spot"}


def read_metrics(folder: Path) -> tuple[dict, list[dict]] | None:
    if not ((folder / "done.json").is_file() and (folder / "metrics.json").is_file()):
        return None
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    return json.loads((folder / "metrics.json").read_text()), rows


def read_responses(folder: Path) -> tuple[dict, dict] | None:
    """An evaluation's greedy answers and its prompts, each by prompt key, or None where it kept none."""
    path = folder / "responses.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["key"]: r["response"] for r in rows}, {r["key"]: r["prompt"] for r in rows}


def read_answers(folder: Path) -> dict | None:
    """An evaluation's greedy answers by prompt key, or None where it kept none."""
    found = read_responses(folder)
    return found[0] if found else None


def with_answer_stats(metrics: dict, rows: list[dict], answers: dict | None, initial_answers: dict | None) -> dict:
    """The evaluation's metrics plus, where it kept its answers, their looping statistics and, given
    the initial policy's answers, their drift from them."""
    if answers is None:
        return metrics
    extra = {**stats.looping_statistics(stats.prompt_counts(rows), answers),
             **stats.gaming_statistics(stats.prompt_counts(rows), answers),
             "short_answers": stats.short_answers(answers)}
    if initial_answers is not None:
        extra.update(stats.drift(initial_answers, answers))
    return {**metrics, **extra}


def side_by_side(prompts: dict, initial_answers: dict, initial_counts: dict, answers: dict, counts: dict,
                 seed: int) -> list[str]:
    """The report's lines showing a few answers of the initial policy and of the `SHOWN` arms on
    `seed`, side by side (`stats.side_by_side`); none before one of those arms has finished there
    or where no score differs."""
    shown = [a for a in SHOWN if (answers.get(a) or {}).get(seed)]
    if not shown:
        return []
    table = stats.side_by_side(prompts, {"initial policy": initial_answers, **{a: answers[a][seed] for a in shown}},
                               {"initial policy": initial_counts, **{a: counts[a][seed] for a in shown}})
    if not table:
        return []
    return [f"Answers side by side (seed {seed}; the first prompts in key order on which the policies follow "
            "different numbers of instructions; answers cut to 300 characters):\n", table, ""]


def paired(counts: dict, arm: str, against: str, seeds, n_boot: int) -> dict | None:
    """`stats.paired_difference` of `arm` against `against` over the seeds both have finished, with
    those seeds; None when they share none."""
    common = [s for s in seeds if s in counts[arm] and s in counts[against]]
    if not common:
        return None
    d = stats.paired_difference([counts[arm][s] for s in common], [counts[against][s] for s in common], n_boot=n_boot)
    return {**d, "seeds": common}


def timings(out: Path, sizes: Sizes, arms: list[str]) -> dict:
    """Seconds per part, from the manifests' stage records and the evaluations' done.json; shared
    round-0 stages counted once per seed (in the arm that ran them)."""
    parts: dict[str, list[float]] = {}

    def add(part, seconds):
        parts.setdefault(part, []).append(seconds)

    for seed in sizes.seeds:
        seen = set()
        for arm in arm_order(arms):
            folder = arm_dir(out, seed, arm)
            if not (folder / "manifest.json").is_file():
                continue
            for stage, entry in json.loads((folder / "manifest.json").read_text())["stages"].items():
                if entry.get("status") != "done" or "seconds" not in entry:
                    continue
                if stage in POOL_STAGES + EMBEDDER_STAGES:
                    ident = (stage, entry["key"])
                    if ident in seen:
                        continue
                    seen.add(ident)
                part = stage.split("/")[-1]
                add(f"{part} ({embedder_of(arm)})" if part in ("embed", "baseline") else part, entry["seconds"])
            for name in BENCHMARKS:
                done = folder / "bench" / name / "done.json"
                if done.is_file():
                    add(f"benchmark {name} (arm)", json.loads(done.read_text())["seconds"])
    for name in BENCHMARKS:
        done = out / "initial" / name / "done.json"
        if done.is_file():
            add(f"benchmark {name} (initial)", json.loads(done.read_text())["seconds"])
    return {part: {"count": len(v), "total_s": round(sum(v), 1), "mean_s": round(sum(v) / len(v), 1)}
            for part, v in parts.items()}


def round0_folder(out: Path, seed: int, arms: list[str], embedder: str | None = None) -> Path | None:
    """A folder of `out` holding the seed's round-0 pool (given `embedder`, its embeddings under it):
    the first arm's that has it, or an archive's copy (`--out ARCHIVE`); None if none has."""
    names = ("round-0/embeddings.npy",) if embedder else POOL_FILES
    candidates = [arm_dir(out, seed, a) for a in arm_order(arms) if embedder in (None, embedder_of(a))]
    candidates += [archive_round0(out, seed, e) for e in ("minilm", "policy") if embedder in (None, e)]
    return next((f for f in candidates if all((f / name).is_file() for name in names)), None)


def pool_data(out: Path, seed: int, arms: list[str]) -> tuple[list[dict], dict, list[str]] | None:
    """One seed's round-0 pools with each response's failure mode (cached in the seed folder), the
    embeddings under each embedder, and the selectors' picks."""
    import pandas as pd

    from ampo.data import prompt_text, read_pool
    from ampo.ifeval.offline import registry
    from ampo.ifeval.scoring import follow_instructions

    source = round0_folder(out, seed, arms)
    if source is None:
        return None
    base = source / "round-0"
    pool, _ = read_pool(base / "pool.parquet")
    cache = out / f"seed{seed}" / "pool_failures.json"
    pool_key = json.loads((source / "manifest.json").read_text())["stages"]["round-0/generate"]["key"]
    cached = json.loads(cache.read_text()) if cache.is_file() else {}
    if cached.get("key") != pool_key:
        checks = registry("ifeval")
        flags = [[follow_instructions(checks, rec.meta["instruction_id_list"], rec.meta["kwargs"],
                                      prompt_text(rec.prompt), text)[0] for text in rec.responses] for rec in pool]
        cached = {"key": pool_key, "strict": flags}
        cache.write_text(json.dumps(cached))
    rewards = pd.read_parquet(base / "rewards.parquet")["rewards"].map(np.asarray).tolist()
    bounds = np.cumsum([0] + [len(r) for r in rewards])
    pools = [{"rewards": r, "modes": stats.failure_modes(f, rec.meta["instruction_id_list"])}
             for r, f, rec in zip(rewards, cached["strict"], pool)]
    embedders = []
    for emb_name in ("minilm", "policy"):
        folder = round0_folder(out, seed, arms, emb_name)
        if folder is not None:
            flat = np.load(folder / "round-0" / "embeddings.npy")
            for p, a, b in zip(pools, bounds[:-1], bounds[1:]):
                p[emb_name] = flat[a:b]
            embedders.append(emb_name)
    selections = {}
    for label, arm in SELECTIONS.items():
        path = arm_dir(out, seed, arm) / "round-0" / "selection.parquet"
        if arm in arms and path.is_file():
            selections[label] = [list(s) for s in pd.read_parquet(path)["selected"]]
    return pools, selections, embedders


def analyse(out: Path, sizes: Sizes, arms: list[str], n_boot: int = 2000, baselines=BASELINES,
            seed_intervals: bool = False, leave_out: str | None = None) -> dict:
    """Collect what is finished, compute the statistics, write results.json, alignment.md and
    alignment.png; missing arms or seeds are named, not guessed. The tuned study (issue 27) adds
    baselines, `seed_intervals` (an interval of each mean difference that also resamples seeds)
    and `leave_out` (the differences again without the prompts carrying that instruction)."""
    results: dict = {"sizes": asdict(sizes), "arms": arms, "benchmarks": {}, "missing": []}
    md = ["# Alignment benchmark on IFEval\n", f"Sizes: `{json.dumps(asdict(sizes))}`. Figures in %; mean ± sd over "
          "seeds; paired differences in percentage points with a paired bootstrap over prompts "
          f"({n_boot} samples).\n"]
    for name in BENCHMARKS:
        initial = read_metrics(out / "initial" / name)
        initial_answers, prompts = (initial and read_responses(out / "initial" / name)) or (None, None)
        if initial:
            initial = with_answer_stats(*initial, initial_answers, None), initial[1]
        figures, counts, answers, kept_counts = {}, {}, {}, {}
        for arm in arms:
            found = {s: read_metrics(arm_dir(out, s, arm) / "bench" / name) for s in sizes.seeds}
            results["missing"] += [f"seed{s}/{arm}/{name}" for s, v in found.items() if v is None]
            done = {s: v for s, v in found.items() if v is not None}
            if done:
                answers[arm] = {s: read_answers(arm_dir(out, s, arm) / "bench" / name) for s in done}
                figures[arm] = [{**with_answer_stats(m, rows, answers[arm][s], initial_answers), "seed": s}
                                for s, (m, rows) in done.items()]
                counts[arm] = {s: stats.prompt_counts(rows) for s, (_, rows) in done.items()}
                if leave_out:
                    kept_counts[arm] = {s: stats.prompt_counts(stats.leave_out_instruction(rows, leave_out))
                                        for s, (_, rows) in done.items()}
        kept = ("seed",) + stats.FIGURES + stats.ANSWERS + stats.LOOPS + stats.GAMING + ("short_answers",) + stats.DRIFT
        bench = {"initial": initial and {f: initial[0][f] for f in kept if f in initial[0]},
                 "arms": {arm: [{f: m[f] for f in kept if f in m} for m in ms] for arm, ms in figures.items()},
                 "differences": {}}
        md += [f"## {name}\n", stats.arm_table(figures, initial and initial[0], name), "",
               stats.seed_table(figures, initial and initial[0], name, sizes.seeds), "",
               stats.answer_table(figures, initial and initial[0], name), "",
               stats.looping_table(figures, initial and initial[0], name), "",
               "Gaming audit: the answers that follow every instruction (prompt-level strict), and how many "
               "of them loop or are filler, which can pass a format check while saying nothing:\n",
               stats.gaming_table(figures, initial and initial[0], name), ""]
        if initial_answers is not None:
            md += side_by_side(prompts, initial_answers, stats.prompt_counts(initial[1]),
                               answers, counts, sizes.seeds[0])
        bench["ranks"] = stats.arm_ranks(figures)
        if bench["ranks"]:
            r = bench["ranks"]
            ranked = sorted(r["mean_rank"].items(), key=lambda item: item[1])
            md += [f"Mean rank of the average over the {len(r['seeds'])} seeds that every arm with two seeds or more "
                   "has finished (1 = best): "
                   + ", ".join(f"{arm} {rank:.1f}" for arm, rank in ranked)
                   + f". Friedman test, seeds as blocks: χ² = {r['friedman_chi2']:.1f}, p = {r['p_value']:.3f} "
                   "(a small p says some arms rank consistently above others; with few seeds it has little power).\n"]
        bench["drift_correlation"] = initial and stats.drift_correlation(figures, initial[0])
        if bench["drift_correlation"]:
            c = bench["drift_correlation"]
            p_value = "p < 0.001" if c["p_value"] < 0.001 else f"p = {c['p_value']:.3f}"
            md += [f"Over {c['points']} arm-seeds, the share of answers identical to the initial policy's and "
                   f"the change of the average: Spearman ρ = {c['spearman']:+.2f} ({p_value}; an unchanged "
                   "answer cannot change the score, so more changed answers allow a larger change either way: "
                   "a positive ρ says the changes hurt on the whole, a negative one that they helped).\n"]
        for against in baselines:
            if against not in counts:
                continue
            diffs = {arm: paired(counts, arm, against, sizes.seeds, n_boot) for arm in counts if arm != against}
            bench["differences"][against] = {arm: d for arm, d in diffs.items() if d}
            md += [stats.difference_table(bench["differences"][against], against, name), ""]
            if seed_intervals:
                for arm, d in bench["differences"][against].items():
                    d["mean_ci_seeds"] = stats.seed_and_prompt_interval(
                        [counts[arm][s] for s in d["seeds"]], [counts[against][s] for s in d["seeds"]], n_boot)
                md += [stats.seed_interval_table(bench["differences"][against], against, name), ""]
            seed = next(iter(counts[against]))
            left = leave_out and len(counts[against][seed]) - len(kept_counts[against][seed])
            if left:  # (none on IFBench, whose instructions have other names)
                diffs = {arm: paired(kept_counts, arm, against, sizes.seeds, n_boot) for arm in kept_counts
                         if arm != against}
                bench.setdefault("differences_without", {})[against] = {arm: d for arm, d in diffs.items() if d}
                md += [f"Without the {left} prompts carrying `{leave_out}`:\n",
                       stats.difference_table(bench["differences_without"][against], against, name), ""]
        bench["contrasts"] = []
        for arm, against, meaning in CONTRASTS:
            d = arm in counts and against in counts and paired(counts, arm, against, sizes.seeds, n_boot)
            if d:
                bench["contrasts"].append({"arm": arm, "against": against, "measures": meaning, **d})
        if bench["contrasts"]:
            md += [stats.contrast_table(bench["contrasts"], name), ""]
        results["benchmarks"][name] = bench
    if results["benchmarks"][BENCHMARKS[0]]["arms"]:
        md[2:2] = ["## Summary\n", "Average (strict, %) mean ± sd over seeds; differences in points: the mean over "
                   "seeds of the paired differences [95% paired bootstrap over prompts] and the sign count over "
                   "seeds (+/−/0).\n", stats.summary_table(results["benchmarks"], baselines), ""]
    pools = {}
    for seed in sizes.seeds:
        data = pool_data(out, seed, arms)
        if data is not None:
            pools[f"seed{seed}"] = stats.pool_statistics(data[0], data[1], data[2])
    results["pools"] = pools
    if pools:
        md += ["## Round-0 pools\n", stats.pool_table(pools), ""]
    results["timings"] = timings(out, sizes, arms)
    md += ["## Time per part (seconds, as measured in this run)\n", "| part | count | total s | mean s |",
           "|---|---|---|---|"] + [f"| {k} | {v['count']} | {v['total_s']} | {v['mean_s']} |"
                                   for k, v in sorted(results["timings"].items())]
    if results["missing"]:
        md += ["", f"Not finished yet ({len(results['missing'])}): " + ", ".join(results["missing"])]
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "alignment.md").write_text("\n".join(md) + "\n")
    plot(out, results)
    return results


def plot(out: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(BENCHMARKS) + 1, figsize=(16, 3.6), sharey=False)
    for ax, name in zip(axes, BENCHMARKS):
        bench = results["benchmarks"][name]
        arms = list(bench["arms"])
        for i, arm in enumerate(arms):
            v = 100 * np.array([m["avg_prompt_inst_strict_acc"] for m in bench["arms"][arm]])
            ax.scatter([i] * len(v), v, s=14, color="C0")
            ax.errorbar(i, v.mean(), yerr=v.std(ddof=1) if len(v) > 1 else 0, fmt="_", color="k", capsize=5)
        if bench["initial"]:
            ax.axhline(100 * bench["initial"]["avg_prompt_inst_strict_acc"], color="grey", ls="--", lw=0.8,
                       label="initial policy")
            ax.legend(fontsize=7)
        ax.set_xticks(range(len(arms)), arms, rotation=35, ha="right", fontsize=7)
        ax.set_title(f"{name}: average prompt/inst strict (%)", fontsize=9)
    plot_drift(axes[-1], results["benchmarks"][BENCHMARKS[0]], BENCHMARKS[0])
    fig.savefig(out / "alignment.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_drift(ax, bench: dict, name: str) -> None:
    """One point per arm and seed: how many answers stayed identical to the initial policy's against
    the change of the average, coloured by loss and shaped by seed, so that a score change can be
    read against how far the policy moved."""
    from matplotlib.lines import Line2D

    initial = bench["initial"]
    if not initial:
        return
    colours = {"ampo": "C0", "dpo": "C1", "simpo": "C2", "swepo": "C3"}
    markers, seeds, losses = "osD^v", set(), {}
    for arm, metrics in bench["arms"].items():
        loss = arm.split("+")[0].split(" ")[0]
        colour = colours.get(loss, "C4")
        for m in metrics:
            if "identical_to_initial" in m:
                seeds.add(m["seed"])
                losses[loss] = colour
                ax.scatter(100 * m["identical_to_initial"], 100 * (m[stats.FIGURES[0]] - initial[stats.FIGURES[0]]),
                           s=16, color=colour, marker=markers[m["seed"] % len(markers)])
    if seeds:
        legend = [Line2D([], [], ls="", marker="o", color=c, label=loss) for loss, c in losses.items()]
        legend += [Line2D([], [], ls="", marker=markers[s % len(markers)], color="grey", label=f"seed {s}")
                   for s in sorted(seeds)]
        ax.legend(handles=legend, fontsize=7)
    ax.axhline(0, color="grey", ls="--", lw=0.8)
    ax.set_xlabel(f"{name} answers identical to the initial policy's (%)", fontsize=8)
    ax.set_ylabel("average − initial (points)", fontsize=8)
    ax.set_title(f"{name}: change against drift, one point per arm and seed", fontsize=9)
