"""The alignment benchmark on IFEval (`bench_alignment.py --task ifeval`): does active selection of
negatives beat best-vs-worst pairs, the sweet-spot pair and random negatives at equal compute?

Per seed, one round-0 pool (the same prompts, N samples each, the same `ifeval` rewards, MiniLM and
policy embeddings) is made once and copied into every arm's run folder; each arm then selects,
trains one round (optionally two: `--rounds 2`, the second on its own pool) with the same number of
optimizer steps (one group per prompt, the same prompts per step), and its final policy is
evaluated greedily on IFEval (541 prompts) and IFBench (300). The initial policy is evaluated once,
shared by every seed. Everything is cached: the pipeline's stages are keyed and resumable, the
benchmark generation resumes from its finished shards, and a finished evaluation is not redone.

Units of work: `initial` (the initial policy's evaluation) and `seedS:ARM` (one arm of one seed,
after the seed's pool exists); `--jobs J` runs J units at once as single-threaded processes
(OMP_NUM_THREADS=1), logs in OUT/logs/. The report (OUT/alignment.md, results.json, alignment.png)
is alignment_report.py's, written at the end of a run and by `--report`.

`--archive DIR` keeps a second, small copy of every finished unit (what the report reads: the
benchmark answers and scores, the manifest, the selection, and once per seed the round-0 pool),
meant to be committed: a run on a fresh machine counts the archived units as done, takes their
seeds' pools from it, and `--report --out DIR` reports from it alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from seed_run import copy_stages

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("ifeval", "ifbench")
BENCH_PROMPTS = {"ifeval": 541, "ifbench": 300}

# Arm -> overrides of the ifeval recipe. `bottomk` and `random` read no embedding, and training reads
# none either, so their arms on the policy's hidden states would train exactly the same policy as
# the MiniLM ones: they are not run twice.
ARMS: dict[str, list[str]] = {
    "ampo+optselect": ["select.strategy=optselect", "train.loss=ampo"],
    "ampo+optselect+policy-emb": ["select.strategy=optselect", "train.loss=ampo", "embed.embedder=policy"],
    "ampo+coreset": ["select.strategy=coreset", "train.loss=ampo"],
    "ampo+coreset+policy-emb": ["select.strategy=coreset", "train.loss=ampo", "embed.embedder=policy"],
    "ampo+bottomk": ["select.strategy=bottomk", "train.loss=ampo"],
    "ampo+random": ["select.strategy=random", "train.loss=ampo"],
    "dpo best-vs-worst": ["select.strategy=best_worst", "select.k=1", "train.loss=dpo"],
    "simpo best-vs-worst": ["select.strategy=best_worst", "select.k=1", "train.loss=simpo"],
    "dpo sweet-spot": ["select.strategy=sweet_spot", "select.k=1", "train.loss=dpo"],
    # 4 groups of 16 without activation checkpointing exceeded 15 GiB and were OOM-killed on the
    # 24 GiB box beside a second job; checkpointing recomputes, same values, less memory
    "swepo all": ["select.strategy=all", "train.loss=swepo", "train.gradient_checkpointing=true"],
    # Diagnostic arms: SWEPO on the very groups of 8 that ampo+random and ampo+optselect train on, so
    # that the loss (against ampo+random), the set (against swepo all) and active selection under
    # SWEPO (against swepo+random) are each measured on their own (alignment_report.CONTRASTS)
    "swepo+random": ["select.strategy=random", "train.loss=swepo"],
    "swepo+optselect": ["select.strategy=optselect", "train.loss=swepo"],
}
POOL_FILES = ("split.json", "round-0/pool.parquet", "round-0/rewards.parquet")
POOL_STAGES = ("split", "round-0/generate", "round-0/score")
EMBEDDER_FILES = ("round-0/embeddings.npy", "baseline/samples.parquet", "baseline/summary.json")
EMBEDDER_STAGES = ("round-0/embed", "baseline")

# Seconds per unit on ONE thread of this project's 2-core box (AMD EPYC, fp32), for `--estimate`.
# Provisional: derived from figures measured elsewhere, not from this benchmark (docs/benchmarks.md):
# sampling 154 tokens/s on one thread with continuous batching (models_generation.md); greedy IFEval
# answers ~1.5 s per prompt on 2 threads at 256 tokens (the lead's run, answers often at the cap,
# i.e. ~0.013 s per token and thread); the ifeval reward ~3 ms per
# response (ifeval.md); training, references and policy embeddings from their FLOPs (6, 2 and 2 x
# 134.5M per token) at ~40 GFLOP/s, half the measured one-thread matmul limit. Replace them with
# `--estimate --rates-from SMALL_RUN` once a small run of this benchmark has finished on the machine.
RATES = {
    "sample_token": 0.0065,   # pool sampling: per generated token (N rows per prompt, batched)
    "greedy_token": 0.013,    # benchmark greedy decoding: per generated token (answers run to the cap)
    "score_response": 0.004,  # ifeval reward: per response
    "minilm_response": 0.01,  # MiniLM embedding: per response
    "policy_response": 0.7,   # policy hidden-state embedding: per response of ~128 tokens
    "train_token": 0.025,     # training: per token of a selected response, one epoch (+ the shared prompt)
    "ref_token": 0.008,       # reference log-probs: per token of a selected response
    "arm_overhead": 120.0,    # per arm: selection, the held-out evaluation (32 prompts), loading
}


@dataclass(frozen=True)
class Sizes:
    seeds: tuple[int, ...]
    train_prompts: int
    heldout: int
    n: int
    k: int
    gen_tokens: int
    eval_tokens: int
    limit: int
    rounds: int

    def overrides(self, seed: int) -> list[str]:
        return [f"seed={seed}", f"rounds={self.rounds}", f"data.train_prompts={self.train_prompts}",
                f"data.heldout={self.heldout}", f"generate.n={self.n}", f"select.k={self.k}",
                f"generate.max_new_tokens={self.gen_tokens}", f"eval.max_new_tokens={self.gen_tokens}",
                "eval.samples_per_prompt=1", "eval.benchmarks=[]", "train.prompts_per_step=4",
                "train.shared_prefix=true",  # the prompt forwarded once per group: same values, less time
                "train.save_steps=4",  # a killed unit resumes its training from the last 4 steps (same values)
                # the recipe file's options that this benchmark predates (issue 28 changed them), pinned
                # to the values its archived units were made with
                "score.unfinished_reward=null", "select.min_margin=null", "eval.temperature=0.8",
                "eval.benchmark_max_new_tokens=256"]


def sizes_from(args) -> Sizes:
    quick = args.quick
    return Sizes(seeds=tuple(args.seeds or ([0] if quick else [0, 1, 2])),
                 train_prompts=args.train_prompts or (4 if quick else 64), heldout=1 if quick else 32,
                 n=args.n or (4 if quick else 16), k=args.k or (2 if quick else 7),
                 gen_tokens=args.gen_tokens or (12 if quick else 128),
                 eval_tokens=args.eval_tokens or (12 if quick else 128),
                 limit=args.limit if args.limit is not None else (3 if quick else 0), rounds=args.rounds)


def arm_dir(out: Path, seed: int, arm: str) -> Path:
    return out / f"seed{seed}" / arm.replace(" ", "_")


def embedder_of(arm: str) -> str:
    return "policy" if "embed.embedder=policy" in ARMS[arm] else "minilm"


# ------------------------------------------------------------------ one arm


# The fixed-lr study's one learning rate and LoRA size for every arm (the ifeval recipe's when it ran;
# spelled out so that the recipe can take the tuned study's choice; the tuned study sweeps the rate)
FIXED_LR = ["train.learning_rate=3e-4", "model.lora_r=16", "model.lora_alpha=32"]


def arm_config(arm: str, sizes: Sizes, seed: int, folder: Path):
    """The arm's run config: the ifeval recipe, the benchmark's sizes and `FIXED_LR`, then the
    arm's own options (last, so that a pair arm's select.k=1 wins)."""
    from ampo.cli import RECIPES
    from ampo.config import load_config

    return load_config(RECIPES["ifeval"], [*sizes.overrides(seed), *FIXED_LR, *ARMS[arm], f"out={folder}"])


def seed_round0(folder: Path, source: Path, with_embedder: bool) -> None:
    """Copy a seed's round-0 pool (and, `with_embedder`, its embeddings and held-out baseline, which
    depend on the embedder) from the run folder `source` into the new arm folder `folder`, with their
    manifest entries, so that the pipeline finds those stages done."""
    files, stages = POOL_FILES + (EMBEDDER_FILES if with_embedder else ()), POOL_STAGES + (
        EMBEDDER_STAGES if with_embedder else ())
    tmp = folder.with_name(folder.name + ".partial")  # renamed when complete: a kill mid-copy leaves no
    shutil.rmtree(tmp, ignore_errors=True)           # half folder that the pipeline would fill by regenerating
    tmp.mkdir(parents=True)
    copy_stages(source, tmp, files, stages)
    os.replace(tmp, folder)


def round0_source(out: Path, archive: Path | None, seed: int, arm: str, arms: list[str]) -> tuple[Path, bool] | None:
    """Where a new arm folder takes its seed's round-0 pool from, and whether its embeddings too: the
    first folder (another arm's in `out`, then the archive's copies) holding the pool and the arm's
    embeddings, else the first holding the pool; None when there is none (the arm makes it)."""
    candidates = [(arm_dir(out, seed, a), embedder_of(a)) for a in arm_order(arms) if a != arm]
    if archive is not None:
        candidates += [(archive_round0(archive, seed, e), e) for e in ("minilm", "policy")]
    with_pool = [f for f, _ in candidates if all((f / name).is_file() for name in POOL_FILES)]
    with_emb = [f for f, e in candidates if f in with_pool and e == embedder_of(arm)
                and all((f / name).is_file() for name in EMBEDDER_FILES)]
    return (with_emb[0], True) if with_emb else (with_pool[0], False) if with_pool else None


def run_arm(out: Path, seed: int, arm: str, sizes: Sizes, arms: list[str], archive: Path | None = None) -> None:
    """The arm's pipeline run (reusing the seed's round-0 pool and, where they exist, the embeddings
    of its embedder: `round0_source`), then its benchmark evaluations."""
    from ampo.pipeline import Pipeline

    folder = arm_dir(out, seed, arm)
    source = None if folder.exists() else round0_source(out, archive, seed, arm, arms)
    if source:
        seed_round0(folder, *source)
    config = arm_config(arm, sizes, seed, folder)
    with Pipeline(config, progress=False) as pipe:  # releases the run folder's lock when done
        pipe.run()
    manifest = json.loads((folder / "manifest.json").read_text())
    key = manifest["stages"][f"round-{sizes.rounds - 1}/train"]["key"]

    def policy():
        from ampo.pipeline import load_round_policy

        return load_round_policy(config, [folder / f"round-{r}" / "checkpoint" for r in range(sizes.rounds)])

    for name in BENCHMARKS:
        evaluate(name, policy, key, folder / "bench" / name, sizes)


def arm_order(arms: list[str]) -> list[str]:
    """The order arms run in within a seed: ARMS' order (the MiniLM pool source first)."""
    return [a for a in ARMS if a in arms]


# Prompts per benchmark generation shard: a shard's prompts share the continuous batch, so this
# sets which answers decode together, and bf16 greedy answers depend on that (docs/models_generation.md,
# "bf16 greedy answers depend on the batch"); every policy of a study must be measured with the same
# value. 32 for the fixed-lr study (results/alignment_ifeval); 128 since (1.3x faster).
EVAL_SHARD = 128


def evaluation_key(name: str, key: str, sizes: Sizes) -> str:
    """What `done.json` records for benchmark `name` of the policy `key` at these sizes."""
    from ampo.config import config_key

    return config_key("alignment-eval", name, key, sizes.eval_tokens, sizes.limit,
                      *([EVAL_SHARD] if EVAL_SHARD != 32 else []))


def evaluate(name: str, load_policy, key: str, out: Path, sizes: Sizes) -> dict:
    """The policy's greedy evaluation on benchmark `name` into `out` (metrics.json, results.jsonl,
    responses.jsonl), unless `out/done.json` records the same policy and settings. Resumes from
    finished generation shards. Records the seconds it took in done.json."""
    from ampo.data import write_json
    from ampo.ifeval.evaluate import evaluate_policy, output_lock

    done_key = evaluation_key(name, key, sizes)
    done = out / "done.json"
    if done.is_file() and (out / "metrics.json").is_file() and json.loads(done.read_text()).get("key") == done_key:
        return json.loads((out / "metrics.json").read_text())
    done.unlink(missing_ok=True)  # another policy's or settings' record: until this one is done, none
    t0 = time.perf_counter()
    policy = load_policy()
    with output_lock(out):
        metrics = evaluate_policy(name, policy, out, key=key, limit=sizes.limit, seed=0,
                                  max_new_tokens=sizes.eval_tokens, prompts_per_batch=16, shard_prompts=EVAL_SHARD,
                                  progress=False)
        write_json(done, {"key": done_key, "seconds": round(time.perf_counter() - t0, 1),
                          "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(),
                          "shard": EVAL_SHARD})
    return metrics


def machine() -> str:
    """The CPU model and its bf16 instructions: greedy bf16 answers can differ between CPU kinds."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return " ".join([model, *sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16"))])


def run_initial(out: Path, sizes: Sizes) -> None:
    from ampo.config import config_key
    from ampo.models import DEFAULT_POLICY, load_policy

    for name in BENCHMARKS:
        evaluate(name, lambda: load_policy(DEFAULT_POLICY), config_key("initial", DEFAULT_POLICY),
                 out / "initial" / name, sizes)


# ------------------------------------------------------------------ the archive (meant to be committed)

BENCH_FILES = ("done.json", "metrics.json", "results.jsonl", "responses.jsonl")  # one evaluation's, as the report reads it


def seed_and_arm(unit: str) -> tuple[int, str]:
    """`seedS:ARM` -> (S, ARM)."""
    seed, arm = unit.split(":", 1)
    return int(seed.removeprefix("seed")), arm


def unit_dir(out: Path, unit: str) -> Path:
    return out / "initial" if unit == "initial" else arm_dir(out, *seed_and_arm(unit))


def bench_dir(out: Path, unit: str, name: str) -> Path:
    return unit_dir(out, unit) / ("" if unit == "initial" else "bench") / name


def is_finished(out: Path, unit: str) -> bool:
    return all((bench_dir(out, unit, name) / "done.json").is_file() for name in BENCHMARKS)


def archive_round0(archive: Path, seed: int, embedder: str) -> Path:
    """The archive's copy of a seed's round-0 pool with one embedder's embeddings: a run-folder
    look-alike (files and their manifest entries) that `seed_round0` copies from."""
    return archive / f"seed{seed}" / f"round0-{embedder}"


def check_archive(archive: Path, sizes: Sizes) -> None:
    """Record the sizes and the dtype generation runs in on this machine (`generate.dtype=auto`:
    bf16 on CPUs with native bf16 matmuls, else fp32) in a new archive; refuse one that holds
    results at other sizes or generated in another dtype, whose units would not be comparable."""
    from ampo.stage_keys import generation_dtype

    record = archive / "sizes.json"
    want = {**{k: v for k, v in asdict(sizes).items() if k != "seeds"}, "generation_dtype": generation_dtype("auto")}
    if record.is_file():
        have = json.loads(record.read_text())
        if have != want:
            raise SystemExit(f"bench_alignment: {archive} holds results at other sizes or generated in another "
                             f"dtype {have}, not {want} as here; give another --archive")
    else:
        archive.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(want, indent=1) + "\n")


def copy_initial(source: Path, archive: Path) -> bool:
    """Take the initial policy's evaluation from another archive (the tuned study's or the recipe's:
    the same policy, greedy) when this one lacks it and both measured at the same length, on the
    same prompts, in the same generation dtype (their `sizes.json`), on this kind of CPU and in
    shards of `EVAL_SHARD` prompts (greedy bf16 answers can differ between CPU kinds and batch
    layouts; `done.json`'s `machine` and `shard`); True when it was copied."""
    if is_finished(archive, "initial") or not is_finished(source, "initial"):
        return False
    done = [json.loads((bench_dir(source, "initial", name) / "done.json").read_text()) for name in BENCHMARKS]
    if any((d.get("shard"), d.get("machine")) != (EVAL_SHARD, machine()) for d in done):
        return False
    have, want = (json.loads((a / "sizes.json").read_text()) for a in (source, archive))
    if any(have.get(k) != want.get(k) for k in ("eval_tokens", "limit", "generation_dtype")):
        return False
    tmp = archive / "initial.partial"  # renamed when complete, as `archive_unit` does
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source / "initial", tmp)
    shutil.rmtree(archive / "initial", ignore_errors=True)
    os.replace(tmp, archive / "initial")
    return True


def archive_unit(out: Path, archive: Path, unit: str) -> None:
    """Copy a finished unit's results from `out` into `archive` (through a temporary folder, renamed
    when complete), and, the first time a seed's pool comes by with an embedder, that pool."""
    dest = unit_dir(archive, unit)
    if is_finished(archive, unit):
        return
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in BENCHMARKS:
        for file in BENCH_FILES:
            target = tmp / name if unit == "initial" else tmp / "bench" / name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(bench_dir(out, unit, name) / file, target / file)
    if unit != "initial":
        folder = unit_dir(out, unit)
        shutil.copy2(folder / "manifest.json", tmp / "manifest.json")
        if (folder / "round-0" / "selection.parquet").is_file():
            (tmp / "round-0").mkdir()
            shutil.copy2(folder / "round-0" / "selection.parquet", tmp / "round-0" / "selection.parquet")
        seed, arm = seed_and_arm(unit)
        pool = archive_round0(archive, seed, embedder_of(arm))
        if not pool.exists() and all((folder / name).is_file() for name in POOL_FILES + EMBEDDER_FILES):
            partial = pool.with_name(pool.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            seed_round0(partial, folder, True)
            os.replace(partial, pool)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def sync_archive(out: Path, archive: Path, todo) -> set[str]:
    """Archive the units finished in `out` that the archive lacks; return the units it holds."""
    for unit in todo:
        if is_finished(out, unit):
            archive_unit(out, archive, unit)
    return {unit for unit in todo if is_finished(archive, unit)}


def units(sizes: Sizes, arms: list[str]) -> dict[str, list[str]]:
    """Every unit of work and the units it waits for: `seedS:ARM` (one arm of one seed) waits for
    the seed's first arm (which makes the round-0 pool) and, for a policy-embedding arm, for the
    seed's first policy-embedding arm (which makes those embeddings); `initial` waits for nothing.
    In this order, every unit comes after the ones it waits for."""
    order = arm_order(arms)
    out: dict[str, list[str]] = {}
    for seed in sizes.seeds:
        for arm in order:
            first_same = next(a for a in order if embedder_of(a) == embedder_of(arm))
            out[f"seed{seed}:{arm}"] = [f"seed{seed}:{a}" for a in dict.fromkeys((order[0], first_same)) if a != arm]
    out["initial"] = []
    return out


def has_round0(out: Path, archive: Path | None, unit: str, arms: list[str]) -> bool:
    """Whether a unit can start before the units it waits for: its folder exists (it resumes), or its
    seed's pool and its embedder's embeddings are there to copy (`round0_source`)."""
    if unit == "initial" or unit_dir(out, unit).exists():
        return True
    seed, arm = seed_and_arm(unit)
    source = round0_source(out, archive, seed, arm, arms)
    return bool(source and source[1])


def run_unit(unit: str, out: Path, sizes: Sizes, arms: list[str], archive: Path | None = None) -> None:
    t0 = time.perf_counter()
    if unit == "initial":
        run_initial(out, sizes)
    else:
        run_arm(out, *seed_and_arm(unit), sizes, arms, archive)
    print(f"{unit}: done ({time.perf_counter() - t0:.0f} s this call)", flush=True)


# ------------------------------------------------------------------ several units, several processes


def run_all(args, sizes: Sizes, arms: list[str]) -> None:
    """Every unit, `args.jobs` at a time as single-threaded processes, each as soon as the units it
    waits for are done (in `units` order); with one job, in this process, one after another."""
    out, archive = Path(args.out), args.archive and Path(args.archive)
    todo = units(sizes, arms)
    archived = set()
    if archive:
        check_archive(archive, sizes)
        archived = sync_archive(out, archive, todo)
        if archived:
            print(f"{len(archived)} unit(s) found finished in the archive {archive}: not run again", flush=True)
    if args.jobs <= 1:
        for unit in todo:
            if unit not in archived:
                run_unit(unit, out, sizes, arms, archive)
                if archive:
                    archive_unit(out, archive, unit)
        return

    def waits_for(unit: str) -> list[str]:  # nothing once its seed's pool is there to copy
        return [] if has_round0(out, archive, unit, arms) else [u for u in todo[unit] if u not in archived]

    def finished(unit: str, code: int) -> None:
        if code == 0 and archive:
            archive_unit(out, archive, unit)

    def command(unit: str) -> list[str]:
        return [sys.executable, str(HERE / "bench_alignment.py"), *worker_argv(args, sizes, arms), "--unit", unit]

    failed = spawn([u for u in todo if u not in archived], args.jobs, command, out / "logs", finished, waits_for)
    if failed:
        raise SystemExit(f"bench_alignment: {len(failed)} unit(s) failed or skipped: {', '.join(sorted(failed))} "
                         f"(logs in {out / 'logs'}); rerun the same command to continue")


def single_thread_env() -> dict:
    """The environment of a worker process: one thread for every math library, offline."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1"}


def spawn(units: list[str], jobs: int, command: Callable[[str], list[str]], log_dir: Path,
          on_exit: Callable[[str, int], None] = lambda unit, code: None,
          waits_for: Callable[[str], list[str]] = lambda unit: []) -> list[str]:
    """Run each unit's `command(unit)` as a single-threaded process, `jobs` at a time, in order,
    logging to `log_dir/<unit>.log`; `on_exit(unit, exit code)` as each ends. A unit starts once
    the units of this call it `waits_for` (asked again each time) have succeeded, and is skipped
    if one of them failed. Returns the failed and skipped units."""
    env = single_thread_env()
    log_dir.mkdir(parents=True, exist_ok=True)
    todo, running, done, failed = list(units), {}, set(), []
    while todo or running:
        for unit in [u for u in todo if set(waits_for(u)) & set(failed)]:
            todo.remove(unit)
            failed.append(unit)
            print(f"{time.strftime('%H:%M:%S')} {unit}: skipped (waits for a failed unit)", flush=True)
        ready = [u for u in todo if set(waits_for(u)) <= done]
        if todo and not ready and not running:
            raise ValueError(f"spawn: {', '.join(todo)} wait for units that are not run")
        while ready and len(running) < jobs:
            unit = ready.pop(0)
            todo.remove(unit)
            log = open(log_dir / f"{unit.replace(':', '_').replace(' ', '_')}.log", "a")
            running[unit] = (subprocess.Popen(command(unit), stdout=log, stderr=subprocess.STDOUT, env=env), log)
            print(f"{time.strftime('%H:%M:%S')} {unit}: started (log {log.name})", flush=True)
        time.sleep(5)
        for unit, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                del running[unit]
                on_exit(unit, proc.returncode)
                if proc.returncode == 0:
                    done.add(unit)
                else:
                    failed.append(unit)
                print(f"{time.strftime('%H:%M:%S')} {unit}: "
                      + ("done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"), flush=True)
    return failed


def worker_argv(args, sizes: Sizes, arms: list[str]) -> list[str]:
    """The command-line of one unit's process: the same sizes, one thread."""
    argv = ["--task", "ifeval", "--out", str(args.out), "--seeds", *map(str, sizes.seeds),
            "--arms", *arms, "--train-prompts", str(sizes.train_prompts), "--n", str(sizes.n), "--k", str(sizes.k),
            "--gen-tokens", str(sizes.gen_tokens), "--eval-tokens", str(sizes.eval_tokens),
            "--limit", str(sizes.limit), "--rounds", str(sizes.rounds)]
    return argv + (["--quick"] if args.quick else []) + (["--archive", str(args.archive)] if args.archive else [])


# ------------------------------------------------------------------ cost estimate


def estimate(sizes: Sizes, arms: list[str], jobs: int, rates: dict = RATES) -> list[tuple[str, float]]:
    """(part, single-thread seconds) for the whole benchmark at these sizes, from `rates`."""
    from ampo.losses import LOSSES

    p, n, g = sizes.train_prompts, sizes.n, sizes.gen_tokens
    seeds = len(sizes.seeds)
    bench_prompts = sum(min(sizes.limit, v) if sizes.limit else v for v in BENCH_PROMPTS.values())
    policy_arms = [a for a in arms if embedder_of(a) == "policy"]
    parts = [
        ("round-0 pools: sampling", seeds * p * n * g * rates["sample_token"]),
        ("round-0 pools: ifeval reward", seeds * p * n * rates["score_response"]),
        ("round-0 pools: MiniLM embeddings", seeds * p * n * rates["minilm_response"]),
        ("round-0 pools: policy embeddings", seeds * p * n * rates["policy_response"] * bool(policy_arms)),
    ]
    train = refs = 0.0
    for arm in arms:
        overrides = dict(o.split("=", 1) for o in ARMS[arm])
        group = n if overrides["select.strategy"] == "all" else int(overrides.get("select.k", sizes.k)) + 1
        train += seeds * p * group * g * rates["train_token"]
        if LOSSES[overrides["train.loss"]].refs:
            refs += seeds * p * group * g * rates["ref_token"]
    parts += [("training (one round, every arm)", train), ("reference log-probs", refs)]
    if sizes.rounds > 1:
        extra = (sizes.rounds - 1) * seeds * len(arms) * p * n * (g * rates["sample_token"] + rates["score_response"])
        parts.append((f"rounds 2..{sizes.rounds}: each arm's own pool (+ training as above)", extra + (
            sizes.rounds - 1) * (train + refs)))
    parts += [("per arm: selection, held-out evaluation, loading", seeds * len(arms) * rates["arm_overhead"]),
              ("benchmarks: each arm's final policy", seeds * len(arms) * bench_prompts * sizes.eval_tokens
               * rates["greedy_token"]),
              ("benchmarks: the initial policy (once)", bench_prompts * sizes.eval_tokens * rates["greedy_token"])]
    return parts


def rates_from(out: Path) -> dict:
    """Single-thread seconds per unit (the keys of RATES) measured by a finished run in `out`, from
    its results.json (sizes and timings): what RATES was set from."""
    from ampo.losses import LOSSES

    saved = json.loads((out / "results.json").read_text())
    z, t = Sizes(**{**saved["sizes"], "seeds": tuple(saved["sizes"]["seeds"])}), saved["timings"]
    arms = saved["arms"]

    def total(part):
        return t[part]["total_s"] if part in t else 0.0

    def count(part):
        return t[part]["count"] if part in t else 0

    responses = z.train_prompts * z.n
    groups = {a: z.n if "select.strategy=all" in ARMS[a] else (2 if "select.k=1" in ARMS[a] else z.k + 1) for a in arms}
    with_refs = [a for a in arms if LOSSES[dict(o.split("=", 1) for o in ARMS[a])["train.loss"]].refs]
    per_seed = lambda names: max(1, count("train") / max(len(arms), 1)) * z.train_prompts * z.gen_tokens * sum(
        groups[a] for a in names)
    greedy = sum(total(f"benchmark {b} ({w})") for b in BENCHMARKS for w in ("arm", "initial"))
    greedy_tokens = sum(count(f"benchmark {b} ({w})") * (min(z.limit, BENCH_PROMPTS[b]) if z.limit else
                                                         BENCH_PROMPTS[b]) * z.eval_tokens
                        for b in BENCHMARKS for w in ("arm", "initial"))
    return {
        "sample_token": total("generate") / max(1, count("generate") * responses * z.gen_tokens),
        "greedy_token": greedy / max(1, greedy_tokens),
        "score_response": total("score") / max(1, count("score") * responses),
        "minilm_response": total("embed (minilm)") / max(1, count("embed (minilm)") * responses),
        "policy_response": total("embed (policy)") / max(1, count("embed (policy)") * responses),
        "train_token": total("train") / max(1, per_seed(arms)),
        "ref_token": total("refs") / max(1, per_seed(with_refs)),
        "arm_overhead": (total("select") + total("evaluate") + total("baseline (minilm)") + total("baseline (policy)"))
        / max(1, count("evaluate")),
    }


def estimate_table(sizes: Sizes, arms: list[str], jobs: int, rates: dict = RATES) -> str:
    parts = estimate(sizes, arms, jobs, rates)
    total = sum(s for _, s in parts)
    lines = [f"Cost estimate: {len(arms)} arms x {len(sizes.seeds)} seeds, {sizes.train_prompts} training prompts x "
             f"N={sizes.n} at {sizes.gen_tokens} tokens, k={sizes.k}, {sizes.rounds} round(s), benchmarks "
             f"{'all prompts' if not sizes.limit else f'{sizes.limit} prompts each'} at {sizes.eval_tokens} tokens "
             f"(single-thread rates: RATES in {Path(__file__).name} or --rates-from)", "",
             "| part | single-thread hours | share |", "|---|---|---|"]
    lines += [f"| {name} | {s / 3600:.2f} | {s / total:.0%} |" for name, s in parts]
    lines += [f"| **total** | **{total / 3600:.1f}** | |", "",
              f"With --jobs {jobs} on {jobs} free cores: about {total / 3600 / max(jobs, 1):.1f} h wall "
              f"({len(sizes.seeds) * len(arms) + 1} units of one arm and seed each, or the initial policy; "
              "a seed's other arms wait for the arm that makes its pool)."]
    return "\n".join(lines)



def main(args) -> None:
    arms = [a for a in ARMS if a in (args.arms or list(ARMS))]
    unknown = set(args.arms or []) - set(ARMS)
    if unknown:
        raise SystemExit(f"bench_alignment: unknown arm(s) {sorted(unknown)}; known: {list(ARMS)}")
    sizes = sizes_from(args)
    from alignment_report import analyse  # here, not at the top: the report reads this module's layout

    if args.estimate:
        rates = rates_from(Path(args.rates_from)) if args.rates_from else RATES
        if args.rates_from:
            print("rates measured in", args.rates_from, json.dumps({k: float(f"{v:.3g}") for k, v in rates.items()}))
        print(estimate_table(sizes, arms, args.jobs, rates))
        return
    out = Path(args.out)
    if args.report:
        if not out.is_dir():
            raise SystemExit(f"bench_alignment: {out} does not exist: nothing to report")
        analyse(out, sizes, arms)
        print((out / "alignment.md").read_text())
        return
    if args.unit:
        run_unit(args.unit, out, sizes, arms, args.archive and Path(args.archive))
        return
    run_all(args, sizes, arms)
    reported = Path(args.archive) if args.archive else out  # the archive holds every finished unit
    analyse(reported, sizes, arms)
    print((reported / "alignment.md").read_text())
