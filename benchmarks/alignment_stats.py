"""Statistics of the IFEval alignment benchmark (`bench_alignment.py --task ifeval`): pure functions
on per-prompt benchmark results and on round-0 pools, tested on synthetic data
(tests/test_alignment_stats.py).

- Benchmark figures: the IFEval average (prompt- and instruction-level strict accuracy, averaged)
  and the four accuracies per arm and seed; mean and sd over seeds.
- Paired comparisons of two arms on the same prompts: the difference of the averages, a paired
  bootstrap over prompts (the same resampled prompts for both arms) with its 95% interval, per seed
  and pooled over seeds; the sign count of the per-seed differences.
- Answers: mean length in new tokens and the share that ended within the token budget (from the
  evaluation's metrics), so that a score change can be read against a length change; the share of
  looping answers (the `ifeval` reward's repetition term at full weight); and how far
  an arm's greedy answers moved from the initial policy's (identical answers, common prefix kept),
  so that it can be read against how much the policy changed at all; and a few answers side by
  side, on prompts picked by a fixed rule.
- Pool statistics: failure modes (the distinct sets of unfollowed instructions among a pool's
  responses), whether an embedding separates them (nearest-neighbour agreement against chance),
  how many of them each selector's negatives cover, and the overlap between selectors' negatives.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Mapping, Sequence

import numpy as np

FIGURES = ("avg_prompt_inst_strict_acc", "prompt_level_strict_acc", "inst_level_strict_acc",
           "prompt_level_loose_acc", "inst_level_loose_acc")
ANSWERS = ("mean_new_tokens", "finished_rate")  # the evaluation's length figures, for `answer_table`
DRIFT = ("identical_to_initial", "prefix_kept")  # from `drift`, for `answer_table`
LOOPS = ("looping", "average_looping", "average_fluent")  # from `looping_statistics`, for `looping_table`
GAMING = ("passing", "passing_looping", "passing_filler", "gaming_share")  # from `gaming_statistics`
FILLER_WORDS = 5  # an answer of fewer words is filler: it can pass a format check while saying nothing
SHORT_WORDS = 20  # an answer of fewer words is short: too short for most IFEval tasks (an essay, a poem)


# ------------------------------------------------------------------ benchmark figures


def prompt_counts(rows: Sequence[Mapping], mode: str = "strict") -> dict:
    """Per prompt of a `results.jsonl` (rows with `key` and `follow_instruction_list_<mode>`):
    key -> (all followed, # followed, # scored). Unscored (None) instructions are left out and a
    prompt with none scored is dropped, as `ampo.ifeval.scoring.aggregate` does."""
    out = {}
    for row in rows:
        flags = [f for f in row[f"follow_instruction_list_{mode}"] if f is not None]
        if flags:
            out[row["key"]] = (float(all(flags)), float(sum(flags)), float(len(flags)))
    return out


def average(counts: np.ndarray) -> float:
    """(prompt-level + instruction-level accuracy) / 2 of an array of (all_ok, followed, scored) rows."""
    return float((counts[:, 0].mean() + counts[:, 1].sum() / counts[:, 2].sum()) / 2)


def _aligned(a: Mapping, b: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """The two arms' count rows on the prompts both have, in one order."""
    keys = sorted(a.keys() & b.keys(), key=str)
    if not keys:
        raise ValueError("the two arms share no scored prompt")
    return np.array([a[k] for k in keys]), np.array([b[k] for k in keys])


def _boot_average(counts: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The average for each bootstrap row of prompt indices `idx` [B, n]."""
    c = counts[idx]  # [B, n, 3]
    return (c[..., 0].mean(axis=1) + c[..., 1].sum(axis=1) / c[..., 2].sum(axis=1)) / 2


def paired_difference(a: Sequence[Mapping], b: Sequence[Mapping], n_boot: int = 2000, seed: int = 0) -> dict:
    """Average(a) - average(b) of two arms' prompt counts, one pair per seed (`a[s]`, `b[s]`: the
    `prompt_counts` of seed s), with a paired bootstrap over prompts: every bootstrap sample draws
    one set of prompts and uses it for both arms and every seed. Returns the per-seed differences
    with their 95% intervals and the mean over seeds with its interval (which reflects the prompt
    sample, not the seed spread; the sign count and the per-seed values show that)."""
    pairs, n = _seed_pairs(a, b)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    diffs = np.array([average(x) - average(y) for x, y in pairs])
    boots = np.stack([_boot_average(x, idx) - _boot_average(y, idx) for x, y in pairs])  # [seeds, B]

    def interval(values):
        return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]

    return {"per_seed": diffs.tolist(), "per_seed_ci": [interval(v) for v in boots],
            "mean": float(diffs.mean()), "mean_ci": interval(boots.mean(axis=0)),
            "signs": sign_count(diffs), "n_prompts": n, "n_boot": n_boot}


def _seed_pairs(a: Sequence[Mapping], b: Sequence[Mapping]) -> tuple[list, int]:
    """One aligned pair of per-prompt results per seed, and the prompt count they share."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need one pair of results per seed, got {len(a)} and {len(b)}")
    pairs = [_aligned(x, y) for x, y in zip(a, b)]
    n = len(pairs[0][0])
    if any(len(x) != n for x, _ in pairs):
        raise ValueError("the seeds' results cover different prompts")
    return pairs, n


def seed_and_prompt_interval(a: Sequence[Mapping], b: Sequence[Mapping], n_boot: int = 2000,
                             seed: int = 0) -> list[float]:
    """95% interval of the mean over seeds of average(a) - average(b) (inputs as
    `paired_difference`) from a two-level bootstrap: each sample draws the seeds with replacement
    and one set of prompts, shared by both arms and every seed drawn. Unlike `paired_difference`'s
    `mean_ci` it reflects the seed spread as well as the prompt sample (with 3 seeds, coarsely)."""
    pairs, n = _seed_pairs(a, b)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = np.stack([_boot_average(x, idx) - _boot_average(y, idx) for x, y in pairs])  # [seeds, B]
    drawn = rng.integers(0, len(pairs), size=(n_boot, len(pairs)))
    values = boots[drawn, np.arange(n_boot)[:, None]].mean(axis=1)
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def leave_out_instruction(rows: Sequence[Mapping], instruction: str) -> list[Mapping]:
    """The `results.jsonl` rows of the prompts that do not carry `instruction` (e.g.
    `punctuation:no_comma`, a constraint a looping answer keeps by accident)."""
    return [r for r in rows if instruction not in (r.get("instruction_id_list") or ())]


def sign_count(values: Iterable[float]) -> dict:
    """How many values are above, below and exactly at zero."""
    v = np.asarray(list(values), dtype=float)
    return {"positive": int((v > 0).sum()), "negative": int((v < 0).sum()), "zero": int((v == 0).sum())}


def over_seeds(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample sd (ddof=1; None with one seed)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


# ------------------------------------------------------------------ pool statistics


def failure_modes(strict_flags: Sequence[Sequence[bool]], instruction_ids: Sequence[str]) -> list[frozenset]:
    """Per response, the set of instructions it does not follow (strict); the empty set = all followed."""
    return [frozenset(i for i, ok in zip(instruction_ids, flags, strict=True) if not ok) for flags in strict_flags]


def distinct_failures(modes: Sequence[frozenset]) -> int:
    """How many distinct non-empty sets of unfollowed instructions a pool has."""
    return len({m for m in modes if m})


def nn_agreement(embeddings: np.ndarray, labels: Sequence) -> tuple[float, float] | None:
    """Share of responses whose nearest other response (cosine) has the same label, and the share
    expected by chance (for each response, the fraction of the others with its label). None for a
    pool with one response or one label (nothing to separate)."""
    labels = list(labels)
    n = len(labels)
    if n < 2 or len(set(labels)) < 2:
        return None
    e = np.asarray(embeddings, dtype=np.float64)
    unit = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    nearest = sim.argmax(axis=1)  # ties: the lower index
    same = np.array([[a == b for b in labels] for a in labels])
    agree = float(np.mean([same[i, nearest[i]] for i in range(n)]))
    chance = float(np.mean([(same[i].sum() - 1) / (n - 1) for i in range(n)]))
    return agree, chance


def modes_covered(modes: Sequence[frozenset], positive: int, negatives: Iterable[int]) -> float | None:
    """Share of the failure modes among the candidates (every response but the positive) that the
    negatives include at least one response of. None when the candidates have no failure."""
    candidate_modes = {m for i, m in enumerate(modes) if i != positive and m}
    if not candidate_modes:
        return None
    return len({modes[i] for i in negatives if modes[i]} & candidate_modes) / len(candidate_modes)


def jaccard(a: Iterable[int], b: Iterable[int]) -> float:
    """|a & b| / |a | b| (1.0 for two empty sets)."""
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def pool_statistics(pools: Sequence[Mapping], selections: Mapping[str, Sequence[Sequence[int]]],
                    embedders: Sequence[str]) -> dict:
    """Statistics of one seed's round-0 pools. Each pool: `rewards` [N], `modes` (`failure_modes`)
    and, per name in `embedders`, its embeddings [N, d] under that name. `selections`: selector ->
    one index list per pool (positive first, as `ampo.selection.select` returns)."""
    out: dict = {"pools": len(pools), "responses_per_pool": float(np.mean([len(p["rewards"]) for p in pools]))}
    distinct = [distinct_failures(p["modes"]) for p in pools]
    out["distinct_failure_modes_mean"] = float(np.mean(distinct))
    out["pools_with_2plus_failure_modes"] = float(np.mean([d >= 2 for d in distinct]))
    out["pools_all_responses_follow_all"] = float(np.mean([d == 0 for d in distinct]))
    out["reward_within_pool_sd"] = float(np.mean([np.std(p["rewards"]) for p in pools]))
    out["best_reward_mean"] = float(np.mean([np.max(p["rewards"]) for p in pools]))
    for name in embedders:
        found = [nn_agreement(p[name], p["modes"]) for p in pools]
        found = [f for f in found if f is not None]
        out[f"{name}_nn_same_mode"] = float(np.mean([f[0] for f in found])) if found else None
        out[f"{name}_nn_same_mode_chance"] = float(np.mean([f[1] for f in found])) if found else None
    out["selectors"] = {}
    for sel, picks in selections.items():
        covered = [modes_covered(p["modes"], s[0], s[1:]) for p, s in zip(pools, picks, strict=True)]
        covered = [c for c in covered if c is not None]
        out["selectors"][sel] = {
            "modes_covered": float(np.mean(covered)) if covered else None,
            "negative_reward_mean": float(np.mean([np.mean(np.asarray(p["rewards"])[list(s[1:])])
                                                   for p, s in zip(pools, picks) if len(s) > 1])),
        }
    out["jaccard"] = {f"{a}/{b}": float(np.mean([jaccard(x[1:], y[1:]) for x, y in zip(selections[a], selections[b])]))
                      for a, b in itertools.combinations(sorted(selections), 2)}
    return out


# ------------------------------------------------------------------ tables


def _fmt(mean: float, sd: float | None, scale: float = 100.0) -> str:
    return f"{scale * mean:.1f}" + (f" ± {scale * sd:.1f}" if sd is not None else " (1 seed)")


def arm_table(figures: Mapping[str, Sequence[Mapping]], initial: Mapping | None, benchmark: str) -> str:
    """Markdown: per arm, mean ± sd over seeds (in %) of the average and the four accuracies."""
    head = ["average (strict)", "prompt strict", "inst strict", "prompt loose", "inst loose"]
    lines = [f"| {benchmark}: arm | " + " | ".join(head) + " | seeds |", "|---|" + "---|" * (len(head) + 1)]
    if initial is not None:
        lines.append("| initial policy | " + " | ".join(f"{100 * initial[f]:.1f}" for f in FIGURES) + " | – |")
    for arm, metrics in figures.items():
        cells = [_fmt(*over_seeds([m[f] for m in metrics])) for f in FIGURES]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {len(metrics)} |")
    return "\n".join(lines)


def seed_table(figures: Mapping[str, Sequence[Mapping]], initial: Mapping | None, benchmark: str,
               seeds: Sequence[int]) -> str:
    """Markdown: per arm, the average (in %) of each seed (metrics carry `seed`; – where not finished)
    and its change from the initial policy's, so that the seed spread can be read arm by arm."""
    lines = [f"| {benchmark}: arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |",
             "|---|" + "---|" * (len(seeds) + 1)]
    if initial is not None:
        lines.append("| initial policy | " + " | ".join(f"{100 * initial[FIGURES[0]]:.1f}" for _ in seeds) + " | |")
    for arm, metrics in figures.items():
        by_seed = {m["seed"]: m[FIGURES[0]] for m in metrics}
        cells = []
        for seed in seeds:
            if seed not in by_seed:
                cells.append("–")
                continue
            change = f" ({100 * (by_seed[seed] - initial[FIGURES[0]]):+.1f})" if initial is not None else ""
            cells.append(f"{100 * by_seed[seed]:.1f}{change}")
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {_fmt(*over_seeds(list(by_seed.values())))} |")
    return "\n".join(lines)


def is_looping(text: str) -> bool:
    """Whether an answer loops: at least half of its word bigrams repeat earlier ones, where the
    `ifeval` reward's repetition term (`ampo.rewards.degeneracy_terms`) reaches its full weight."""
    from ampo.rewards import degeneracy_terms

    return degeneracy_terms(text, 0.0)["repetition"] >= 1.0


def looping_statistics(counts: Mapping, answers: Mapping[object, str]) -> dict:
    """The share of answers that loop (`is_looping`), and the average on them and on the others (None
    where there are none): whether the benchmark scores degenerate answers lower, and what breaking
    a loop costs or gains. `counts` are the scored prompts' (`prompt_counts`), keyed as `answers`."""
    loops = {key: is_looping(text) for key, text in answers.items()}
    out = {LOOPS[0]: float(np.mean(list(loops.values())))}
    for name, looping in zip(LOOPS[1:], (True, False)):
        rows = [c for key, c in counts.items() if loops[key] == looping]
        out[name] = average(np.array(rows)) if rows else None
    return out


def short_answers(answers: Mapping[object, str]) -> float:
    """The share of answers under SHORT_WORDS words: what the length figures (mean new tokens, ended
    share) do not show, whether answers shrink to a line."""
    return sum(len(t.split()) < SHORT_WORDS for t in answers.values()) / len(answers) if answers else 0.0


def gaming_statistics(counts: Mapping, answers: Mapping[object, str]) -> dict:
    """The checker-gaming audit: among the answers that follow every instruction (prompt-level
    strict; `counts` as `prompt_counts` gives them, keyed as `answers`), how many loop (`is_looping`),
    how many are filler (under FILLER_WORDS words), and the share that is either (an answer that is
    both counts once; 0 where none passes)."""
    passing = [answers[key] for key, c in counts.items() if c[0] == 1.0]
    looping = [is_looping(t) for t in passing]
    filler = [len(t.split()) < FILLER_WORDS for t in passing]
    either = sum(a or b for a, b in zip(looping, filler))
    return {"passing": len(passing), "passing_looping": sum(looping), "passing_filler": sum(filler),
            "gaming_share": either / len(passing) if passing else 0.0}


def drift(initial: Mapping[object, str], answers: Mapping[object, str]) -> dict:
    """How far an arm's answers moved from the initial policy's on the same prompts (keys of
    `initial`): the share that are identical, and the mean share of the initial answer's characters
    that the arm's answer repeats from its start (1 for an empty initial answer left empty)."""
    if set(initial) - set(answers):
        raise ValueError(f"answers lack {len(set(initial) - set(answers))} of the initial policy's prompts")
    identical, kept = [], []
    for key, before in initial.items():
        after = answers[key]
        common = next((i for i, (a, b) in enumerate(zip(before, after)) if a != b), min(len(before), len(after)))
        identical.append(after == before)
        kept.append(common / len(before) if before else float(after == before))
    return {"identical_to_initial": float(np.mean(identical)), "prefix_kept": float(np.mean(kept))}


def arm_ranks(figures: Mapping[str, Sequence[Mapping]]) -> dict | None:
    """Do the arms differ beyond the seed's effect? Among the arms that have finished two seeds or
    more (one that has finished one is left out rather than cutting every arm down to one seed), on
    the seeds all of them have finished (metrics carry `seed`): each arm's mean rank of the average
    (1 = best, ties averaged) and Friedman's test with the seeds as blocks; None below 2 such seeds
    or 3 arms."""
    from scipy.stats import friedmanchisquare, rankdata

    by_arm = {arm: {m["seed"]: m[FIGURES[0]] for m in metrics} for arm, metrics in figures.items()
              if len(metrics) >= 2}
    seeds = sorted(set.intersection(*(set(v) for v in by_arm.values()))) if by_arm else []
    if len(seeds) < 2 or len(by_arm) < 3:
        return None
    arms = list(by_arm)
    values = np.array([[by_arm[a][s] for a in arms] for s in seeds])  # [seeds, arms]
    ranks = np.array([rankdata(-row) for row in values])
    statistic, p = friedmanchisquare(*values.T)
    return {"seeds": seeds, "mean_rank": dict(zip(arms, ranks.mean(axis=0).tolist())),
            "friedman_chi2": float(statistic), "p_value": float(p)}


def drift_correlation(figures: Mapping[str, Sequence[Mapping]], initial: Mapping) -> dict | None:
    """Spearman's rank correlation, over every arm and seed with a drift figure, between the share of
    answers identical to the initial policy's and the change of the average; None below 3 points."""
    from scipy.stats import spearmanr

    points = [(m["identical_to_initial"], m[FIGURES[0]] - initial[FIGURES[0]])
              for metrics in figures.values() for m in metrics if "identical_to_initial" in m]
    if len(points) < 3:
        return None
    rho, p = spearmanr(*zip(*points))
    return {"spearman": float(rho), "p_value": float(p), "points": len(points)}


def answer_table(figures: Mapping[str, Sequence[Mapping]], initial: Mapping | None, benchmark: str) -> str:
    """Markdown: per arm, mean ± sd over seeds (in % where a share) of the answers' new tokens and
    ended share, from the evaluations' metrics (`mean_new_tokens`, `finished_rate`), the share of
    short answers (`short_answers`), and their drift from the initial policy's answers (`drift`; –
    where not computed)."""
    lines = [f"| {benchmark}: arm | new tokens per answer | ended within the budget (%) | under {SHORT_WORDS} "
             "words (%) | identical to the initial answer (%) | initial answer's prefix kept (%) | seeds |",
             "|---|---|---|---|---|---|---|"]
    if initial is not None:
        short = f"{100 * initial['short_answers']:.1f}" if "short_answers" in initial else "–"
        lines.append(f"| initial policy | {initial['mean_new_tokens']:.1f} | {100 * initial['finished_rate']:.1f} "
                     f"| {short} | 100 | 100 | – |")
    for arm, metrics in figures.items():
        tokens = _fmt(*over_seeds([m["mean_new_tokens"] for m in metrics]), scale=1.0)
        ended = _fmt(*over_seeds([m["finished_rate"] for m in metrics]))
        shares = [_fmt(*over_seeds([m[f] for m in metrics])) if all(f in m for m in metrics) else "–"
                  for f in ("short_answers", *DRIFT)]
        lines.append(f"| {arm} | {tokens} | {ended} | " + " | ".join(shares) + f" | {len(metrics)} |")
    return "\n".join(lines)


def looping_table(figures: Mapping[str, Sequence[Mapping]], initial: Mapping | None, benchmark: str) -> str:
    """Markdown: per arm, mean ± sd over seeds (in %) of the share of looping answers and of the
    average on them and on the others (`looping_statistics`; – where not computed or where an arm
    has no such answer)."""
    def cell(metrics, field):
        values = [m.get(field) for m in metrics]
        return "–" if None in values else _fmt(*over_seeds(values))

    lines = [f"| {benchmark}: arm | looping (%) | average (strict) on looping answers | on the other answers | seeds |",
             "|---|---|---|---|---|"]
    if initial is not None:
        cells = [f"{100 * initial[f]:.1f}" if initial.get(f) is not None else "–" for f in LOOPS]
        lines.append("| initial policy | " + " | ".join(cells) + " | – |")
    for arm, metrics in figures.items():
        cells = [cell(metrics, f) for f in LOOPS]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {len(metrics)} |")
    return "\n".join(lines)


def gaming_table(figures: Mapping[str, Sequence[Mapping]], initial: Mapping | None, benchmark: str) -> str:
    """Markdown: per arm, mean ± sd over seeds of the gaming audit (`gaming_statistics`): answers that
    follow every instruction, how many of them loop or are filler, and the share that is either (%)."""
    lines = [f"| {benchmark}: arm | answers following every instruction | of them looping | filler (under "
             f"{FILLER_WORDS} words) | looping or filler (%) | seeds |", "|---|---|---|---|---|---|"]
    if initial is not None and "passing" in initial:
        lines.append(f"| initial policy | {initial['passing']} | {initial['passing_looping']} | "
                     f"{initial['passing_filler']} | {100 * initial['gaming_share']:.1f} | – |")
    for arm, metrics in figures.items():
        if not all("passing" in m for m in metrics):
            continue
        cells = [_fmt(*over_seeds([m[f] for m in metrics]), scale=1.0) for f in GAMING[:3]]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {_fmt(*over_seeds([m['gaming_share'] for m in metrics]))}"
                     f" | {len(metrics)} |")
    return "\n".join(lines)


def side_by_side(prompts: Mapping[object, str], answers: Mapping[str, Mapping[object, str]],
                 counts: Mapping[str, Mapping], shown: int = 3, width: int = 300) -> str:
    """Markdown: answers read side by side where the score moves, on prompts chosen by a rule fixed
    in advance rather than for the story: the first `shown` prompts in key order on which the
    policies follow different numbers of instructions (strict, `counts` from `prompt_counts`). Per
    prompt, each policy's answer cut to `width` characters (line breaks as ⏎) and its count."""
    names = list(answers)
    keys = [k for k in sorted(prompts)
            if all(k in answers[n] and k in counts[n] for n in names)
            and len({counts[n][k][1] for n in names}) > 1][:shown]

    def cell(text: str) -> str:
        cut = text[:width] + (" …" if len(text) > width else "")
        return cut.replace("|", "\\|").replace("\n", " ⏎ ")

    blocks = []
    for key in keys:
        lines = [f"Prompt {key}: {cell(prompts[key])}\n", "| policy | instructions followed | answer |",
                 "|---|---|---|"]
        for name in names:
            followed, scored = counts[name][key][1:]
            lines.append(f"| {name} | {followed:.0f} of {scored:.0f} | {cell(answers[name][key])} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def summary_table(benchmarks: Mapping[str, Mapping], baselines: Sequence[str]) -> str:
    """Markdown: the decision in one table. Per arm and benchmark (`results.json`'s `benchmarks`:
    `initial`, `arms`, `differences`), the average's mean ± sd over seeds and the paired difference
    of the mean over seeds against each baseline, with its 95% interval and the sign count across
    seeds (+/−/0)."""
    names = list(benchmarks)
    head = [f"{b}: {col}" for b in names for col in ["average", *(f"− {base}" for base in baselines)]]
    lines = ["| arm | seeds | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
    initial = [benchmarks[b]["initial"] for b in names]
    if all(initial):
        lines.append("| initial policy | – | " + " | ".join(
            " | ".join([f"{100 * i[FIGURES[0]]:.1f}"] + [""] * len(baselines)) for i in initial) + " |")
    for arm, metrics in benchmarks[names[0]]["arms"].items():
        cells = []
        for b in names:
            found = benchmarks[b]["arms"].get(arm)
            cells.append(_fmt(*over_seeds([m[FIGURES[0]] for m in found])) if found else "–")
            for base in baselines:
                d = benchmarks[b]["differences"].get(base, {}).get(arm)
                cells.append("" if d is None else f"{_mean_interval(d)} {_signs(d)}")
        lines.append(f"| {arm} | {len(metrics)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_interval(d: Mapping) -> str:
    """A paired difference's mean over seeds with its 95% interval, in points."""
    low, high = (100 * v for v in d["mean_ci"])
    return f"{100 * d['mean']:+.1f} [{low:+.1f}, {high:+.1f}]"


def _signs(d: Mapping) -> str:
    """A paired difference's sign count over seeds, +/−/0."""
    return "/".join(str(d["signs"][k]) for k in ("positive", "negative", "zero"))


def _difference_cells(d: Mapping) -> str:
    """A paired difference's table cells (points): per seed with its interval, the mean over seeds
    with its interval, the signs."""
    seeds = ", ".join(f"{100 * v:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
                      for v, (lo, hi) in zip(d["per_seed"], d["per_seed_ci"]))
    return f"{seeds} | {_mean_interval(d)} | {_signs(d)}"


def difference_table(diffs: Mapping[str, Mapping], against: str, benchmark: str) -> str:
    """Markdown: per arm, the paired difference of the average against `against` (percentage points)."""
    lines = [f"| {benchmark}: arm − {against} | per seed [95% paired bootstrap] | mean over seeds [95%] | "
             "signs (+/−/0) |", "|---|---|---|---|"]
    lines += [f"| {arm} | {_difference_cells(d)} |" for arm, d in diffs.items()]
    return "\n".join(lines)


def seed_interval_table(diffs: Mapping[str, Mapping], against: str, benchmark: str) -> str:
    """Markdown: per arm, the mean paired difference against `against` with the interval over
    prompts and the one that also resamples seeds (`mean_ci_seeds`), in points."""
    lines = [f"| {benchmark}: arm − {against} | seeds | mean over seeds [95% over prompts] | "
             "[95% over seeds and prompts] |", "|---|---|---|---|"]
    for arm, d in diffs.items():
        lo, hi = (100 * v for v in d.get("mean_ci_seeds") or (float("nan"), float("nan")))
        lines.append(f"| {arm} | {len(d['per_seed'])} | {_mean_interval(d)} | [{lo:+.1f}, {hi:+.1f}] |")
    return "\n".join(lines)


def contrast_table(contrasts: Sequence[Mapping], benchmark: str) -> str:
    """Markdown: one row per contrast (`arm`, `against`, what it `measures`, and its paired
    difference), for comparisons that are not against one common baseline."""
    lines = [f"| {benchmark}: contrast | what it measures | per seed [95% paired bootstrap] | mean over seeds "
             "[95%] | signs (+/−/0) |", "|---|---|---|---|---|"]
    lines += [f"| {c['arm']} − {c['against']} | {c['measures']} | {_difference_cells(c)} |" for c in contrasts]
    return "\n".join(lines)


def pool_table(stats: Mapping[str, Mapping]) -> str:
    """Markdown: the pool statistics, one column per seed; a statistic a seed does not have yet (an
    embedder or selector whose arm has not run there) shows as –."""
    seeds = list(stats)

    def union(get):
        return list(dict.fromkeys(k for r in stats.values() for k in get(r)))

    def row(label, get):
        cells = []
        for s in seeds:
            try:
                v = get(stats[s])
            except KeyError:
                v = None
            cells.append("–" if v is None else f"{v:.3f}")
        return f"| {label} | " + " | ".join(cells) + " |"

    lines = ["| pool statistic (round 0) | " + " | ".join(seeds) + " |", "|---|" + "---|" * len(seeds),
             row("prompts", lambda r: r["pools"]),
             row("distinct failure modes per pool (sets of unfollowed instructions)",
                 lambda r: r["distinct_failure_modes_mean"]),
             row("share of pools with >= 2 failure modes", lambda r: r["pools_with_2plus_failure_modes"]),
             row("share of pools where every response follows every instruction",
                 lambda r: r["pools_all_responses_follow_all"]),
             row("within-pool reward sd", lambda r: r["reward_within_pool_sd"]),
             row("mean best reward", lambda r: r["best_reward_mean"])]
    for key in union(lambda r: r):
        if key.endswith("_nn_same_mode"):
            name = key[: -len("_nn_same_mode")]
            lines.append(row(f"{name} embedding: nearest neighbour has the same failure mode",
                             lambda r, k=key: r[k]))
            lines.append(row(f"{name} embedding: same, by chance", lambda r, k=key + "_chance": r[k]))
    for sel in union(lambda r: r["selectors"]):
        lines.append(row(f"{sel}: share of the pool's failure modes among its negatives",
                         lambda r, s=sel: r["selectors"][s]["modes_covered"]))
        lines.append(row(f"{sel}: mean reward of its negatives",
                         lambda r, s=sel: r["selectors"][s]["negative_reward_mean"]))
    for pair in union(lambda r: r["jaccard"]):
        lines.append(row(f"Jaccard overlap of negatives, {pair}", lambda r, p=pair: r["jaccard"][p]))
    return "\n".join(lines)
