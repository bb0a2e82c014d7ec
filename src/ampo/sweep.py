"""`ampo sweep`: a hyperparameter study over `ampo run`, on Optuna.

One study per sweep folder `DIR` (an Optuna journal file `DIR/study.journal`, or `--storage` for
a database several machines share). Each trial is an ordinary run folder, `DIR/trials/NNN`, made
by `Pipeline` like `ampo run`, with `store: DIR/store`: stages that trials have in common (the
round-0 pool, its scores and embeddings, the baseline, references) are made once and taken from
the stage store by the others (`ampo.stage_store`).

Trials are handed out under `DIR/locks/ask.lock`; the process running a trial holds
`DIR/locks/NNN.lock` for as long as it does. A trial Optuna still records as running while its
lock is free was interrupted (its process died, even by SIGKILL): the next process that looks
for work takes it over and resumes it in the same folder (the pipeline's own keys and checkpoints
make that a resume, not a redo). A trial recorded by another machine counts as interrupted when
its heartbeat (`heartbeat` user attribute, every `HEARTBEAT_S`) is older than `STALE_AFTER_S`.
A failed trial is retried once per `ampo sweep` command, in its own folder.
"""

from __future__ import annotations

import copy
import fcntl
import json
import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from .config import ConfigError, RunConfig, load_config, short
from .hashing import config_key, seed_from
from .sweep_space import SweepParam, SweepSpace, trial_config

log = logging.getLogger("ampo")

SPEC = "sweep.json"
HEARTBEAT_S = 60  # a running trial refreshes its `heartbeat` user attribute this often
STALE_AFTER_S = 600  # a trial of another machine whose heartbeat is older than this was interrupted
UNCLAIMED_AFTER_S = 120  # a running trial that never recorded its process (killed right after asking)
HOST = socket.gethostname()


@dataclass
class Sweep:
    """A sweep folder's definition (`DIR/sweep.json`)."""

    dir: Path  # absolute
    base: dict  # the base config as data, without `out` and `store`
    space: SweepSpace
    metric: str
    direction: str  # maximize | minimize
    benchmark_metric: bool
    storage: str | None  # None: the journal file DIR/study.journal
    study_name: str
    store: str  # the stage store the trials share (absolute)
    seed: int
    command: str = ""

    @staticmethod
    def identity(base: dict, space: SweepSpace, metric: str, direction: str) -> dict:
        """What makes two `ampo sweep` commands the same study (the number of trials, jobs and
        storage do not)."""
        return {"params": [p.to_json() for p in space.params], "sampler": space.sampler, "metric": metric,
                "direction": direction, "base": base}

    def to_json(self) -> dict:
        return {"version": 1, **self.identity(self.base, self.space, self.metric, self.direction),
                "n_trials": self.space.n_trials, "benchmark_metric": self.benchmark_metric, "storage": self.storage,
                "study": self.study_name, "store": self.store, "seed": self.seed, "command": self.command}

    @classmethod
    def load(cls, folder: str | Path) -> Sweep:
        folder = Path(folder).resolve()
        try:
            d = json.loads((folder / SPEC).read_text())
            space = SweepSpace(tuple(SweepParam.from_json(p) for p in d["params"]), d["sampler"], d["n_trials"])
            return cls(folder, d["base"], space, d["metric"], d["direction"], d["benchmark_metric"], d["storage"],
                       d["study"], d["store"], d["seed"], d.get("command", ""))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{folder / SPEC}: not a sweep definition ({short(str(e))})") from None

    @property
    def storage_url(self) -> str:
        return self.storage or str(self.dir / "study.journal")

    def run_dir(self, folder: str) -> Path:
        return self.dir / "trials" / folder

    def trial_config(self, params: dict[str, Any], run_dir: Path) -> RunConfig:
        return trial_config(self.base, params, str(run_dir), self.store)


def default_study_name(identity: dict) -> str:
    return f"ampo-sweep-{config_key(identity)[:12]}"


def save(sweep: Sweep) -> Sweep:
    """Write `DIR/sweep.json` and return the sweep to run there (see `check_folder`)."""
    from .data import write_json

    sweep = check_folder(sweep)
    sweep.dir.mkdir(parents=True, exist_ok=True)
    write_json(sweep.dir / SPEC, sweep.to_json())
    return sweep


def check_folder(sweep: Sweep) -> Sweep:
    """The sweep to run in `sweep.dir`: `sweep` itself, or, where the folder holds the same study
    written by an earlier ampo (whose configs lacked options that are now at their defaults), that
    study under its own base config and name, so an upgrade does not orphan a half-done sweep. A
    folder that holds any other sweep is refused in one line."""
    path = sweep.dir / SPEC
    if not path.exists():
        return sweep
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return sweep
    if not isinstance(old, dict):
        return sweep
    new = sweep.identity(sweep.base, sweep.space, sweep.metric, sweep.direction)
    upgraded = old.get("base") != new["base"] and _with_defaults(old.get("base")) == new["base"]
    for name, what in (("params", "swept options"), ("sampler", "sampler"), ("metric", "metric"),
                       ("direction", "direction"), ("base", "base config")):
        if old.get(name) != new[name] and not (name == "base" and upgraded):
            detail = _first_difference(old.get(name), new[name]) if name == "base" else ""
            raise ConfigError(f"--out {sweep.dir} holds another sweep (its {what} differ{detail}); "
                              f"repeat its command to resume it, or choose another --out (with "
                              f"store={sweep.store} to reuse its stages)")
    named_by_default = sweep.study_name == default_study_name(new)
    if old.get("storage") != sweep.storage or (
            old.get("study") != sweep.study_name and not (upgraded and named_by_default)):
        raise ConfigError(f"--out {sweep.dir}: its study is in {old.get('storage') or 'study.journal'} "
                          f"(study {old.get('study')}); pass the same --storage / --study to resume it")
    return replace(sweep, base=old["base"], study_name=old["study"]) if upgraded else sweep


def _with_defaults(base: Any) -> dict | None:
    """`base` as the current ampo spells it: every option it leaves out at its default (None
    where it is not a valid config any more)."""
    from .sweep_space import base_data

    if not isinstance(base, dict):
        return None
    try:
        return base_data(load_config(base={**copy.deepcopy(base), "out": "sweep", "store": None}))
    except ConfigError:
        return None


def _first_difference(old: Any, new: Any, prefix: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(old.keys() | new.keys()):
            if old.get(k) != new.get(k):
                return _first_difference(old.get(k), new.get(k), f"{prefix}{k}.")
    return f": {prefix.rstrip('.')} was {short(old)}, now {short(new)}"


# -- the study --------------------------------------------------------------------------------

@dataclass
class Study:
    study: Any  # optuna.Study
    storage: Any  # its storage
    sweep: Sweep


def open_storage(url: str):
    """An RDB URL (`sqlite:///path`, `postgresql://...`) or a journal file path."""
    import optuna

    if "://" in url:
        return optuna.storages.RDBStorage(url)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    Path(url).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(url))


def make_sampler(sweep: Sweep, seed: int):
    """The study's sampler. The grid sampler's seed orders the grid (trial i takes the i-th point
    of the seeded shuffle), so it is the sweep's seed in every process; tpe and random get `seed`."""
    import optuna

    if sweep.space.sampler == "grid":
        class Grid(optuna.samplers.GridSampler):
            def after_trial(self, study, trial, state, values) -> None:
                """No `study.stop()` when the grid is done (it raises outside `optimize`): the
                sweep counts its trials itself."""

        return Grid(sweep.space.grid(), seed=sweep.seed)
    if sweep.space.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def ask_seed(sweep: Sweep, n_trials: int) -> int:
    """The seed of the sampler for the study's next ask: the sweep's seed and the number of trials,
    so a sweep asks the same way when rerun. Folders sharing a `--storage` ask under their own
    locks, possibly at the same count: their machine and folder are mixed in so that a tpe or
    random sampler does not suggest the same point to both."""
    if sweep.storage is None:
        return seed_from("sweep", sweep.seed, n_trials)
    return seed_from("sweep", sweep.seed, n_trials, HOST, str(sweep.dir.resolve()))


def open_study(sweep: Sweep) -> Study:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for attempt in range(6):
        try:
            storage = open_storage(sweep.storage_url)
            study = optuna.create_study(storage=storage, sampler=make_sampler(sweep, sweep.seed),
                                        study_name=sweep.study_name, direction=sweep.direction, load_if_exists=True)
            return Study(study, storage, sweep)
        except ImportError as e:  # e.g. a database driver that is not installed
            raise ConfigError(f"--storage {sweep.storage}: {e}") from None
        except Exception as e:
            if isinstance(e, (OSError, ValueError)):
                raise
            if attempt == 5:
                raise ConfigError(f"--storage {sweep.storage_url}: {type(e).__name__}: {e}") from None
            # two processes making a new database's tables at once: one of them loses; try again
            log.info("sweep: opening the study storage failed (%s); retrying", type(e).__name__)
            time.sleep(0.5 * (attempt + 1))


def _trial_id(st: Study, number: int) -> int:
    return st.storage.get_trial_id_from_study_id_trial_number(st.study._study_id, number)


def _set_attrs(st: Study, trial_id: int, **attrs: Any) -> None:
    for k, v in attrs.items():
        st.storage.set_trial_user_attr(trial_id, k, v)


# -- locks ------------------------------------------------------------------------------------

def _lock(path: Path, block: bool) -> int | None:
    """An exclusive flock on `path` (made if missing): its descriptor, or None if held elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    holder = f"{os.getpid()} {_start_time(os.getpid()) or ''}".strip()
    os.write(fd, holder.encode())  # the holder, for `sweep.md` (see `holder_alive`)
    return fd


def _start_time(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat field 22), or None where
    /proc does not say: with the pid it names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]  # the fields after the command name, which may hold spaces


def holder_alive(path: Path) -> bool:
    """Whether the process that last took the lock at `path` (on this machine) still exists; read
    without taking the lock, so looking never gets in the way of a process resuming a trial. A
    process that now has the holder's pid but started at another time is not the holder."""
    try:
        pid, *start = path.read_text().split()
        pid = int(pid)
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:  # exists, owned by another user
        pass
    except OSError:
        return False
    now = _start_time(pid)
    return not (start and now is not None and now != start[0])


class _Held:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.fd = _lock(self.path, block=True)

    def __exit__(self, *exc):
        os.close(self.fd)


# -- handing out trials -----------------------------------------------------------------------

@dataclass
class Claim:
    """A trial this process runs: its number, params and folder, and the folder's lock."""

    number: int
    trial_id: int
    params: dict[str, Any]
    folder: str
    run_dir: Path
    fd: int
    seconds_before: float = 0.0  # run time of earlier attempts
    resumed: bool = False


def _is_fresh(t) -> bool:
    """A trial that opened a new folder (not a retry, not a surplus ask)."""
    return "retry_of" not in t.user_attrs and not t.user_attrs.get("surplus")


def next_trial(st: Study) -> Claim | None:
    """The next trial for this process: an interrupted one to resume, a failed one queued for a
    retry, or a new one while the study has fewer than `n_trials` folders; None when done."""
    from optuna.trial import TrialState

    sweep = st.sweep
    with _Held(sweep.dir / "locks" / "ask.lock"):
        while True:
            trials = st.study.get_trials(deepcopy=False)
            claim = _adopt(st, trials)
            if claim is not None:
                return claim
            waiting = any(t.state == TrialState.WAITING for t in trials)
            fresh = [t for t in trials if _is_fresh(t)]
            if not waiting and len(fresh) >= sweep.space.n_trials:
                return None
            st.study.sampler = make_sampler(sweep, ask_seed(sweep, len(trials)))
            trial = st.study.ask({p.name: p.distribution() for p in sweep.space.params})
            attrs = dict(trial.user_attrs)
            earlier = [t for t in st.study.get_trials(deepcopy=False) if t.number < trial.number and _is_fresh(t)]
            if "retry_of" not in attrs and len(earlier) >= sweep.space.n_trials:
                # another machine (another --out on the same storage) took the last slot between our
                # count and our ask: read after the ask, so a trial asked in between counts
                _set_attrs(st, trial._trial_id, surplus=True)  # first: a kill between leaves it ignored, not counted
                st.study.tell(trial, state=TrialState.FAIL)
                continue
            folder = attrs.get("folder") or f"{trial.number:03d}"
            here = attrs.get("run_dir") and attrs.get("folder_host") == HOST
            run_dir = Path(attrs["run_dir"]) if here else sweep.run_dir(folder)
            lock = Path(attrs["lock"]) if here and attrs.get("lock") else sweep.dir / "locks" / f"{folder}.lock"
            fd = _lock(lock, block=False)
            if fd is None:
                _set_attrs(st, trial._trial_id, error=f"its run folder {run_dir} is in use by another process")
                st.study.tell(trial, state=TrialState.FAIL)
                continue
            _start(st, trial._trial_id, folder, run_dir, lock)
            return Claim(trial.number, trial._trial_id, dict(trial.params), folder, run_dir, fd,
                         float(attrs.get("seconds", 0.0)), resumed="retry_of" in attrs)


def _start(st: Study, trial_id: int, folder: str, run_dir: Path, lock: Path) -> None:
    """Record this process as the trial's: the heartbeat first and the host last, so another machine
    never sees the new host beside no heartbeat, or beside the last owner's stale one."""
    _set_attrs(st, trial_id, heartbeat=time.time(), folder=folder, run_dir=str(run_dir), folder_host=HOST,
               lock=str(lock), pid=os.getpid(), host=HOST)


def _adopt(st: Study, trials) -> Claim | None:
    """Take over a trial recorded as running whose process is gone (see the module's doc)."""
    import optuna
    from optuna.trial import TrialState

    sweep, now = st.sweep, time.time()
    for t in trials:
        if t.state != TrialState.RUNNING or t.user_attrs.get("surplus"):
            continue
        a = t.user_attrs
        folder = a.get("folder") or f"{t.number:03d}"
        if a.get("host") == HOST and a.get("lock"):
            lock, run_dir = Path(a["lock"]), Path(a["run_dir"])
        elif a.get("host"):  # another machine's: only once its heartbeat stopped (none recorded: since its start)
            beat = a.get("heartbeat", t.datetime_start.timestamp() if t.datetime_start else now)
            if now - float(beat) < STALE_AFTER_S:
                continue
            lock, run_dir = sweep.dir / "locks" / f"{folder}.lock", sweep.run_dir(folder)
        else:  # asked, then killed before recording its process
            if t.datetime_start is not None and now - t.datetime_start.timestamp() < UNCLAIMED_AFTER_S:
                continue
            lock, run_dir = sweep.dir / "locks" / f"{folder}.lock", sweep.run_dir(folder)
        fd = _lock(lock, block=False)
        if fd is None:
            continue  # its process is alive
        now_state = st.storage.get_trial(t._trial_id)
        if now_state.state != TrialState.RUNNING or now_state.user_attrs.get("host") != a.get("host") \
                or now_state.user_attrs.get("heartbeat") != a.get("heartbeat"):
            os.close(fd)  # it finished, or another process took it, after our snapshot
            continue
        try:
            _start(st, t._trial_id, folder, run_dir, lock)
        except optuna.exceptions.UpdateFinishedTrialError:
            os.close(fd)  # it finished between the check and the claim
            continue
        log.info("trial %d (%s) was interrupted: resuming it in %s", t.number, _params_text(t.params), run_dir)
        return Claim(t.number, t._trial_id, dict(t.params), folder, run_dir, fd, float(a.get("seconds", 0.0)),
                     resumed=True)
    return None


def retry_failed(st: Study) -> int:
    """Queue one retry, in its own folder, of every folder whose last trial failed."""
    import optuna
    from optuna.trial import TrialState

    with _Held(st.sweep.dir / "locks" / "ask.lock"):
        last: dict[str, Any] = {}
        for t in st.study.get_trials(deepcopy=False):
            folder = t.user_attrs.get("folder")
            if folder and not t.user_attrs.get("surplus") and (folder not in last or t.number > last[folder].number):
                last[folder] = t
        retried = 0
        for folder, t in sorted(last.items()):
            if t.state != TrialState.FAIL or not t.params:
                continue
            a = t.user_attrs
            keep = {k: a[k] for k in ("folder", "run_dir", "folder_host", "lock", "seconds") if k in a}
            system = {k: t.system_attrs[k] for k in ("grid_id", "search_space") if k in t.system_attrs}
            st.study.add_trial(optuna.trial.create_trial(
                state=TrialState.WAITING, params=t.params, distributions=t.distributions,
                user_attrs={**keep, "retry_of": t.number}, system_attrs=system))
            retried += 1
        if retried:
            log.info("retrying %d failed trial%s in their folders", retried, "s" * (retried > 1))
        return retried


# -- running one trial ------------------------------------------------------------------------

class _Heartbeat(threading.Thread):
    """Refreshes a running trial's `heartbeat` attribute, so other machines see it is alive."""

    def __init__(self, st: Study, trial_id: int, seconds_before: float):
        super().__init__(daemon=True)
        self.st, self.trial_id, self.halt = st, trial_id, threading.Event()
        self.t0, self.seconds_before = time.perf_counter(), seconds_before

    def run(self) -> None:
        while not self.halt.wait(HEARTBEAT_S):
            try:  # the run time so far too: a killed attempt's time is not lost
                _set_attrs(self.st, self.trial_id, heartbeat=time.time(),
                           seconds=round(self.seconds_before + time.perf_counter() - self.t0, 1))
            except Exception as e:  # a storage hiccup must not end the trial
                log.warning("sweep: heartbeat of trial %d not recorded: %s", self.trial_id, e)

    def stop(self) -> None:
        self.halt.set()
        self.join(5)


def run_trial(st: Study, claim: Claim, progress: bool = False) -> float | None:
    """Run (or resume) one trial's run folder with `Pipeline` and tell the study its metric; a
    failure is recorded on the trial (`error`) and the sweep goes on. Returns the metric."""
    from optuna.trial import TrialState

    from .pipeline import Pipeline

    sweep = st.sweep
    log.info("trial %d%s: %s in %s", claim.number, " (resumed)" if claim.resumed else "", _params_text(claim.params),
             claim.run_dir)
    beat = _Heartbeat(st, claim.trial_id, claim.seconds_before)
    beat.start()
    t0 = time.perf_counter()
    value = ci = error = None
    try:
        config = sweep.trial_config(claim.params, claim.run_dir)
        Pipeline(config, progress=progress).run()
        value, ci = read_metric(claim.run_dir, config, sweep.metric)
    except Exception as e:  # noqa: BLE001 - one trial's failure is the sweep's data, not its end
        error = " ".join(f"{type(e).__name__}: {e}".split())[:500]
        log.error("trial %d failed: %s", claim.number, error)
    finally:
        beat.stop()
    seconds = round(claim.seconds_before + time.perf_counter() - t0, 1)
    try:
        _set_attrs(st, claim.trial_id, seconds=seconds, **({"error": error} if error else {"metric_ci": ci}))
        if error is None:
            st.study.tell(claim.number, value)
            log.info("trial %d: %s = %.4f%s", claim.number, sweep.metric, value,
                     f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
        else:
            st.study.tell(claim.number, state=TrialState.FAIL)
    except Exception as e:  # noqa: BLE001 - e.g. another machine finished it meanwhile
        log.warning("trial %d: its result was not recorded in the study: %s", claim.number, e)
    finally:
        os.close(claim.fd)
    return value


def read_metric(run_dir: Path, config: RunConfig, metric: str) -> tuple[float, list[float] | None]:
    """The metric from the last round's `eval.json` and its 95% bootstrap interval: the figure's own
    `<name>_ci` where eval.json has one, for `mean_reward` one computed over prompts from
    `eval_samples.parquet` (the evaluation's bootstrap size and seed), else None."""
    rd = run_dir / f"round-{config.rounds - 1}"
    ev = json.loads((rd / "eval.json").read_text())
    *parents, last = metric.split(".")
    node = ev
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
    if not isinstance(node, dict) or not isinstance(node.get(last), (int, float)) or isinstance(node.get(last), bool):
        raise ValueError(f"{rd / 'eval.json'} has no number {metric}")
    value = float(node[last])
    if not math.isfinite(value):
        raise ValueError(f"{rd / 'eval.json'}: {metric} is {value}")
    ci = node.get(f"{last}_ci")
    if ci is None and metric == "mean_reward" and (rd / "eval_samples.parquet").exists():
        import numpy as np
        import pyarrow.parquet as pq

        from .evaluation import mean_with_ci

        rows = pq.read_table(rd / "eval_samples.parquet", columns=["rewards"]).to_pylist()
        per_prompt = np.array([np.mean(r["rewards"]) for r in rows], dtype=np.float64)
        _, ci = mean_with_ci(per_prompt, config.eval.bootstrap, config.seed)
    return value, ([float(ci[0]), float(ci[1])] if ci is not None else None)


def _params_text(params: dict) -> str:
    from .sweep_space import fmt_value

    return ", ".join(f"{k}={fmt_value(v)}" for k, v in params.items())


def work(st: Study, progress: bool = False, on_done: Callable[[], None] | None = None) -> int:
    """Run trials until the study needs no more; returns how many this process ran."""
    ran = 0
    while (claim := next_trial(st)) is not None:
        run_trial(st, claim, progress)
        ran += 1
        if on_done is not None:
            on_done()
    return ran
