"""The run report: `report.md` with plots of reward and win rate per round, loss curves, and
selection maps (each prompt's pool projected to 2-D, coloured by reward, selection marked)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import atomic_path

# What the report writes (benchmarks.png only with `eval.benchmarks`); report.md first
REPORT_FILES = ("report.md", "rounds.png", "loss.png", "selection_map.png", "benchmarks.png")


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_rounds(evals: list[dict], path: Path) -> None:
    """Held-out mean reward and win rate (with CI) per round; round 0 on the x axis is 'initial'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(evals) + 1)
    rewards = [evals[0]["baseline_mean_reward"]] + [e["mean_reward"] for e in evals]
    wr = [0.5] + [e["win_rate"] for e in evals]
    lo = [0.5] + [e["win_rate_ci"][0] for e in evals]
    hi = [0.5] + [e["win_rate_ci"][1] for e in evals]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(x, rewards, "o-")
    a.set(xlabel="after round (0 = initial policy)", ylabel="held-out mean reward", xticks=x)
    b.plot(x, wr, "o-", color="C1")
    b.fill_between(x, lo, hi, color="C1", alpha=0.25)
    b.axhline(0.5, color="grey", lw=0.8, ls="--")
    b.set(xlabel="after round", ylabel="win rate vs initial", xticks=x, ylim=(0, 1))
    _save(fig, path)
    plt.close(fig)


def plot_benchmarks(evals: list[dict], path: Path) -> None:
    """Each benchmark's average of prompt- and instruction-level strict accuracy per round, with
    its 95% bootstrap interval; round 0 on the x axis is the initial policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(evals[0]["benchmarks"])
    x = np.arange(len(evals) + 1)
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        runs = [evals[0]["benchmarks"][name]["initial"]] + [e["benchmarks"][name] for e in evals]
        y = [100 * m["avg_prompt_inst_strict_acc"] for m in runs]
        lo, hi = ([100 * m["avg_prompt_inst_strict_acc_ci"][j] for m in runs] for j in (0, 1))
        ax.plot(x, y, "o-", color="C2")
        ax.fill_between(x, lo, hi, color="C2", alpha=0.25)
        ax.set(xlabel="after round (0 = initial policy)", ylabel=f"{name}: avg prompt/inst strict (%)", xticks=x)
    _save(fig, path)
    plt.close(fig)


def benchmark_lines(evals: list[dict]) -> list[str]:
    """report.md's benchmark table: one row per round and benchmark."""
    lines = ["| after round | benchmark | avg prompt/inst strict [95% CI] | prompt strict | inst strict | "
             "prompt loose | inst loose | prompts |", "|---|---|---|---|---|---|---|---|"]
    for name in evals[0]["benchmarks"]:
        runs = [("initial", evals[0]["benchmarks"][name]["initial"])] + [(e["round"], e["benchmarks"][name])
                                                                          for e in evals]
        for label, m in runs:
            lo, hi = m["avg_prompt_inst_strict_acc_ci"]
            lines.append(f"| {label} | {name} | {100 * m['avg_prompt_inst_strict_acc']:.1f} [{100 * lo:.1f}, "
                         f"{100 * hi:.1f}] | {100 * m['prompt_level_strict_acc']:.1f} | "
                         f"{100 * m['inst_level_strict_acc']:.1f} | {100 * m['prompt_level_loose_acc']:.1f} | "
                         f"{100 * m['inst_level_loose_acc']:.1f} | {m['n_prompts']} |")
    return lines


def plot_losses(logs: list[list[dict]], path: Path) -> None:
    """Training loss and reward accuracy per step, one line per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for r, history in enumerate(logs):
        steps = [h for h in history if "loss" in h and "step" in h]
        a.plot([h["step"] for h in steps], [h["loss"] for h in steps], label=f"round {r}")
        if steps and "reward_accuracy" in steps[0]:
            b.plot([h["step"] for h in steps], [h["reward_accuracy"] for h in steps], label=f"round {r}")
    a.set(xlabel="step", ylabel="loss")
    b.set(xlabel="step", ylabel="reward accuracy", ylim=(0, 1.05))
    a.legend()
    _save(fig, path)
    plt.close(fig)


def plot_selection_map(pool, path: Path, n_prompts: int = 4) -> None:
    """Each prompt's pool in 2-D (PCA of its embeddings), coloured by reward; the positive is a
    star, the selected negatives are circled (the AMPO paper's selection figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [rec for rec in pool if rec.selected][:n_prompts]  # a prompt dropped by select.min_margin has none
    fig, axes = plt.subplots(1, len(recs), figsize=(3.2 * len(recs), 3.2), squeeze=False)
    for ax, rec in zip(axes[0], recs):
        e = rec.embeddings - rec.embeddings.mean(axis=0)
        _, _, vt = np.linalg.svd(e, full_matrices=False)
        xy = e @ vt[:2].T
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=rec.rewards, cmap="coolwarm_r", s=40)
        pos, *negs = rec.selected
        ax.scatter(xy[pos, 0], xy[pos, 1], marker="*", s=260, facecolor="none", edgecolor="k", label="positive")
        ax.scatter(xy[negs, 0], xy[negs, 1], s=160, facecolor="none", edgecolor="k", label="negatives")
        ax.set_title(str(rec.id), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(sc, ax=ax, shrink=0.7, label="reward")
    axes[0][0].legend(loc="lower left", fontsize=7)
    _save(fig, path)
    plt.close(fig)


def write_report(out: Path, c, evals: list[dict], logs: list[list[dict]], pool: list) -> Path:
    """Write `report.md` and its plots into the run folder `out`; return the report's path.

    `c` is the run's `RunConfig`, `evals` each round's `eval.json`, `logs` each round's training
    log (`train_log.json`, [] when missing), `pool` round 0's pool records with rewards,
    embeddings and selection (for the selection map).
    """
    out = Path(out)
    plot_rounds(evals, out / "rounds.png")
    plot_losses(logs, out / "loss.png")
    plot_selection_map(pool, out / "selection_map.png")
    lines = [
        f"# ampo run: `{out}`",
        "",
        f"Policy `{c.model.policy}` ({'LoRA r=%d' % c.model.lora_r if c.model.lora else 'full fine-tune'}), "
        f"loss `{c.train.loss}`, selection `{c.select.strategy}` (k={c.select.k} of n={c.generate.n}), "
        f"reward `{c.score.reward}`, embedder `{c.embed.embedder}`, {c.rounds} round(s), seed {c.seed}.",
        "",
        "| after round | held-out reward | win rate vs initial [95% CI] | mean length (tokens) | distinct-2 | drift |",
        "|---|---|---|---|---|---|",
        f"| initial | {evals[0]['baseline_mean_reward']:.4f} | 0.500 | {evals[0]['baseline_mean_length']:.1f} | | 0 |",
    ]
    for e in evals:
        lo, hi = e["win_rate_ci"]
        lines.append(f"| {e['round']} | {e['mean_reward']:.4f} | {e['win_rate']:.3f} [{lo:.3f}, {hi:.3f}] | "
                     f"{e['mean_length']:.1f} | {e['distinct_2']:.3f} | {e['drift']:.3f} |")
    lines += [
        "",
        f"Held-out prompts: {evals[0]['n_prompts']}, {c.eval.samples_per_prompt} sample(s) each. Win rate: "
        "the reward function judges each sample against the initial policy's sample of the same prompt and "
        "seed (ties half); the interval is a bootstrap over prompts. Drift: the initial policy's per-token "
        "log-prob of its own samples minus that of the new samples (nats/token).",
        "",
        "![reward and win rate per round](rounds.png)",
        "",
        "![training loss](loss.png)",
        "",
        "![selection map, round 0](selection_map.png)",
        "",
    ]
    if not evals[0].get("benchmarks"):
        (out / "benchmarks.png").unlink(missing_ok=True)  # a previous config's plot
    else:
        plot_benchmarks(evals, out / "benchmarks.png")
        lines += ["## Benchmarks", "", *benchmark_lines(evals), "",
                  f"Greedy decoding, at most {c.eval.benchmark_max_new_tokens} new tokens"
                  + (f", a fixed subset of {c.eval.benchmark_limit} prompts (seed {c.seed})" if c.eval.benchmark_limit
                     else "") + "; accuracies in %, interval: bootstrap over prompts (docs/ifeval.md).", "",
                  "![benchmarks per round](benchmarks.png)", ""]
    path = out / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
    return path


def write_run_report(folder: Path, c) -> Path:
    """`write_report` for the run folder `folder` of config `c`, from what the folder holds: each
    round's `eval.json` and `train_log.json`, and round 0's scored pool and selection."""
    import json

    from .round_files import read_scored_pool

    rounds = [folder / f"round-{r}" for r in range(c.rounds)]
    evals = [json.loads((d / "eval.json").read_text()) for d in rounds]
    logs = [json.loads((d / "train_log.json").read_text()) if (d / "train_log.json").exists() else [] for d in rounds]
    return write_report(folder, c, evals, logs, read_scored_pool(rounds[0]))
