"""`ampo sweep` (a study over `ampo run`'s options, docs/sweep.md) and `ampo sweep-worker` (one of
its `--jobs` processes)."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("ampo")

POLL_S = 2.0  # how often the coordinator of --jobs N > 1 reads the study


def build_sweep(args):
    """The `Sweep` of the command line, checked before any model loads (one ConfigError line)."""
    from ..config import ConfigError, load_config
    from ..sweep import Sweep, default_study_name
    from ..sweep_space import base_data, check_metric, parse_space

    overrides = list(args.overrides)
    if args.config and "=" in args.config and not Path(args.config).exists():  # only overrides, as `ampo run`
        args.config, overrides = None, [args.config, *overrides]
    config = load_config(args.config, overrides)
    base = base_data(config)
    space = parse_space(base, args.grid or [], args.range or [], overrides, args.sampler, args.trials)
    metric, benchmark, direction = check_metric(args.metric, config, args.allow_benchmark_metric)
    direction = args.direction or direction
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    folder = Path(args.out).resolve()
    store = str(Path(config.store).resolve()) if config.store else str(folder / "store")
    identity = Sweep.identity(base, space, metric, direction)
    argv = sys.argv[1:]
    command = shlex.join(["ampo", *argv[argv.index("sweep"):]]) if "sweep" in argv else ""
    sweep = Sweep(folder, base, space, metric, direction, benchmark, args.storage,
                  args.study or default_study_name(identity), store, config.seed, command)
    return sweep, config


def cmd_sweep(args) -> None:
    from ..sweep import open_study, retry_failed, save, work
    from ..sweep_report import collect, fmt_metric, write_outputs
    from ..sweep_space import fmt_value

    sweep, config = build_sweep(args)
    if sweep.benchmark_metric:
        print("WARNING: " + _contamination(sweep), file=sys.stderr)
    if args.estimate:
        from ..sweep import check_folder
        from ..sweep_estimate import estimate

        sweep = check_folder(sweep)
        print(estimate(sweep, args.jobs, base_out=config.out))
        return
    sweep = save(sweep)
    st = open_study(sweep)
    retry_failed(st)
    from tqdm.auto import tqdm

    bar = tqdm(total=sweep.space.n_trials, desc="trials", unit="trial", disable=args.quiet, dynamic_ncols=True)
    state = {"seen": None}

    def refresh() -> list:
        rows = collect(st)
        bar.n = min(sum(r.status in ("done", "failed") for r in rows), bar.total)
        bar.refresh()
        seen = [(r.folder, r.status, r.value, r.attempts) for r in rows]
        if seen != state["seen"]:
            state["seen"] = seen
            write_outputs(sweep, rows)
        return rows

    def refresh_while_running() -> None:
        try:
            refresh()
        except Exception as e:  # a storage hiccup or a full disk must not stop the trials
            state["seen"] = None  # try again next time
            log.warning("sweep: could not update %s (%s); the trials go on", sweep.dir / "sweep.md", e)

    refresh()
    try:
        if args.jobs == 1:
            work(st, progress=False, on_done=refresh_while_running)
        else:
            _run_workers(sweep, args.jobs, refresh_while_running)
    finally:
        rows = refresh()
        bar.close()
    best = write_outputs(sweep, rows)
    print(f"\nsweep {sweep.dir}: {sum(r.status == 'done' for r in rows)} of {sweep.space.n_trials} trials done")
    if best is not None:
        shown = ", ".join(f"{k}={fmt_value(v)}" for k, v in best.params.items())
        print(f"best: trial {best.folder} ({shown}): {sweep.metric} {fmt_metric(best.value, best.ci)}")
        print(f"its config: {sweep.dir / 'best.yaml'}")
    print(f"table and plot: {sweep.dir / 'sweep.md'}")
    elsewhere = sum(r.status in ("running", "waiting") for r in rows)
    if elsewhere:
        print(f"{elsewhere} trial{'s' * (elsewhere > 1)} still running in other processes (sharing the study): "
              f"rerun this command later to update sweep.md and best.yaml")
    if sweep.benchmark_metric:
        print("WARNING: " + _contamination(sweep), file=sys.stderr)
    failed = [r for r in rows if r.status == "failed"]
    if failed:
        raise ValueError(f"{len(failed)} of {len(rows)} trials failed (trial {failed[0].folder}: "
                         f"{failed[0].error}); see {sweep.dir / 'sweep.md'}; rerunning the command retries them")


def _contamination(sweep) -> str:
    from ..sweep_report import CONTAMINATION_WARNING

    return CONTAMINATION_WARNING.format(name=sweep.metric.split(".")[1])


def _run_workers(sweep, jobs: int, refresh) -> None:
    """`jobs` single-threaded `ampo sweep-worker` processes; they die with this one (even kill -9)."""
    logs = sweep.dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs = []
    for i in range(jobs):
        with (logs / f"worker-{i}.log").open("ab") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "ampo.cli", "-q", "sweep-worker", str(sweep.dir), "--parent", str(os.getpid())],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(POLL_S)
            refresh()
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
    bad = [i for i, p in enumerate(procs) if p.returncode != 0]
    if bad:
        raise ValueError(f"sweep worker {bad[0]} exited with status {procs[bad[0]].returncode}: "
                         f"see {logs / f'worker-{bad[0]}.log'}")


def cmd_sweep_worker(args) -> None:
    """One process of `ampo sweep --jobs N`: single-threaded, runs trials until none is left."""
    if args.parent:
        _die_with_parent(args.parent)
    import torch

    torch.set_num_threads(1)
    from ..sweep import Sweep, open_study, work

    sweep = Sweep.load(args.folder)
    work(open_study(sweep), progress=False)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when the coordinator dies, so `kill -9` of `ampo sweep`
    stops its workers too (their trials are resumed by the next `ampo sweep`)."""
    import signal

    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the coordinator died before the request took effect
        sys.exit(1)
