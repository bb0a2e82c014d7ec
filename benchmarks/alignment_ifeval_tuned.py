"""The tuned IFEval study (issue 27 part 2): the fixed-lr study's question (alignment_ifeval.py) with
every arm at its own best settings, chosen by `ampo sweep` on the held-out training-style split
(the `ifeval` reward on 32 held-out `builtin-ifeval` prompts, greedy), never on IFEval or IFBench.

A thin layer over alignment_ifeval.py: the same arm definitions (`ARMS`, plus `grpo all`), sizes,
round-0 pools (taken from the fixed-lr study's archive, never regenerated), benchmark evaluation
and archive layout. The grid is fixed in `GRIDS` and in results/alignment_ifeval_tuned/PLAN.md,
written before any tuned result existed.

    python benchmarks/alignment_ifeval_tuned.py --plan        # the grid, per arm
    python benchmarks/alignment_ifeval_tuned.py --estimate    # what tuning and the final runs cost
    python benchmarks/alignment_ifeval_tuned.py --tune --jobs 2   # one `ampo sweep` per arm on seed 0 (resumable)
    python benchmarks/alignment_ifeval_tuned.py --sync        # archive finished trials, nothing else
    python benchmarks/alignment_ifeval_tuned.py --final --jobs 2  # chosen settings x seeds 0,1,2 + IFEval/IFBench
    python benchmarks/alignment_ifeval_tuned.py --report      # tuning.md (+ alignment.md once final units exist)

Tuning: one sweep folder per arm, OUT/sweeps/<arm>/, all sharing one stage store OUT/store into
which seed 0's archived round-0 pool (results/alignment_ifeval/seed0/round0-minilm: split, pool,
rewards, MiniLM embeddings) is loaded first, after checking that the archived stage keys are the
keys a trial computes (`seed_store`), so the trials take the pool from the store. The held-out
baseline is made once (greedy evaluation: its key differs from the archive's sampled one), the
selection and reference log-probs once per arm, training and the held-out evaluation per trial.
Every finished trial's small files go to ARCHIVE/tuning/<arm>/<NNN>/ as it finishes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import alignment_ifeval as ai  # noqa: E402

ROOT = HERE.parent
FIXED_ARCHIVE = ROOT / "results" / "alignment_ifeval"  # the fixed-lr study: its pools and initial policy
ARCHIVE = ROOT / "results" / "alignment_ifeval_tuned"
OUT = ROOT / "runs" / "alignment_ifeval_tuned"

# grpo over all 16 responses: groups with no reward spread carry no advantage and are dropped;
# kl 0, GSPO's clip and scale=std are the loss's defaults (docs/losses.md); 16 responses per
# group need activation checkpointing on 24 GB, as `swepo all` does
GRPO_ALL = ["select.strategy=all", "select.min_margin=1e-06", "train.loss=grpo", "train.gradient_checkpointing=true"]
ai.ARMS.setdefault("grpo all", GRPO_ALL)  # this study's arm set extends the fixed-lr study's

# In tuning order: the three baselines first, then the others
TUNED_ARMS = ["dpo best-vs-worst", "ampo+random", "grpo all", "simpo best-vs-worst", "dpo sweet-spot",
              "ampo+optselect", "ampo+bottomk", "swepo+random", "swepo+optselect", "swepo all"]
BASELINES = ("dpo best-vs-worst", "ampo+random", "grpo all")

LEARNING_RATES_PLANNED = (3e-6, 1e-5, 3e-5, 1e-4, 3e-4)  # the lead's grid (PLAN.md), before the estimate
# Trimmed after `--estimate` (PLAN.md "Cost estimate"): the five rates cost about 16 single-thread
# hours of tuning, over the ~10 budgeted; one rate is dropped for every arm (the floor is
# four rates over 3e-6..3e-4 and two betas, so nothing else can go): 1e-5, keeping both ends of the
# range and the half-decade steps at the top
LEARNING_RATES = (3e-6, 3e-5, 1e-4, 3e-4)
BETAS = {"ampo": (3.0, 10.0), "swepo": (0.03, 0.1), "dpo": (0.03, 0.1), "simpo": (2.0, 10.0), "grpo": ()}
DEFAULT_BETA = {"ampo": 10.0, "swepo": 0.1, "dpo": 0.1, "simpo": 2.0}
# The same for every trial and every final run (the LoRA setting is the recipe's, spelled out)
FIXED = ["eval.temperature=0", "model.lora=true", "model.lora_r=16", "model.lora_alpha=32", "model.lora_dropout=0.0",
         "train.epochs=1"]
TIE = 0.005  # metric differences within this go to the lower learning rate
SEED_TUNE = 0
TRIAL_FILES = ("config.yaml", "manifest.json", "round-0/eval.json", "round-0/train_log.json")


def ai_stats():
    """alignment_stats (the fixed-lr study's statistics, with the tuned study's additions)."""
    import alignment_stats

    return alignment_stats


def loss_of(arm: str) -> str:
    return dict(o.split("=", 1) for o in ai.ARMS[arm])["train.loss"]


def slug(arm: str) -> str:
    return arm.replace(" ", "_")


def grid(arm: str) -> dict[str, list]:
    """The arm's full grid (PLAN.md, "The grids"): `--grid` key -> values. Only part of it is run
    (`design_points`); the rest is the second trim's."""
    g = {"train.learning_rate": list(LEARNING_RATES)}
    if BETAS[loss_of(arm)]:
        g["train.beta"] = list(BETAS[loss_of(arm)])
    return g


def grid_points(arm: str) -> list[dict]:
    g = grid(arm)
    return [dict(zip(g, values)) for values in itertools.product(*g.values())]


def default_beta(arm: str) -> float | None:
    return DEFAULT_BETA.get(loss_of(arm))


def lr_points(arm: str) -> list[dict]:
    """Stage 1 of the coordinate design: every learning rate at the loss's default beta."""
    beta = default_beta(arm)
    return [{"train.learning_rate": lr, **({"train.beta": beta} if beta is not None else {})} for lr in LEARNING_RATES]


def beta_points(arm: str, lr: float) -> list[dict]:
    """Stage 2: the loss's other betas at stage 1's chosen learning rate (none for grpo)."""
    return [{"train.learning_rate": lr, "train.beta": b} for b in BETAS[loss_of(arm)] if b != default_beta(arm)]


def find(trials: list[dict], point: dict) -> dict | None:
    """The finished trial at exactly `point` (any sweep folder: a point's result does not depend on it)."""
    return next((t for t in trials if t["params"] == point and t.get("value") is not None), None)


def design_points(arm: str, trials: list[dict]) -> list[dict]:
    """The points the coordinate design runs, as far as the finished `trials` determine them."""
    stage1 = lr_points(arm)
    found = [find(trials, p) for p in stage1]
    if None in found:
        return stage1
    return stage1 + beta_points(arm, choose(found, default_beta(arm))["params"]["train.learning_rate"])


def n_design(arm: str) -> int:
    """Trials of the coordinate design: every rate, plus the other beta (if the loss has one)."""
    return len(LEARNING_RATES) + len(BETAS[loss_of(arm)][1:])


def n_trials(arms=TUNED_ARMS) -> int:
    return sum(n_design(a) for a in arms)


def plan_table(arms=TUNED_ARMS) -> str:
    lines = ["| arm | loss | learning rates (stage 1, at the default beta) | default beta | other beta (stage 2, at "
             "stage 1's rate) | fixed | LoRA | trials |", "|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        loss, other = loss_of(arm), [b for b in BETAS[loss_of(arm)] if b != default_beta(arm)]
        lines.append(f"| {arm} | {loss} | {', '.join(f'{x:g}' for x in LEARNING_RATES)} | "
                     f"{'– (kl 0)' if default_beta(arm) is None else f'{default_beta(arm):g}'} | "
                     f"{', '.join(f'{b:g}' for b in other) or '–'} | `{' '.join(ai.ARMS[arm])}` | "
                     f"r=16, alpha=32, dropout 0, q/k/v/o | {n_design(arm)} |")
    lines.append(f"\n{n_trials(arms)} trials on seed {SEED_TUNE}; fixed for every trial: `{' '.join(FIXED)}`")
    return "\n".join(lines)


def sizes() -> ai.Sizes:
    return ai.Sizes(seeds=(0, 1, 2), train_prompts=64, heldout=32, n=16, k=7, gen_tokens=128, eval_tokens=128,
                    limit=0, rounds=1)


def base_overrides(arm: str, seed: int, store: Path) -> list[str]:
    """Everything but the swept options and `out`: the fixed-lr study's sizes and arm, FIXED, the store."""
    return [*sizes().overrides(seed), *ai.ARMS[arm], *FIXED, f"store={store}"]


def setting_overrides(params: dict) -> list[str]:
    out = [f"train.learning_rate={params['train.learning_rate']}"]
    if params.get("train.beta") is not None:
        out.append(f"train.hparams.beta={params['train.beta']}")
    return out


# ------------------------------------------------------------------ selection


def choose(trials: list[dict], default_beta: float | None = None, tie: float = TIE) -> dict | None:
    """The chosen trial among finished ones (`{"params": {...}, "value": float}`): the highest
    metric; the trials within `tie` of it go to the lowest learning rate, then to the loss's
    default beta, then to the higher metric. None when none finished."""
    done = [t for t in trials if t.get("value") is not None]
    if not done:
        return None
    best = max(t["value"] for t in done)
    near = [t for t in done if t["value"] >= best - tie]
    return min(near, key=lambda t: (t["params"]["train.learning_rate"],
                                    t["params"].get("train.beta") != default_beta, -t["value"]))


# ------------------------------------------------------------------ the store, seeded from the archive


def trial_keys(arm: str, store: Path, params: dict | None = None) -> dict[str, str]:
    """Stage name -> key of a seed-0 trial of `arm` (any grid point: the round-0 stages do not
    depend on the swept options)."""
    from ampo.cli import RECIPES
    from ampo.config import load_config
    from ampo.dry_run import stage_keys
    from ampo.stage_keys import RunKeys

    params = params or grid_points(arm)[0]
    config = load_config(RECIPES["ifeval"], [*base_overrides(arm, SEED_TUNE, store), *setting_overrides(params),
                                             "out=/nonexistent"])
    return dict(stage_keys(RunKeys(config)))


def seed_store(store: Path, source: Path, arm: str = "ampo+random") -> dict[str, str]:
    """Load the archived round-0 stages of `source` (a run-folder look-alike) into `store` where
    their keys are the ones a trial computes; returns stage -> 'stored' | 'already' | 'key differs'."""
    from ampo.stage_store import UNSHARED, StageStore

    want = trial_keys(arm, store)
    recorded = json.loads((source / "manifest.json").read_text())["stages"]
    st, status = StageStore(store), {}
    for name, entry in recorded.items():
        if name in UNSHARED:
            continue
        if want.get(name) != entry["key"]:
            status[name] = "key differs"
        elif st.has(entry["key"]):
            status[name] = "already"
        else:
            st.root.mkdir(parents=True, exist_ok=True)
            st.put(name.split("/")[-1], entry["key"], source, entry)
            status[name] = "stored" if st.has(entry["key"]) else "not stored"
    return status


# ------------------------------------------------------------------ tuning


# Sweep folders per arm: "grid" holds the full 4 x 2 grid's trials run before the second trim
# (dpo best-vs-worst, ampo+random); "lr" and "beta" are the coordinate design's two stages
STAGES = {"grid": "", "lr": "-lr", "beta": "-beta"}


def sweep_dir(out: Path, arm: str, stage: str) -> Path:
    return out / "sweeps" / (slug(arm) + STAGES[stage])


def next_sweep(archive: Path, arm: str) -> tuple[str, list[dict]] | None:
    return next_sweep_points(arm, archived_trials(archive, arm))


def next_sweep_points(arm: str, trials: list[dict]) -> tuple[str, list[dict]] | None:
    """(stage, points) of the arm's next sweep given its finished `trials`: stage 1 until every
    rate is in, then stage 2; None when the design is complete."""
    stage1 = lr_points(arm)
    if any(find(trials, p) is None for p in stage1):
        return "lr", stage1
    todo = design_points(arm, trials)[len(stage1):]
    return ("beta", todo) if any(find(trials, p) is None for p in todo) else None


def sweep_command(arm: str, out: Path, stage: str, points: list[dict], jobs: int = 1) -> list[str]:
    """`ampo sweep` over `points` (a product of rates and betas)."""
    cmd = [sys.executable, "-m", "ampo.cli", "-q", "sweep", str(ROOT / "src/ampo/recipes/ifeval.yaml"),
           *base_overrides(arm, SEED_TUNE, out / "store"), "--out", str(sweep_dir(out, arm, stage)), "--jobs", str(jobs)]
    for key in points[0]:
        values = sorted({p[key] for p in points})
        cmd += ["--grid", f"{key}=" + ",".join(f"{v:g}" for v in values)]
    return cmd


def trial_record(run_dir: Path) -> dict | None:
    """A finished trial's params and metric (mean_reward and its interval), from its folder."""
    from ampo.config import load_config
    from ampo.sweep import read_metric

    if not (run_dir / "round-0" / "eval.json").is_file():
        return None
    config = load_config(str(run_dir / "config.yaml"), [])
    value, ci = read_metric(run_dir, config, "mean_reward")
    params = {"train.learning_rate": config.train.learning_rate}
    if "beta" in (config.train.hparams or {}):
        params["train.beta"] = float(config.train.hparams["beta"])
    return {"params": params, "value": value, "ci": ci, "loss": config.train.loss}


def archive_trial(run_dir: Path, dest: Path) -> bool:
    """Copy a finished trial's small files (TRIAL_FILES, trial.json) into `dest`, through a
    temporary folder renamed when complete; False when the trial has not finished."""
    if (dest / "trial.json").is_file():
        return True
    record = trial_record(run_dir)
    if record is None:
        return False
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel in TRIAL_FILES:
        if (run_dir / rel).is_file():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run_dir / rel, tmp / rel)
    # the machine that archives a trial is the one that ran it (the driver archives as trials finish);
    # greedy bf16 answers differ between CPU kinds, so trials from two kinds are not quite comparable
    (tmp / "trial.json").write_text(json.dumps({**record, "folder": run_dir.name, "machine": ai.machine()},
                                               indent=1) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return True


def archived_trials(archive: Path, arm: str) -> list[dict]:
    folder = archive / "tuning" / slug(arm)
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*/trial.json"))]


def sync_tuning(out: Path, archive: Path, arms=TUNED_ARMS) -> int:
    """Archive every finished trial (and each sweep's sweep.md); returns how many are archived."""
    total = 0
    for arm in arms:
        for stage, suffix in STAGES.items():
            sd, prefix = sweep_dir(out, arm, stage), f"{stage}-" if suffix else ""
            for run_dir in sorted((sd / "trials").glob("*")) if (sd / "trials").is_dir() else []:
                archive_trial(run_dir, archive / "tuning" / slug(arm) / (prefix + run_dir.name))
            for name in ("sweep.md", "sweep.json"):
                if (sd / name).is_file():
                    (archive / "tuning" / slug(arm)).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(sd / name, archive / "tuning" / slug(arm) / (prefix + name))
        total += n_done(archive, arm)
    return total


def n_done(archive: Path, arm: str) -> int:
    """How many of the arm's design points are archived."""
    trials = archived_trials(archive, arm)
    return sum(find(trials, p) is not None for p in design_points(arm, trials))


def mem_available_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def tune(out: Path, archive: Path, arms: list[str], jobs: int, min_free_gb: float = 11.0) -> None:
    """One `ampo sweep` per arm, `jobs` arms at a time (each one single-threaded process), archiving
    finished trials every minute; once no arm is waiting, a free slot joins a running sweep that
    has trials no process has taken (`ampo sweep-worker` on its folder), so the last, longest arm
    does not run on one core alone. Rerun to continue: finished trials are kept, killed ones resume."""
    ai.check_archive(archive, sizes())
    status = seed_store(out / "store", ai.archive_round0(FIXED_ARCHIVE, SEED_TUNE, "minilm"))
    print("round-0 stages from the fixed-lr archive:", json.dumps(status), flush=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = ai.single_thread_env()
    waiting = [a for a in arms if next_sweep(archive, a)]
    running: dict[str, tuple] = {}  # tag ("ARM", or "ARM +N" for a helper) -> (process, log, arm, stage, points)
    helpers, helped_out = itertools.count(1), set()  # (arm, stage) whose helper ended: no more helpers for it
    last_sync = last_start = 0.0
    while waiting or running:
        # a second process starts only with room for its training process (~9-10 GB) on a shared machine
        # (measured 3 minutes after the last start, when that one's training has its memory)
        while len(running) < jobs and (not running or (
                time.time() - last_start > 180 and mem_available_gb() >= min_free_gb)):
            if waiting:
                arm = waiting.pop(0)
                (stage, points), tag = next_sweep(archive, arm), arm
                cmd = sweep_command(arm, out, stage, points)
            else:
                helped = next((entry for entry in running.values() if (entry[2], entry[3]) not in helped_out
                               and untaken(archive, running, *entry[2:])), None)
                if helped is None:
                    break
                arm, stage, points = helped[2:]
                tag = f"{arm} +{next(helpers)}"  # never reused while another is running
                cmd = [sys.executable, "-m", "ampo.cli", "-q", "sweep-worker", str(sweep_dir(out, arm, stage))]
            last_start = time.time()
            log = open(out / "logs" / f"{slug(arm)}{STAGES[stage]}.log", "a")
            running[tag] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT), log,
                            arm, stage, points)
            print(f"{tag}: {stage} sweep " + ("joined" if tag != arm else "started") + f" (log {log.name})",
                  flush=True)
        time.sleep(5)
        for tag, (proc, log, arm, stage, points) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                del running[tag]
                print(f"{tag}: {stage} sweep ended (exit {proc.returncode})", flush=True)
                if tag != arm:  # a helper ends when no trial is left that it can take (a failed one is not)
                    helped_out.add((arm, stage))
                sync_tuning(out, archive, [arm])
                if any(entry[2] == arm for entry in running.values()):
                    continue  # the arm's last process to end moves it on
                following = next_sweep(archive, arm)
                if proc.returncode == 0 and following and following[0] != stage:
                    waiting.insert(0, arm)  # stage 2 right after stage 1
        if time.time() - last_sync > 60 or not running:
            n = sync_tuning(out, archive, arms)
            last_sync = time.time()
            print(f"{time.strftime('%H:%M:%S')}: {n} of {n_trials(arms)} trials archived", flush=True)


def untaken(archive: Path, running: dict, arm: str, stage: str, points: list[dict]) -> bool:
    """Whether the arm's running sweep has more points left than processes working on it."""
    trials = archived_trials(archive, arm)
    left = sum(find(trials, p) is None for p in points)
    return left > sum(entry[2] == arm for entry in running.values())


# ------------------------------------------------------------------ the final runs


def chosen(archive: Path, arm: str) -> dict | None:
    """The arm's chosen settings among the design's points, once every one is archived (points of
    the full grid outside the design, run before the second trim, are not candidates)."""
    return choose_design(arm, archived_trials(archive, arm))


def choose_design(arm: str, trials: list[dict]) -> dict | None:
    found = [find(trials, p) for p in design_points(arm, trials)]  # stage 1 alone while it is incomplete
    return None if None in found else choose(found, default_beta(arm))


def final_config(arm: str, seed: int, params: dict, folder: Path, store: Path):
    from ampo.cli import RECIPES
    from ampo.config import load_config

    return load_config(RECIPES["ifeval"], [*base_overrides(arm, seed, store), *setting_overrides(params),
                                           f"out={folder}"])


def run_final_unit(out: Path, archive: Path, seed: int, arm: str, params: dict) -> None:
    """One arm at its chosen settings on one seed, then IFEval and IFBench (alignment_ifeval's
    evaluation). Seed 0's config is its tuned trial's, so every stage comes from the store."""
    from ampo.pipeline import Pipeline, load_round_policy

    folder = ai.arm_dir(out / "final", seed, arm)
    if not folder.exists():
        source = ai.archive_round0(FIXED_ARCHIVE, seed, "minilm")
        ai.seed_round0(folder, source, True)
    config = final_config(arm, seed, params, folder, out / "store")
    with Pipeline(config, progress=False) as pipe:
        pipe.run()
    key = json.loads((folder / "manifest.json").read_text())["stages"]["round-0/train"]["key"]
    for name in ai.BENCHMARKS:
        ai.evaluate(name, lambda: load_round_policy(config, [folder / "round-0" / "checkpoint"]), key,
                    folder / "bench" / name, sizes())


def final(out: Path, archive: Path, arms: list[str], jobs: int, unit: str | None = None) -> None:
    if unit == "initial":
        ai.run_initial(out / "final", sizes())
        return
    if unit:
        seed, arm = ai.seed_and_arm(unit)
        run_final_unit(out, archive, seed, arm, chosen(archive, arm)["params"])
        return
    ai.check_archive(archive, sizes())
    import ifeval_recipe

    if ai.copy_initial(ifeval_recipe.ARCHIVE, archive):
        print("the initial policy's evaluation: taken from the IFEval recipe's archive", flush=True)
    # the initial policy is evaluated again here (not copied from the fixed-lr archive): greedy bf16
    # answers need not be identical on another CPU (the fixed-lr study ran on a Xeon with AMX)
    todo = ["initial"] + [f"seed{s}:{a}" for s in sizes().seeds for a in arms if chosen(archive, a)]
    skipped = [a for a in arms if not chosen(archive, a)]
    if skipped:
        print("not tuned yet (skipped):", ", ".join(skipped), flush=True)
    todo = [u for u in todo if not ai.is_finished(archive, u)]
    if jobs <= 1:  # in this process, one unit after another
        for u in todo:
            if u == "initial":
                ai.run_initial(out / "final", sizes())
            else:
                run_final_unit(out, archive, *ai.seed_and_arm(u), chosen(archive, ai.seed_and_arm(u)[1])["params"])
            ai.archive_unit(out / "final", archive, u)
            print(f"{u}: done (archived)", flush=True)
        return

    def archive_if_done(unit: str, code: int) -> None:
        if code == 0:
            ai.archive_unit(out / "final", archive, unit)

    failed = ai.spawn(todo, jobs, lambda u: [sys.executable, str(Path(__file__).resolve()), "--final", "--unit", u,
                                             "--out", str(out), "--archive", str(archive)], out / "logs" / "final",
                      archive_if_done)
    if failed:
        raise SystemExit(f"alignment_ifeval_tuned: {len(failed)} final unit(s) failed: {', '.join(failed)} (logs in "
                         f"{out / 'logs' / 'final'}); rerun the same command to continue")


# ------------------------------------------------------------------ cost estimate and report


def measured(arm: str, stage: str, archive: Path = FIXED_ARCHIVE) -> float | None:
    """The median seconds of `round-0/<stage>` of `arm` in the fixed-lr study's archive (fp32
    training on its Xeon); `grpo all`, not in that study, is taken as `swepo all` (the same 16
    responses per group with activation checkpointing; its `old` pass as swepo's refs)."""
    import statistics

    name = "swepo all" if arm == "grpo all" else arm
    stage = "refs" if stage == "old" else stage
    found = [json.loads(m.read_text())["stages"].get(f"round-0/{stage}", {}).get("seconds")
             for m in archive.glob(f"seed*/{slug(name)}/manifest.json")]
    found = [x for x in found if x]
    return statistics.median(found) if found else None


def estimate_parts(arms: list[str], rates: dict) -> list[tuple[str, float]]:
    """(part, single-thread seconds) of the tuning phase and of the final runs: per arm the fixed-lr
    study's measured stage seconds (`measured`), else `rates` (alignment_ifeval.rates_from)."""
    z = sizes()
    bench_s = sum(ai.BENCH_PROMPTS.values()) * z.eval_tokens * rates["greedy_token"]

    def sec(arm, stage):
        return measured(arm, stage) or {"evaluate": rates["arm_overhead"]}.get(stage, 0.0)

    def refs(arm):  # reference (grpo: sampling-policy) log-probs, once per arm and seed
        return sec(arm, "old" if loss_of(arm) == "grpo" else "refs")

    train = sum(n_design(a) * sec(a, "train") for a in arms)
    heldout = sum(n_design(a) * sec(a, "evaluate") for a in arms)
    final_train = 2 * sum(sec(a, "train") + refs(a) + sec(a, "evaluate") for a in arms)  # seed 0 = the tuned trial
    return [("tuning: training (every trial)", train),
            ("tuning: reference log-probs (once per arm)", sum(refs(a) for a in arms)),
            ("tuning: held-out evaluation (every trial)", heldout),
            ("final: seeds 1 and 2: refs, training, held-out evaluation", final_train),
            ("final: IFEval + IFBench, 3 seeds", 3 * len(arms) * bench_s)]


def estimate_text(arms: list[str], jobs: int, rates: dict, source: str) -> str:
    parts = estimate_parts(arms, rates)
    total = sum(s for _, s in parts)
    tuning = sum(s for name, s in parts if name.startswith("tuning"))
    lines = [f"Cost estimate: {n_trials(arms)} tuning trials on seed 0 ({len(arms)} arms), then {len(arms)} arms x 3 "
             f"seeds with IFEval + IFBench; rates {source}", "", "| part | single-thread hours |", "|---|---|"]
    lines += [f"| {name} | {s / 3600:.1f} |" for name, s in parts]
    lines += [f"| **tuning** | **{tuning / 3600:.1f}** |", f"| **total** | **{total / 3600:.1f}** |", "",
              f"With --jobs {jobs} on {jobs} free cores: tuning about {tuning / 3600 / jobs:.1f} h wall, "
              f"everything about {total / 3600 / jobs:.1f} h."]
    return "\n".join(lines)


def curve_table(trials: list[dict], arm: str) -> str:
    """metric [95% CI] per learning rate (rows) and beta (columns); the chosen trial starred."""
    betas = grid(arm).get("train.beta", [None])
    pick = choose_design(arm, trials)
    design = design_points(arm, trials)
    head = " | ".join(f"beta {b:g}" if b is not None else "metric" for b in betas)
    lines = [f"| learning rate | {head} |", "|---|" + "---|" * len(betas)]
    for lr in LEARNING_RATES:
        cells = []
        for b in betas:
            t = next((t for t in trials if t["params"]["train.learning_rate"] == lr
                      and t["params"].get("train.beta") == b), None)
            if t is None:
                cells.append("–")
                continue
            ci = f" [{t['ci'][0]:.3f}, {t['ci'][1]:.3f}]" if t.get("ci") else ""
            outside = "" if t["params"] in design else " †"
            cells.append(f"{'**' if t is pick else ''}{t['value']:.3f}{ci}{'** ★' if t is pick else ''}{outside}")
        lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def beside_fixed(fixed: dict, tuned_results: dict, choices: dict[str, dict | None]) -> str:
    """Markdown: per arm the average (strict, %) mean ± sd over seeds of the fixed-lr study (lr 3e-4,
    each loss's default beta) beside the tuned study's, with the tuned arm's chosen settings
    (`fixed`, `tuned_results`: the two archives' results.json)."""
    stats = ai_stats()
    names = list(ai.BENCHMARKS)
    lines = ["| arm | chosen settings | " + " | ".join(f"{b}: fixed lr | {b}: tuned" for b in names) + " |",
             "|---|---|" + "---|---|" * len(names)]

    def cell(results, name, arm):
        found = results.get("benchmarks", {}).get(name, {}).get("arms", {}).get(arm)
        if not found:
            return "–"
        mean, sd = stats.over_seeds([m[stats.FIGURES[0]] for m in found])
        return stats._fmt(mean, sd) + (f" ({len(found)})" if sd is not None else "")

    for arm in TUNED_ARMS:
        c = choices.get(arm)
        shown = ", ".join(f"{k.split('.')[-1]} {v:g}" for k, v in c["params"].items()) if c else "not tuned yet"
        lines.append(f"| {arm} | {shown} | " + " | ".join(
            f"{cell(fixed, b, arm)} | {cell(tuned_results, b, arm)}" for b in names) + " |")
    return "\n".join(lines)


# Defaults from evidence (issue 27): the arm whose chosen rate becomes each studied loss's LoRA default
# (`ampo.losses.rates.LORA`): the loss with the grouping its paper trains on (PLAN.md)
DEFAULT_ARMS = {"dpo": "dpo best-vs-worst", "simpo": "simpo best-vs-worst", "ampo": "ampo+optselect",
                "swepo": "swepo all", "grpo": "grpo all"}


def defaults_text(archive: Path) -> str:
    """Each studied loss's LoRA rate as the study chose it (or that it has not yet)."""
    lines = ["| loss | arm | chosen LoRA rate | held-out metric |", "|---|---|---|---|"]
    for loss, arm in DEFAULT_ARMS.items():
        c = chosen(archive, arm)
        lines.append(f"| {loss} | {arm} | " + (f"{c['params']['train.learning_rate']:g} | {c['value']:.3f} |" if c
                                               else "not chosen yet | – |"))
    return "\n".join(lines)


def initial_heldout(archive: Path) -> float | None:
    """The initial policy's held-out metric (`baseline_mean_reward` of any archived trial: every
    trial compares against the same greedy baseline)."""
    for path in sorted((archive / "tuning").glob("*/*/round-0/eval.json")):
        value = json.loads(path.read_text()).get("baseline_mean_reward")
        if value is not None:
            return value
    return None


def summary_table(archive: Path, arms: list[str], initial: float | None) -> str:
    """One row per arm: the chosen settings and metric, whether its interval excludes the initial
    policy's score, and whether the chosen rate is an end of the grid (the grid cannot say
    whether a rate beyond it would be better still)."""
    lines = ["| arm | chosen rate | beta | held-out [95% CI] | interval excludes the initial policy | rate at the "
             "grid's end |", "|---|---|---|---|---|---|"]
    for arm in arms:
        c = chosen(archive, arm)
        if c is None:
            lines.append(f"| {arm} | not chosen yet | | | | |")
            continue
        lr, beta, ci = c["params"]["train.learning_rate"], c["params"].get("train.beta"), c.get("ci")
        excludes = "–" if initial is None or not ci else "yes" if not ci[0] <= initial <= ci[1] else "no"
        edge = "highest" if lr == max(LEARNING_RATES) else "lowest" if lr == min(LEARNING_RATES) else "no"
        shown = f"{c['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        lines.append(f"| {arm} | {lr:g} | {'–' if beta is None else f'{beta:g}'} | {shown} | {excludes} | {edge} |")
    return "## Summary\n\n" + "\n".join(lines) + "\n"


def report(archive: Path, arms: list[str]) -> str:
    md = ["# Tuned IFEval study: tuning (seed 0)\n",
          "Metric: `mean_reward`, the `ifeval` reward of one greedy answer per held-out training-style prompt "
          "(32 prompts), 95% bootstrap interval over prompts. Chosen: the highest metric, ties within "
          f"{TIE} to the lower learning rate (★), among the coordinate design's points (PLAN.md, second trim): "
          "every rate at the loss's default beta, then the other beta at that stage's chosen rate. † marks "
          "points of the full grid run before the second trim: shown, never chosen.\n"]
    initial = initial_heldout(archive)
    if initial is not None:
        md.append(f"The initial policy's greedy answers score {initial:.3f} on this metric (the same 32 prompts).\n")
    noise = archive / "heldout_noise.json"
    if noise.is_file():
        draws = [v["mean_reward"] for k, v in json.loads(noise.read_text()).items() if k.startswith("weights")]
        md.append(f"The metric's floor (PLAN.md; `benchmarks/heldout_noise.py`): the initial policy with its weights "
                  f"perturbed by a relative 1e-4 scores {sum(draws) / len(draws):.3f} on average over {len(draws)} "
                  f"draws (range {min(draws):.3f} to {max(draws):.3f}): differences of a few hundredths are noise.\n")
    md.append(summary_table(archive, arms, initial))
    for arm in arms:
        trials = archived_trials(archive, arm)
        c = chosen(archive, arm)
        md += [f"## {arm}\n", f"{n_done(archive, arm)} of {n_design(arm)} design trials finished; chosen: "
               + (", ".join(f"{k}={v:g}" for k, v in c["params"].items()) + f" ({c['value']:.3f})" if c else
                  "not yet (every trial of the design must finish first)") + "\n", curve_table(trials, arm), ""]
    text = "\n".join(md) + "\n"
    (archive / "tuning.md").write_text(text)
    finals = [f"seed{s}:{a}" for s in sizes().seeds for a in arms if ai.is_finished(archive, f"seed{s}:{a}")]
    if finals:
        from alignment_report import analyse

        analyse(archive, sizes(), [a for a in arms if any(u.endswith(":" + a) for u in finals)], baselines=BASELINES,
                seed_intervals=True, leave_out="punctuation:no_comma")
        text += ("\n## Beside the fixed-lr study\n\nAverage (strict, %) mean ± sd over seeds (how many); "
                 "the fixed-lr study trained every arm at lr 3e-4 with each loss's default beta "
                 "(results/alignment_ifeval/), the tuned one at the settings chosen above. Paired differences: "
                 "alignment.md.\n\n" + beside_fixed(json.loads((FIXED_ARCHIVE / "results.json").read_text()),
                                                    json.loads((archive / "results.json").read_text()),
                                                    {a: chosen(archive, a) for a in TUNED_ARMS}) + "\n")
        (archive / "tuning.md").write_text(text)
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", action="store_true", help="print the grid per arm")
    ap.add_argument("--estimate", action="store_true", help="print the cost, from the fixed-lr study's measured rates")
    ap.add_argument("--tune", action="store_true", help="run (or continue) the tuning sweeps on seed 0")
    ap.add_argument("--sync", action="store_true", help="archive the finished trials")
    ap.add_argument("--final", action="store_true", help="chosen settings x seeds 0,1,2, with IFEval and IFBench")
    ap.add_argument("--report", action="store_true", help="tuning.md (and alignment.md from finished final units)")
    ap.add_argument("--defaults", action="store_true",
                    help="each studied loss's LoRA rate as chosen (for ampo.losses.rates.LORA)")
    ap.add_argument("--unit", help=argparse.SUPPRESS)
    ap.add_argument("--arms", nargs="+", help="a subset of the arms")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--min-free-gb", type=float, default=11.0,
                    help="--tune: start another arm's sweep beside a running one only with this much memory free")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--archive", default=str(ARCHIVE))
    args = ap.parse_args(argv)
    arms = [a for a in TUNED_ARMS if a in (args.arms or TUNED_ARMS)]
    if set(args.arms or []) - set(TUNED_ARMS):
        raise SystemExit(f"unknown arm(s) {sorted(set(args.arms) - set(TUNED_ARMS))}; known: {TUNED_ARMS}")
    out, archive = Path(args.out).resolve(), Path(args.archive).resolve()  # the sweeps run from the repository root
    if args.plan:
        print(plan_table(arms))
    elif args.estimate:
        print(estimate_text(arms, args.jobs, ai.rates_from(FIXED_ARCHIVE),
                            f"measured in {FIXED_ARCHIVE.relative_to(ROOT)} (fp32 training on a Xeon)"))
    elif args.tune:
        tune(out, archive, arms, args.jobs, args.min_free_gb)
    elif args.sync:
        print(sync_tuning(out, archive, arms), "trials archived")
    elif args.final:
        final(out, archive, arms, args.jobs, args.unit)
    elif args.report:
        print(report(archive, arms))
    elif args.defaults:
        print(defaults_text(archive))
    else:
        ap.print_help()


if __name__ == "__main__":
    main()
