"""`ampo sweep --estimate`: how many trials a sweep has and what it will cost, without running it.

Every trial's stages and keys come from the same code as `ampo run --dry-run` (no model loads);
stages that several trials share (equal keys) are counted once, and stages already in the stage
store or finished in a trial folder not at all. Each stage's cost is the median time that stage
kind took where it already ran: the sweep's own trial folders, the entries of its stage store,
and the base config's own run folder (`out`), if it has one. So `--estimate` is most useful after
one trial (`--trials 1`) or one `ampo run` of the base config; before that it counts stages only.
For `tpe` and `random` sweeps the trials' options are drawn here at random (the sampler will
choose others), which is enough to count which stages they share.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import statistics
from pathlib import Path

from .stage_store import UNSHARED, StageStore
from .sweep import Sweep
from .sweep_report import fmt_seconds
from .sweep_space import SweepSpace, trial_config


def trial_params(space: SweepSpace, seed: int) -> list[dict]:
    """The options of each trial: the grid's points in the grid sampler's order (a seeded shuffle:
    a sweep of fewer trials than its grid runs a seeded random subset), or random draws for tpe /
    random."""
    if space.sampler == "grid":
        import optuna

        grid = optuna.samplers.GridSampler(space.grid(), seed=seed)
        try:  # the sampler's own (seeded) order: trial i takes point i
            names, combos = grid._param_names, grid._all_grids
        except AttributeError:
            names = sorted(space.grid())
            combos = list(itertools.product(*(space.grid()[n] for n in names)))
        return [dict(zip(names, c)) for c in combos[: space.n_trials]]
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(space.n_trials):
        draw = {}
        for p in space.params:
            if p.kind == "grid":
                draw[p.name] = p.values[int(rng.integers(len(p.values)))]
            elif p.kind == "int":
                draw[p.name] = int(rng.integers(int(p.low), int(p.high) + 1))
            elif p.log:
                draw[p.name] = float(math.exp(rng.uniform(math.log(p.low), math.log(p.high))))
            else:
                draw[p.name] = float(rng.uniform(p.low, p.high))
        out.append(draw)
    return out


def kind(stage: str) -> str:
    """`round-1/generate` -> `generate`; `baseline/ifeval` -> `ifeval`."""
    return stage.rsplit("/", 1)[-1]


def _manifests(sweep: Sweep, base_out: str | None) -> list[Path]:
    found = sorted((sweep.dir / "trials").glob("*/manifest.json"))
    if base_out and (Path(base_out) / "manifest.json").is_file():
        found.append(Path(base_out) / "manifest.json")
    return found


def timings(sweep: Sweep, base_out: str | None) -> tuple[dict[str, list[float]], set[str], list[str]]:
    """(seconds per stage kind, keys already made, the sources read)."""
    from .runner import Manifest

    seconds: dict[str, list[float]] = {}
    made: set[str] = set()
    manifests = _manifests(sweep, base_out)
    trials = sum(p.parent.parent == sweep.dir / "trials" for p in manifests)
    sources = ([f"{trials} trial folder{'s' * (trials != 1)} in {sweep.dir / 'trials'}"] if trials else [])
    sources += [str(p) for p in manifests if p.parent.parent != sweep.dir / "trials"]
    made_in = {str(p.parent) for p in manifests}
    for path in manifests:
        stages = Manifest.read(path)["stages"]
        mine = path.parent.parent == sweep.dir / "trials"  # another run folder's stages are not the sweep's
        for name, e in stages.items():
            if e.get("status") == "done":
                if mine:
                    made.add(e["key"])
                if not e.get("from_store") and isinstance(e.get("seconds"), (int, float)):
                    seconds.setdefault(kind(name), []).append(float(e["seconds"]))
    store = Path(sweep.store)
    if store.is_dir():
        for entry in store.glob("*/entry.json"):
            try:
                e = json.loads(entry.read_text())
            except (OSError, ValueError):
                continue
            made.add(e.get("key"))
            if isinstance(e.get("seconds"), (int, float)) and e.get("made_in") not in made_in:  # not counted twice
                seconds.setdefault(kind(e.get("stage", "")), []).append(float(e["seconds"]))
        sources.append(f"the stage store {store}")
    return seconds, made, sources


def _done_in(run_dir: Path, key: str) -> bool:
    from .runner import Manifest

    path = run_dir / "manifest.json"
    return path.is_file() and any(e.get("key") == key and e.get("status") == "done"
                                  for e in Manifest.read(path)["stages"].values())


def estimate(sweep: Sweep, jobs: int, base_out: str | None = None) -> str:
    """The text `--estimate` prints."""
    from .dry_run import stage_keys
    from .stage_keys import RunKeys

    splits: dict[str, object] = {}
    per_trial: list[list[tuple[str, str]]] = []
    for i, params in enumerate(trial_params(sweep.space, sweep.seed)):
        config = trial_config(sweep.base, params, str(sweep.run_dir(f"{i:03d}")), sweep.store)
        data = json.dumps(dataclasses.asdict(config.data), sort_keys=True)
        keys = RunKeys(config, split=splits.get(data))
        splits[data] = keys.split()
        per_trial.append(stage_keys(keys))
    seconds, made, sources = timings(sweep, base_out)
    store = StageStore(sweep.store)
    distinct: dict[tuple, str] = {}  # (key,) or, for a stage trials never share, (key, trial) -> stage kind
    total = 0
    for i, stages in enumerate(per_trial):
        for name, key in stages:
            if name == "report":  # seconds, and not timed in the manifest
                continue
            total += 1
            distinct[(key,) if name not in UNSHARED else (key, i)] = kind(name)
    todo: dict[str, int] = {}
    for slot, k in distinct.items():
        have = (_done_in(sweep.run_dir(f"{slot[1]:03d}"), slot[0]) if len(slot) > 1
                else slot[0] in made or store.has(slot[0]))
        if not have:
            todo[k] = todo.get(k, 0) + 1
    medians = {k: statistics.median(v) for k, v in seconds.items() if v}
    space = sweep.space
    grid = (f"grid {' x '.join(f'{len(p.values)} {p.name}' for p in space.params)}" if space.sampler == "grid"
            else f"sampler {space.sampler}")
    lines = [f"sweep {sweep.dir}: {space.n_trials} trials ({grid})",
             f"stages: {total} in all trials, {len(distinct)} distinct (stages trials share counted once), "
             f"{len(distinct) - sum(todo.values())} already made, {sum(todo.values())} to make"]
    width = max([len(k) for k in todo] + [5])
    if todo:
        lines.append(f"  {'stage':<{width}}  to make  median s  total")
    cost, unknown = 0.0, []
    for k, n in sorted(todo.items(), key=lambda kv: -kv[1] * medians.get(kv[0], 0)):
        m = medians.get(k)
        if m is None:
            unknown.append(k)
        else:
            cost += n * m
        lines.append(f"  {k:<{width}}  {n:>7}  {'?' if m is None else f'{m:.1f}':>8}  "
                     f"{'?' if m is None else fmt_seconds(n * m)}")
    if medians:
        wall = cost / max(1, min(jobs, space.n_trials))
        lines.append(f"estimated stage time: {fmt_seconds(cost)} in one process"
                     + (f", about {fmt_seconds(wall)} with --jobs {jobs} (single-threaded processes run "
                        f"slower than one process with every core)" if jobs > 1 else ""))
        lines.append(f"timings: median seconds per stage kind from {sum(map(len, seconds.values()))} finished "
                     f"stages ({'; '.join(sources)})" + (f"; no timing yet for {', '.join(unknown)} (not counted)"
                                                         if unknown else ""))
    else:
        lines.append("no stage timings yet: run one trial first (--trials 1) or `ampo run` the base config, "
                     "then --estimate again")
    if space.sampler != "grid":
        lines.append(f"({space.sampler}: the trials' options were drawn at random here to count the stages they "
                     f"share; the sampler will choose others)")
    return "\n".join(lines)
