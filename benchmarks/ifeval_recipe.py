"""Issue 28: the multi-round IFEval recipe on 3 seeds, and what it does to IFEval and IFBench.

Each seed runs the recipe (`src/ampo/recipes/ifeval.yaml` with the loss, selector and rates the
tuned study chose, recorded in `settings.json`; `--arm/--lr/--beta` for a pilot) one round at a time as an ordinary `ampo run` folder (resumable; each round trains on
a fresh window of the bundled training prompts, its reference at the round start, groups without
reward spread dropped, unfinished training answers scored as failures). After every round the
round's policy is measured greedily on the full IFEval (541 prompts) and IFBench (300) at 128 new
tokens, and the initial policy once, on this machine. Every finished unit's small files (answers,
scores, config, held-out eval and its samples, train log) go to the archive as it finishes, in the layout

    results/ifeval_recipe/initial/{ifeval,ifbench}/{responses,results}.jsonl, metrics.json
    results/ifeval_recipe/seed{S}/round-{R}/{ifeval,ifbench}/...   (+ eval.json, eval_samples.parquet, train_log.json)
    results/ifeval_recipe/seed{S}/config.yaml, results/ifeval_recipe/settings.json

(the recipe, variant `main`); the AMPO loss with its tuned settings (variant `ampo`, seed 0 only,
as the issue asks) in results/ifeval_recipe/ampo/ in the same layout; the main recipe run on to 6
rounds on seed 0 (variant `extended`, PLAN.md: a copy of the main run's folder once its 3 rounds are
archived, so only rounds 3-5 train) in results/ifeval_recipe/extended/. `--long` measures the
initial and each seed's final policy at the model card's 1280 new tokens on a seeded 128-prompt
subset of IFEval (results/ifeval_recipe/long/). `--report` writes results/ifeval_recipe/report.md
and recipe.png from the archive alone. Each `--run` uses `--jobs` cores; run the `ampo` variant
after the main one or give each invocation one job.

    python benchmarks/ifeval_recipe.py --estimate
    HF_HUB_OFFLINE=1 python benchmarks/ifeval_recipe.py --run --jobs 2            # seeds 0, 1, 2 (+ initial)
    HF_HUB_OFFLINE=1 python benchmarks/ifeval_recipe.py --run --variant ampo --seeds 0
    HF_HUB_OFFLINE=1 python benchmarks/ifeval_recipe.py --run --variant extended --seeds 0
    HF_HUB_OFFLINE=1 python benchmarks/ifeval_recipe.py --long --jobs 2
    python benchmarks/ifeval_recipe.py --report
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import alignment_ifeval as ai  # noqa: E402

ROOT = HERE.parent
OUT = ROOT / "runs" / "ifeval_recipe"
ARCHIVE = ROOT / "results" / "ifeval_recipe"
RECIPE = ROOT / "src" / "ampo" / "recipes" / "ifeval.yaml"
SEEDS = (0, 1, 2)
BENCH_TOKENS = 128  # the harness length every figure of the issue is at
LONG = ai.Sizes(seeds=(0,), train_prompts=0, heldout=0, n=0, k=0, gen_tokens=0, eval_tokens=1280, limit=128,
                rounds=0)  # the model card's answer budget, on a seeded 128-prompt subset
# besides the benchmarks' files: the held-out evaluation, the train log, and the round's training
# samples (drawn at its start), their rewards and the selection, so that what each policy was
# trained on can be read and summed up from the archive alone
ROUND_FILES = ("eval.json", "eval_samples.parquet", "train_log.json", "pool.parquet", "rewards.parquet",
               "selection.parquet")


def sizes() -> ai.Sizes:
    """What `ai.evaluate` reads: greedy, 128 new tokens, every prompt."""
    return ai.Sizes(seeds=SEEDS, train_prompts=0, heldout=0, n=0, k=0, gen_tokens=0, eval_tokens=BENCH_TOKENS,
                    limit=0, rounds=0)


def load_recipe(seed: int, settings: list[str], folder: Path, rounds: int | None = None):
    """The recipe config of one seed: the recipe file, then `settings` (the variant's tuned
    options), then the seed, the folder and (to run one round at a time) the number of rounds.
    The benchmarks are measured by this driver (`ai.evaluate`, IFEval and IFBench, the initial
    policy once for every seed), not inside the run."""
    from ampo.config import load_config

    extra = [f"rounds={rounds}"] if rounds is not None else []
    return load_config(str(RECIPE), [*settings, f"seed={seed}", f"out={folder}", "eval.benchmarks=[]", *extra])


def root(folder: Path, variant: str) -> Path:
    """Where a variant's seeds live: the recipe's (`main`) at the top, the others in a subfolder."""
    return folder if variant == "main" else folder / variant


def run_dir(out: Path, variant: str, seed: int) -> Path:
    return root(out, variant) / f"seed{seed}"


def round_bench_dir(folder: Path, r: int, name: str) -> Path:
    return folder / f"round-{r}" / name


def round_finished(folder: Path, r: int) -> bool:
    """Round r trained and evaluated (held-out), and measured on both benchmarks."""
    return (folder / f"round-{r}" / "eval.json").is_file() and all(
        (round_bench_dir(folder, r, name) / "done.json").is_file() for name in ai.BENCHMARKS)


def run_seed(out: Path, archive: Path, variant: str, seed: int, settings: list[str]) -> None:
    """The recipe on one seed, one round at a time: the pipeline runs (or resumes) rounds 0..r,
    then round r's policy is measured on IFEval and IFBench and archived. Every round goes through
    the pipeline and the evaluations, which only check their keys when they are up to date, so a
    changed recipe, setting or code redoes exactly what it changes. A round the archive already
    holds must carry the evaluation keys this recipe gives it, checked before anything runs (and
    again by `archive_round` against the run folder's). The pool and checkpoints are not archived:
    a fresh machine continues only with the run folder."""
    from ampo.config import config_key
    from ampo.pipeline import Pipeline
    from ampo.stage_keys import RunKeys
    from ampo.stages import load_round_policy

    if variant == "extended":
        start_extended(out, archive, seed)
    folder = run_dir(out, variant, seed)
    if variant == "ampo":
        reuse_main_round0(out, seed, load_recipe(seed, settings, folder))
    total = load_recipe(seed, settings, folder).rounds
    for r in range(total):
        kept = root(archive, variant) / f"seed{seed}"
        config = load_recipe(seed, settings, folder, rounds=r + 1)
        if round_finished(kept, r):  # checked before anything runs: a retrained round would cost hours
            policy = config_key("recipe-round", RunKeys(config).train(r))
            if any(json.loads((kept / f"round-{r}" / name / "done.json").read_text())["key"]
                   != ai.evaluation_key(name, policy, sizes()) for name in ai.BENCHMARKS):
                raise SystemExit(f"ifeval_recipe: {kept / f'round-{r}'} was measured on another policy than this "
                                 "recipe's (its file, settings or ampo changed since); give another --archive and --out")
            if not (folder / f"round-{r}" / "eval.json").is_file():
                raise SystemExit(f"ifeval_recipe: {kept / f'round-{r}'} is archived but the run folder {folder} does "
                                 "not hold that round (its pool and checkpoints are not archived): restore the run "
                                 "folder, or give another --archive and --out")
        with Pipeline(config, progress=False) as pipe:
            pipe.run()
        key = json.loads((folder / "manifest.json").read_text())["stages"][f"round-{r}/train"]["key"]
        checkpoints = [folder / f"round-{i}" / "checkpoint" for i in range(r + 1)]
        for name in ai.BENCHMARKS:
            ai.evaluate(name, lambda: load_round_policy(config, checkpoints), config_key("recipe-round", key),
                        round_bench_dir(folder, r, name), sizes())
        if archive_round(folder, archive, variant, seed, r):
            print(f"{variant} seed {seed}: round {r} done and archived", flush=True)


# ------------------------------------------------------------------ the archive


def archive_round(folder: Path, archive: Path, variant: str, seed: int, r: int) -> bool:
    """Copy round r's benchmark files, held-out evaluation (its samples too) and train log (and the
    seed's config) into the archive, through a temporary folder renamed when complete; True when
    copied. A round already archived is kept if its evaluations are the run folder's (the same
    keys), and gets the round files it lacks; it is refused otherwise: it was measured on another
    policy or setting."""
    dest = root(archive, variant) / f"seed{seed}" / f"round-{r}"
    if round_finished(dest.parent, r):
        for name in ai.BENCHMARKS:
            have, here = (json.loads((d / name / "done.json").read_text())["key"] for d in (dest, folder / f"round-{r}"))
            if have != here:
                raise SystemExit(f"ifeval_recipe: {dest / name} was measured on another policy or setting than "
                                 f"{folder / f'round-{r}' / name} (key {have}, not {here}); give another --archive")
        for file in ROUND_FILES:  # a round archived before a file joined ROUND_FILES gets it from its run
            if not (dest / file).is_file() and (folder / f"round-{r}" / file).is_file():
                tmp = dest / f".{file}.{os.getpid()}.tmp"
                shutil.copy2(folder / f"round-{r}" / file, tmp)
                os.replace(tmp, dest / file)
        return False
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in ai.BENCHMARKS:
        (tmp / name).mkdir(parents=True)
        for file in ai.BENCH_FILES:
            shutil.copy2(round_bench_dir(folder, r, name) / file, tmp / name / file)
    for file in ROUND_FILES:
        if (folder / f"round-{r}" / file).is_file():
            shutil.copy2(folder / f"round-{r}" / file, tmp / file)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(folder / "config.yaml", dest.parent / "config.yaml")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return True


def archive_initial(out: Path, archive: Path) -> None:
    if ai.is_finished(archive, "initial"):
        return
    ai.archive_unit(out, archive, "initial")


def archived_rounds(archive: Path, variant: str, seed: int) -> list[int]:
    folder = root(archive, variant) / f"seed{seed}"
    rounds = []
    while round_finished(folder, len(rounds)):
        rounds.append(len(rounds))
    return rounds


# ------------------------------------------------------------------ the 1280-token comparison


def long_dir(out: Path, unit: str) -> Path:
    """`initial` or `<variant>:seed<S>` (that seed's final policy)."""
    if unit == "initial":
        return out / "long" / "initial" / "ifeval"
    variant, seed = unit.split(":")
    return root(out / "long", variant) / seed / "ifeval"


def archived_key(folder: Path) -> str | None:
    """The evaluation key a finished benchmark folder records, or None."""
    done = folder / "done.json"
    return json.loads(done.read_text()).get("key") if done.is_file() else None


def complete_seeds(archive: Path, variant: str, settings: list[str]) -> list[int]:
    """The seeds with every round of the recipe archived (the only ones with a final policy)."""
    total = load_recipe(0, settings, archive).rounds
    return [s for s in SEEDS if len(archived_rounds(archive, variant, s)) == total]


def run_long(out: Path, archive: Path, unit: str, settings: list[str]) -> None:
    """IFEval at 1280 new tokens on the seeded 128-prompt subset: the initial policy, or one seed's
    final policy (refused unless every round is archived); archived beside the round folders
    (through a temporary folder renamed when complete), with `policy.json` naming the round."""
    from ampo.config import config_key
    from ampo.models import DEFAULT_POLICY, load_policy
    from ampo.stages import load_round_policy

    dest, target, policy = long_dir(out, unit), long_dir(archive, unit), {"policy": "initial"}
    if unit == "initial":
        key = config_key("initial", DEFAULT_POLICY)
        if archived_key(target) == ai.evaluation_key("ifeval", key, LONG):
            return
        ai.evaluate("ifeval", lambda: load_policy(DEFAULT_POLICY), key, dest, LONG)
    else:
        variant, seed = unit.split(":")
        s = int(seed.removeprefix("seed"))
        if s not in complete_seeds(archive, variant, settings):
            raise SystemExit(f"ifeval_recipe: {variant} seed {s} has not archived every round; its final policy "
                             "is not there yet (run --run first)")
        rounds = archived_rounds(archive, variant, s)
        folder, last = run_dir(out, variant, s), root(archive, variant) / f"seed{s}" / f"round-{rounds[-1]}"

        def measured(key: str | None) -> bool:
            """Whether the policy trained under stage key `key` is the one the archived final round measured."""
            return key is not None and archived_key(last / "ifeval") == ai.evaluation_key(
                "ifeval", config_key("recipe-round", key), sizes())

        kept = target / "policy.json"
        kept_key = json.loads(kept.read_text()).get("train_key") if kept.is_file() else None
        if measured(kept_key) and archived_key(target) == ai.evaluation_key(
                "ifeval", config_key("recipe-round", kept_key), LONG):
            return  # archived already, of the archived final policy: the run folder is not needed
        manifest, stage = folder / "manifest.json", f"round-{rounds[-1]}/train"
        key = json.loads(manifest.read_text())["stages"].get(stage, {}).get("key") if manifest.is_file() else None
        if not measured(key):
            raise SystemExit(f"ifeval_recipe: the run folder {folder} does not hold the policy {last} measured (its "
                             f"{stage} stage is missing or another); restore it, or give another --archive and --out")
        config = load_recipe(s, settings, folder, rounds=len(rounds))
        checkpoints = [folder / f"round-{i}" / "checkpoint" for i in rounds]
        ai.evaluate("ifeval", lambda: load_round_policy(config, checkpoints), config_key("recipe-round", key),
                    dest, LONG)
        policy = {"policy": f"after round {rounds[-1]}", "round": rounds[-1], "train_key": key}
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for file in ai.BENCH_FILES:
        shutil.copy2(dest / file, tmp / file)
    (tmp / "policy.json").write_text(json.dumps(policy) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


# ------------------------------------------------------------------ the settings: the tuned study's choice


VARIANTS = ("main", "ampo", "extended")
EXTENDED_ROUNDS = 6  # the longer run of the main recipe on seed 0 (PLAN.md, added in session 15)


def extended_settings(archive: Path) -> dict:
    """The `extended` variant: the main recipe's recorded settings, run to EXTENDED_ROUNDS rounds."""
    if not (root(archive, "main") / "settings.json").is_file():
        raise SystemExit("ifeval_recipe: the extended run goes on from the main recipe's; run that first (--run)")
    main = settings_of(archive, "main")
    return {**main, "source": f"{main['source']}; {EXTENDED_ROUNDS} rounds (PLAN.md, session 15)",
            "overrides": [*main["overrides"], f"rounds={EXTENDED_ROUNDS}"]}


def start_extended(out: Path, archive: Path, seed: int) -> None:
    """The extended run's folder starts as a copy of the main run's, once that has every round of
    the recipe archived: its rounds are the same stages (a round's keys do not depend on how many
    follow), so the copy goes on from the main run's last policy and retrains nothing."""
    from ampo.runner import RunLock

    folder = run_dir(out, "extended", seed)
    if folder.exists():
        return
    main = settings_of(archive, "main")["overrides"]
    if seed not in complete_seeds(archive, "main", main):
        raise SystemExit(f"ifeval_recipe: the extended run of seed {seed} starts from the main run's last round; "
                         f"finish that first (--run --seeds {seed})")
    source = run_dir(out, "main", seed)
    for r in archived_rounds(archive, "main", seed):  # the folder must hold what the archive measured
        if not round_finished(source, r) or not (source / f"round-{r}" / "checkpoint").is_dir():
            raise SystemExit(f"ifeval_recipe: the main run folder {source} does not hold the archived round {r}; "
                             "the extended run needs it (restore it, or give another --archive and --out)")
        archive_round(source, archive, "main", seed, r)  # refuses a round measured on another policy
    copying = folder.with_name(f".{folder.name}.copying")
    copying.mkdir(parents=True, exist_ok=True)
    with RunLock(source), RunLock(copying, "the copy", "--out"):  # no run writes the source, no other copy runs
        if folder.exists():
            return  # another process copied it meanwhile
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(".lock"))
        tmp.rename(folder)


def reuse_main_round0(out: Path, seed: int, config) -> None:
    """A new AMPO-variant run folder starts with the main run's split and round-0 pool (and its
    embeddings and held-out baseline) where their stage keys are the ones this run computes: both
    sample round 0 from the initial policy with the same options, so these are the same stages,
    copied instead of made again (17 minutes of one core). Nothing is copied when a key differs."""
    from ampo.runner import RunInUseError, RunLock
    from ampo.stage_keys import RunKeys

    folder, source = run_dir(out, "ampo", seed), run_dir(out, "main", seed)
    if folder.exists() or not (source / "manifest.json").is_file():
        return
    keys = RunKeys(config)
    want = {"split": keys.split_key(), "round-0/generate": keys.generate(0), "round-0/score": keys.score(0),
            "round-0/embed": keys.embed(0), "baseline": keys.baseline()}
    try:
        with RunLock(source):  # no run writes the source meanwhile
            have = json.loads((source / "manifest.json").read_text())["stages"]
            same = {name for name, key in want.items()
                    if have.get(name, {}).get("status") == "done" and have[name].get("key") == key}
            if set(ai.POOL_STAGES) <= same:
                ai.seed_round0(folder, source, with_embedder=set(ai.EMBEDDER_STAGES) <= same)
                print(f"ampo seed {seed}: round 0's pool taken from the main run (the same stage keys)", flush=True)
    except RunInUseError:
        print(f"ampo seed {seed}: the main run folder is in use; round 0 is sampled again", flush=True)


def tuned_settings(variant: str, tuned_archive: Path | None = None) -> dict:
    """The variant's settings from the tuned IFEval study (results/alignment_ifeval_tuned): `main`
    takes the arm whose chosen settings score highest on the held-out training-style split among
    all arms, `ampo` among the AMPO-loss arms (ties: the study's arm order, baselines first). Refuses
    (one line) while an arm has no choice yet."""
    import alignment_ifeval_tuned as tuned

    archive = tuned_archive or tuned.ARCHIVE
    arms = [a for a in tuned.TUNED_ARMS if variant == "main" or tuned.loss_of(a) == "ampo"]
    choices = {a: tuned.chosen(archive, a) for a in arms}
    missing = [a for a, c in choices.items() if c is None]
    if missing:
        raise SystemExit(f"ifeval_recipe: the tuned study has not chosen settings for {', '.join(missing)} yet; "
                         "finish it (alignment_ifeval_tuned.py --tune) or pass --arm and --lr")
    arm = max(arms, key=lambda a: choices[a]["value"])  # max keeps the first of equal values
    return explicit_settings(arm, choices[arm]["params"], f"the tuned study's choice (held-out metric "
                                                           f"{choices[arm]['value']:.4f})")


def explicit_settings(arm: str, params: dict, source: str) -> dict:
    """An arm of the tuned study (its selector and loss) at `params` (learning rate, beta), with the
    study's group size (`select.k`) unless the arm fixes its own, whatever the recipe file says."""
    import alignment_ifeval_tuned as tuned

    if arm not in tuned.TUNED_ARMS:
        raise SystemExit(f"ifeval_recipe: unknown arm {arm!r}; known: {', '.join(tuned.TUNED_ARMS)}")
    return {"arm": arm, "params": params, "source": source,
            "overrides": [f"select.k={tuned.sizes().k}", *ai.ARMS[arm], *tuned.setting_overrides(params)]}


def settings_of(archive: Path, variant: str) -> dict:
    """The settings a variant runs with, recorded in the archive the first time it runs."""
    return json.loads((root(archive, variant) / "settings.json").read_text())


def record_settings(archive: Path, variant: str, settings: dict) -> dict:
    """Write `settings.json` once; refuse other settings for an archive that has them."""
    path = root(archive, variant) / "settings.json"
    if path.is_file():
        have = json.loads(path.read_text())
        if have["overrides"] != settings["overrides"]:
            raise SystemExit(f"ifeval_recipe: {path} records other settings ({have['arm']}, {have['params']}); "
                             "give another --archive and --out")
        return have
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1) + "\n")
    return settings


# ------------------------------------------------------------------ the report


def read_unit(folder: Path) -> dict | None:
    """A finished benchmark folder's metrics, per-prompt counts (strict), answers and
    instructions, or None."""
    import alignment_stats as st

    if not (folder / "done.json").is_file():
        return None
    results = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]
    responses = [json.loads(line) for line in (folder / "responses.jsonl").read_text().splitlines() if line.strip()]
    return {"metrics": json.loads((folder / "metrics.json").read_text()), "counts": st.prompt_counts(results),
            "results": results, "answers": {row["key"]: row["response"] for row in responses},
            "prompts": {row["key"]: row.get("prompt", "") for row in responses},
            "ended": {row["key"]: row.get("finished") for row in responses}}


def instruction_rates(results: list[dict]) -> dict[str, tuple[int, int]]:
    """Per instruction id: (followed, scored), strict."""
    out: dict[str, list[int]] = {}
    for row in results:
        for iid, ok in zip(row["instruction_id_list"], row["follow_instruction_list_strict"]):
            if ok is not None:
                c = out.setdefault(iid, [0, 0])
                c[0] += bool(ok)
                c[1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def curve_rows(archive: Path, variant: str, seed: int, initial: dict) -> list[dict]:
    """One row per archived round (and the initial policy as round -1): both benchmarks' average
    (strict) with its interval, IFEval's paired difference against the initial policy, the
    held-out reward, answer length, ended share and share of short answers."""
    import alignment_stats as st

    rows = [{"round": -1, **{name: initial[name]["metrics"] for name in ai.BENCHMARKS}, "heldout": None, "paired": None,
             "short": st.short_answers(initial["ifeval"]["answers"])}]
    for r in archived_rounds(archive, variant, seed):
        folder = root(archive, variant) / f"seed{seed}" / f"round-{r}"
        units = {name: read_unit(folder / name) for name in ai.BENCHMARKS}
        if None in units.values():  # archived rounds have both (archive_round renames them in whole)
            raise SystemExit(f"ifeval_recipe: {folder} lacks a finished benchmark; archive it again")
        rows.append({"round": r, **{name: unit["metrics"] for name, unit in units.items()}, "heldout": heldout(folder),
                     "paired": st.paired_difference([units["ifeval"]["counts"]], [initial["ifeval"]["counts"]]),
                     "short": st.short_answers(units["ifeval"]["answers"])})
    return rows


def heldout(folder: Path) -> list | None:
    """[held-out reward, its 95% interval over prompts or None, the initial policy's] of an archived
    round: the interval from its `eval_samples.parquet` with the run's bootstrap size and seed (as
    `ampo sweep` computes it; eval.json holds none)."""
    if not (folder / "eval.json").is_file():
        return None
    held = json.loads((folder / "eval.json").read_text())
    ci = held.get("mean_reward_ci")
    if ci is None and (folder / "eval_samples.parquet").is_file():
        import numpy as np
        import pyarrow.parquet as pq
        from ampo.config import load_config
        from ampo.evaluation import mean_with_ci

        config = load_config(str(folder.parent / "config.yaml"), [])
        rows = pq.read_table(folder / "eval_samples.parquet", columns=["rewards"]).to_pylist()
        _, ci = mean_with_ci(np.array([np.mean(row["rewards"]) for row in rows]), config.eval.bootstrap, config.seed)
    return [held["mean_reward"], ci, held.get("baseline_mean_reward")]


def training_samples(folder: Path) -> dict | None:
    """An archived round's training samples (drawn at the round's start, so round 0's are the
    initial policy's) summed up: prompts, groups the selection kept (the pipeline trains on those
    with enough responses for the loss: all of them for a pair loss), the mean reward, the mean over
    prompts of the best of the group, the share of answers that ended and their mean new tokens;
    None for a round archived without them (or with an empty pool)."""
    import numpy as np
    import pyarrow.parquet as pq

    if not all((folder / file).is_file() for file in ("pool.parquet", "rewards.parquet", "selection.parquet")):
        return None
    pool = pq.read_table(folder / "pool.parquet", columns=["id", "finished", "n_tokens"]).to_pylist()
    rewards = {row["id"]: row["rewards"] for row in pq.read_table(folder / "rewards.parquet").to_pylist()}
    kept = sum(bool(row["selected"]) for row in pq.read_table(folder / "selection.parquet").to_pylist())
    if not pool or any(row["id"] not in rewards for row in pool):
        return None
    groups = [np.asarray(rewards[row["id"]], dtype=float) for row in pool]
    return {"prompts": len(pool), "selected": kept, "mean_reward": float(np.mean(np.concatenate(groups))),
            "best_of_group": float(np.mean([g.max() for g in groups])), "group_size": len(groups[0]),
            "ended": float(np.mean([f for row in pool for f in row["finished"]])),
            "new_tokens": float(np.mean([n for row in pool for n in row["n_tokens"]]))}


def training_table(archive: Path, variant: str, seed: int) -> list[str]:
    """The training samples of each archived round that has them, one row a round."""
    rows = [(r, training_samples(root(archive, variant) / f"seed{seed}" / f"round-{r}"))
            for r in archived_rounds(archive, variant, seed)]
    rows = [(r, t) for r, t in rows if t]
    if not rows:
        return []
    md = ["Training samples of each round (T=0.8, drawn by the policy at the round's start; the reward is the "
          "recipe's, cut answers scoring 0):\n", "| round | groups selected / prompts | mean reward | best of group "
          "(mean) | answers ended (%) | new tokens |", "|---|---|---|---|---|---|"]
    for r, t in rows:
        md.append(f"| {r} | {t['selected']} / {t['prompts']} | {t['mean_reward']:.3f} | {t['best_of_group']:.3f} "
                  f"(of {t['group_size']}) | {100 * t['ended']:.1f} | {t['new_tokens']:.1f} |")
    return md + [""]


def _avg(m: dict) -> str:
    lo, hi = m["avg_prompt_inst_strict_acc_ci"]
    return f"{100 * m['avg_prompt_inst_strict_acc']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def report(archive: Path) -> str:
    """report.md (and recipe.png) from the archive alone."""
    import alignment_stats as st

    initial = {name: read_unit(archive / "initial" / name) for name in ai.BENCHMARKS}
    if any(u is None for u in initial.values()):
        return "The initial policy's evaluation is not archived yet.\n"
    md = ["# The IFEval recipe (issue 28)\n",
          "Greedy, 128 new tokens, the full IFEval (541) and IFBench (300; 288 scored offline); average = "
          "(prompt-level + instruction-level strict accuracy) / 2, in %, with its 95% bootstrap interval over "
          f"prompts. Initial policy: IFEval {_avg(initial['ifeval']['metrics'])}, IFBench "
          f"{_avg(initial['ifbench']['metrics'])}.\n"]
    curves = {}
    for variant in VARIANTS:
        if not (root(archive, variant) / "settings.json").is_file():
            continue
        s = settings_of(archive, variant)
        md += [f"## {variant}: {s['arm']}, " + ", ".join(f"{k.split('.')[-1]} {v:g}" for k, v in s["params"].items())
               + f" ({s['source']})\n"]
        finals, complete = {}, complete_seeds(archive, variant, s["overrides"])
        for seed in SEEDS:
            rows = curve_rows(archive, variant, seed, initial)
            if len(rows) == 1:
                continue
            curves[(variant, seed)] = rows
            md += [f"### seed {seed}\n", "| after round | IFEval | IFEval − initial, paired [95% CI] | IFBench | "
                   f"held-out reward [95% CI] | IFEval new tokens | IFEval answers ended (%) | IFEval answers under "
                   f"{st.SHORT_WORDS} words (%) |", "|---|---|---|---|---|---|---|---|"]
            for row in rows:
                held = row["heldout"]
                held_cell = (f"{held[0]:.3f}" + (f" [{held[1][0]:.3f}, {held[1][1]:.3f}]" if held[1] else "")
                             if held else "–")
                if row["round"] < 0 and rows[1]["heldout"] and rows[1]["heldout"][2] is not None:
                    held_cell = f"{rows[1]['heldout'][2]:.3f}"  # the initial policy's, measured in round 0
                paired = row["paired"]
                paired_cell = (f"{100 * paired['mean']:+.1f} [{100 * paired['mean_ci'][0]:+.1f}, "
                               f"{100 * paired['mean_ci'][1]:+.1f}]" if paired else "–")
                md.append(f"| {'initial' if row['round'] < 0 else row['round']} | {_avg(row['ifeval'])} | "
                          f"{paired_cell} | {_avg(row['ifbench'])} | {held_cell} | "
                          f"{row['ifeval']['mean_new_tokens']:.1f} | "
                          f"{100 * row['ifeval']['finished_rate']:.1f} | {100 * row['short']:.1f} |")
            md.append("")
            md += training_table(archive, variant, seed)
            if seed not in complete:
                md.append(f"(seed {seed}: {len(rows) - 1} round(s) archived so far; not in the final comparison)\n")
                continue
            last = rows[-1]["round"]
            finals[seed] = {name: read_unit(root(archive, variant) / f"seed{seed}" / f"round-{last}" / name)
                            for name in ai.BENCHMARKS}
        if finals:
            md += difference_section(finals, initial, last, verdict=variant == "main")
    if curves:
        plot(archive, curves)
        md.append("![per-round curves](recipe.png)\n")
    long_md = long_section(archive)
    md += long_md
    text = "\n".join(md) + "\n"
    (archive / "report.md").write_text(text)
    return text


def difference_section(finals: dict, initial: dict, last: int, verdict: bool = True) -> list[str]:
    """The final round (`last`) against the initial policy: per seed the paired difference with its interval
    over prompts, then the mean over seeds with an interval over prompts and one over seeds and
    prompts; per instruction type; and the gaming audit."""
    import alignment_stats as st

    seeds = sorted(finals)
    md = [f"### The final round (after round {last}) against the initial policy\n",
          "| benchmark | " + " | ".join(f"seed {s}" for s in seeds) + " | mean over seeds [prompts] | [seeds and prompts] |",
          "|---|" + "---|" * (len(seeds) + 2)]
    diffs = {}
    for name in ai.BENCHMARKS:
        a = [finals[s][name]["counts"] for s in seeds]
        b = [initial[name]["counts"]] * len(seeds)
        d = diffs[name] = st.paired_difference(a, b)
        cells = [f"{100 * v:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]" for v, (lo, hi) in zip(d["per_seed"], d["per_seed_ci"])]
        both = st.seed_and_prompt_interval(a, b) if len(seeds) > 1 else None
        md.append(f"| {name} | " + " | ".join(cells) + f" | {100 * d['mean']:+.1f} [{100 * d['mean_ci'][0]:+.1f}, "
                  f"{100 * d['mean_ci'][1]:+.1f}] | " + (f"[{100 * both[0]:+.1f}, {100 * both[1]:+.1f}]" if both else "–")
                  + " |")
    md += ["", "Per instruction type (IFEval, strict, followed / scored, all seeds' final rounds pooled; the ten "
           "largest changes):\n", "| instruction | initial (%) | final (%) | change |", "|---|---|---|---|"]
    before = instruction_rates(initial["ifeval"]["results"])
    after = instruction_rates([row for s in seeds for row in finals[s]["ifeval"]["results"]])
    changes = {iid: (before[iid][0] / before[iid][1], after[iid][0] / after[iid][1]) for iid in before if iid in after}
    for iid, (x, y) in sorted(changes.items(), key=lambda kv: -abs(kv[1][1] - kv[1][0]))[:10]:
        md.append(f"| {iid} | {100 * x:.1f} | {100 * y:.1f} | {100 * (y - x):+.1f} |")
    md += ["", *by_initial_ending(finals, initial["ifeval"]),
           "", "Gaming audit (IFEval): among the answers that follow every instruction, those that loop (half "
           f"their word bigrams repeat) or are filler (under {st.FILLER_WORDS} words):\n",
           "| policy | passing answers | looping | filler | share |", "|---|---|---|---|---|"]
    shares = {}
    for label, unit in [("initial", initial["ifeval"])] + [(f"seed {s} final", finals[s]["ifeval"]) for s in seeds]:
        g = st.gaming_statistics(unit["counts"], unit["answers"])
        shares[label] = g["gaming_share"]
        md.append(f"| {label} | {g['passing']} | {g['passing_looping']} | {g['passing_filler']} | "
                  f"{100 * g['gaming_share']:.1f}% |")
    md += ["", target_verdict(diffs, shares, len(seeds)) if verdict else
           "(The target is the recipe's, judged above; this variant runs on seed 0 only, as PLAN.md says.)\n"]
    prompts = initial["ifeval"]["prompts"]
    if prompts:
        s0 = seeds[0]
        md += ["", f"Answers side by side (IFEval, seed {s0}: the first prompts in key order where the two "
               "follow different numbers of instructions):\n",
               st.side_by_side(prompts, {"initial": initial["ifeval"]["answers"], "final": finals[s0]["ifeval"]["answers"]},
                               {"initial": initial["ifeval"]["counts"], "final": finals[s0]["ifeval"]["counts"]}, shown=4)]
    return md + [""]


def by_initial_ending(finals: dict, initial: dict) -> list[str]:
    """IFEval's average before and after, apart on the prompts whose initial answer was cut at the
    budget and on those whose initial answer ended: where the change comes from (an answer that
    learns to end can meet constraints on its end or shape). Empty where the answers do not say."""
    import numpy as np

    import alignment_stats as st

    if None in initial["ended"].values():
        return []
    md = ["IFEval apart by how the initial policy's answer ended (average, strict, %):\n",
          "| initial answer | prompts | initial | " + " | ".join(f"seed {s} final (change)" for s in finals) + " |",
          "|---|---|---|" + "---|" * len(finals)]
    for label, ended in (("cut at the budget", False), ("ended", True)):
        keys = [k for k, e in initial["ended"].items() if bool(e) == ended and k in initial["counts"]]
        if not keys:
            continue
        before = st.average(np.array([initial["counts"][k] for k in keys]))
        cells = []
        for unit in finals.values():
            after = st.average(np.array([unit["ifeval"]["counts"][k] for k in keys]))
            cells.append(f"{100 * after:.1f} ({100 * (after - before):+.1f})")
        md.append(f"| {label} | {len(keys)} | {100 * before:.1f} | " + " | ".join(cells) + " |")
    return md


TARGET_POINTS = 5.0  # the target on IFEval, in points of the average (PLAN.md)


def target_verdict(diffs: dict, shares: dict[str, float], n_seeds: int) -> str:
    """PLAN.md's target, criterion by criterion, from the figures above: IFEval +5 points or more
    (mean over seeds), each seed's interval over prompts above 0, IFBench not lower (mean over
    seeds), no seed's final policy with a larger gaming share than the initial policy's, 3 seeds."""
    ifeval, ifbench = diffs["ifeval"], diffs["ifbench"]
    checks = [(f"IFEval {100 * ifeval['mean']:+.1f} points (mean over seeds; target +{TARGET_POINTS:g})",
               100 * ifeval["mean"] >= TARGET_POINTS),
              ("each seed's IFEval interval over prompts above 0", all(lo > 0 for lo, _ in ifeval["per_seed_ci"])),
              (f"IFBench not lower ({100 * ifbench['mean']:+.1f} points)", ifbench["mean"] >= 0),
              ("no more gaming than the initial policy", all(v <= shares["initial"] for k, v in shares.items())),
              (f"3 seeds ({n_seeds} finished)", n_seeds >= 3)]
    met = all(ok for _, ok in checks)
    return ("**Target " + ("reached" if met else "not reached") + "**: " +
            "; ".join(f"{text}: {'yes' if ok else 'no'}" for text, ok in checks) + ".\n")


def long_section(archive: Path) -> list[str]:
    """The 1280-token comparison, where archived: each final policy against the initial one on
    the same 128 prompts, paired."""
    import alignment_stats as st

    initial = read_unit(long_dir(archive, "initial"))
    if initial is None:
        return []
    md = ["## At the model card's 1280 new tokens (IFEval, seeded 128-prompt subset)\n",
          f"Initial policy: {_avg(initial['metrics'])} (ended within the budget: "
          f"{100 * initial['metrics']['finished_rate']:.1f}%).\n",
          "| policy | average | paired difference [95% CI] | ended (%) | new tokens |", "|---|---|---|---|---|"]
    for variant in VARIANTS:
        units = {seed: read_unit(long_dir(archive, f"{variant}:seed{seed}")) for seed in SEEDS}
        units = {seed: unit for seed, unit in units.items() if unit is not None}
        for seed, unit in units.items():
            d = st.paired_difference([unit["counts"]], [initial["counts"]])
            lo, hi = d["per_seed_ci"][0]
            md.append(f"| {variant} seed {seed} final | {_avg(unit['metrics'])} | {100 * d['mean']:+.1f} "
                      f"[{100 * lo:+.1f}, {100 * hi:+.1f}] | {100 * unit['metrics']['finished_rate']:.1f} | "
                      f"{unit['metrics']['mean_new_tokens']:.1f} |")
        if len(units) > 1:
            d = st.paired_difference([u["counts"] for u in units.values()], [initial["counts"]] * len(units))
            md.append(f"| {variant}, mean over {len(units)} seeds [prompts] | – | {100 * d['mean']:+.1f} [{100 * d['mean_ci'][0]:+.1f}, "
                      f"{100 * d['mean_ci'][1]:+.1f}] | – | – |")
    return md + [""]


def plot(archive: Path, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for (variant, seed), rows in curves.items():
        x = [row["round"] + 1 for row in rows]  # 0 = initial
        style = "-o" if variant == "main" else "--s"
        for ax, name in zip(axes[:2], ai.BENCHMARKS):
            ax.plot(x, [100 * row[name]["avg_prompt_inst_strict_acc"] for row in rows], style,
                    label=f"{variant} seed {seed}")
        held = [(row["round"] + 1, row["heldout"][0]) for row in rows if row["heldout"]]
        if held:
            base = rows[1]["heldout"][2]
            axes[2].plot([0] + [h[0] for h in held], [base] + [h[1] for h in held], style, label=f"{variant} seed {seed}")
    for ax, title in zip(axes, ("IFEval average (strict, %)", "IFBench average (strict, %)", "held-out reward")):
        ax.set_title(title)
        ax.set_xlabel("rounds trained")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(archive / "recipe.png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ the cost estimate


def estimate(settings: dict, seeds: int, rounds: int, tuned_archive: Path | None = None) -> list[tuple[str, float]]:
    """(part, single-thread hours) of running the recipe: training from the tuned study's trials of
    the same arm on this kind of machine (the median of their training seconds per prompt,
    `manifest.json`; none: 0), the rest from `alignment_ifeval.RATES` (provisional per-token
    rates) at the recipe's sizes."""
    import statistics

    import alignment_ifeval_tuned as tuned
    from ampo.config import load_config

    c = load_config(str(RECIPE), settings["overrides"])
    found = [json.loads(m.read_text())["stages"].get("round-0/train", {}).get("seconds")
             for m in ((tuned_archive or tuned.ARCHIVE) / "tuning" / tuned.slug(settings["arm"])).glob("*/manifest.json")]
    found = [x for x in found if x]  # trials whose training came from the store record none
    per_prompt = statistics.median(found) / 64 if found else None  # the tuning's 64 training prompts
    r = ai.RATES
    tokens = c.generate.max_new_tokens * 0.75  # sampled answers: 97 of 128 tokens on average (fixed-lr pool)
    units = seeds * rounds
    parts = [("generation", units * c.data.train_prompts * c.generate.n * tokens * r["sample_token"]),
             ("training", units * c.data.train_prompts * (per_prompt or 0.0)),
             ("held-out evaluation", units * c.data.heldout * c.eval.samples_per_prompt * c.eval.max_new_tokens
              * r["greedy_token"]),
             ("IFEval + IFBench after every round (+ the initial policy once)",
              (units + 1) * sum(ai.BENCH_PROMPTS.values()) * BENCH_TOKENS * 0.75 * r["greedy_token"])]
    return [(name, sec / 3600) for name, sec in parts]


# ------------------------------------------------------------------ command line


def worker(argv: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *argv]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="store_true", help="run (or continue) the recipe on --seeds")
    ap.add_argument("--long", action="store_true", help="IFEval at 1280 new tokens: initial and each final policy")
    ap.add_argument("--report", action="store_true", help="report.md and recipe.png from the archive")
    ap.add_argument("--estimate", action="store_true", help="print the cost in single-thread hours")
    ap.add_argument("--variant", choices=VARIANTS, default="main")
    ap.add_argument("--seeds", type=int, nargs="+",
                    help="default: 0 1 2 for the main recipe, 0 for the other variants (PLAN.md)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--arm", help="run this arm of the tuned study instead of its choice (a pilot)")
    ap.add_argument("--lr", type=float, help="with --arm: the learning rate")
    ap.add_argument("--beta", type=float, help="with --arm: beta, for a loss that has one")
    ap.add_argument("--unit", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--archive", default=str(ARCHIVE))
    args = ap.parse_args(argv)
    out, archive = Path(args.out), Path(args.archive)
    args.seeds = args.seeds or (list(SEEDS) if args.variant == "main" else [0])
    if args.report:
        print(report(archive))
        return

    def settings() -> dict:
        if (root(archive, args.variant) / "settings.json").is_file() and not args.arm:
            return settings_of(archive, args.variant)
        if args.variant == "extended":
            if args.arm:
                raise SystemExit("ifeval_recipe: the extended run takes the main recipe's settings; no --arm")
            return extended_settings(archive)
        if args.arm:
            if args.lr is None:
                raise SystemExit("ifeval_recipe: --arm needs --lr")
            params = {"train.learning_rate": args.lr, **({"train.beta": args.beta} if args.beta is not None else {})}
            return explicit_settings(args.arm, params, "given on the command line (a pilot, not the tuned choice)")
        return tuned_settings(args.variant)

    if args.estimate:
        s = settings()
        rounds = load_recipe(0, s["overrides"], out).rounds
        if args.variant == "extended":  # the main run's rounds are copied, not run again
            rounds -= load_recipe(0, settings_of(archive, "main")["overrides"], out).rounds
        parts = estimate(s, len(args.seeds), rounds)
        print(f"{s['arm']} {s['params']}: {len(args.seeds)} seeds; single-thread hours")
        for name, hours in parts:
            print(f"  {name}: {hours:.1f}")
        total = sum(h for _, h in parts)
        print(f"  total: {total:.1f} (about {total / args.jobs:.1f} h on {args.jobs} free cores)")
        return
    if args.unit:
        if args.long:
            run_long(out, archive, args.unit, [] if args.unit == "initial" else
                     settings_of(archive, args.unit.split(":")[0])["overrides"])
        elif args.unit == "initial":
            ai.run_initial(out, sizes())
            archive_initial(out, archive)
        else:
            variant, seed = args.unit.split(":")
            run_seed(out, archive, variant, int(seed.removeprefix("seed")), settings_of(archive, variant)["overrides"])
        return
    if args.run:
        ai.check_archive(archive, sizes())
        import alignment_ifeval_tuned as tuned

        if ai.copy_initial(tuned.ARCHIVE, archive):
            print("the initial policy's evaluation: taken from the tuned study's archive", flush=True)
        record_settings(archive, args.variant, settings())
        units = ([] if ai.is_finished(archive, "initial") else ["initial"]) + [f"{args.variant}:seed{s}" for s in args.seeds]
        failed = ai.spawn(units, args.jobs, lambda u: worker(["--out", str(out), "--archive", str(archive), "--unit", u]),
                          out / "logs")
    elif args.long:
        units = ["initial"] + [f"{v}:seed{s}" for v in ("main", "ampo") if (root(archive, v) / "settings.json").is_file()
                               for s in complete_seeds(archive, v, settings_of(archive, v)["overrides"])]
        failed = ai.spawn(units, args.jobs, lambda u: worker(["--long", "--out", str(out), "--archive", str(archive),
                                                              "--unit", u]), out / "logs" / "long")
    else:
        ap.print_help()
        return
    if failed:
        raise SystemExit(f"ifeval_recipe: {len(failed)} unit(s) failed: {', '.join(failed)} (logs in {out / 'logs'}); "
                         "rerun the same command to continue")


if __name__ == "__main__":
    main()
