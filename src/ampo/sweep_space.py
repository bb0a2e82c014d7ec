"""What `ampo sweep` varies: the swept options (`--grid KEY=v1,v2,...`, `--range KEY=LO:HI[:log]`),
the metric, and each trial's config. Everything here is checked before any model loads; a bad
sweep is one `ConfigError` line naming the option.

Options are spelled as the dotted overrides of `ampo run` (`train.learning_rate`, `select.k`,
`train.hparams.beta`). A loss hyperparameter may also be written without `hparams`:
`train.beta` is `train.hparams.beta` (any `train.X` that is not an option of `train`).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any

from .config import ConfigError, RunConfig, load_config, safe_yaml, short
from .config.loading import set_dotted

NOT_SWEPT = ("out", "store")  # where a trial goes is the sweep's business
MAX_CHECKED_COMBINATIONS = 1000  # every combination of values is validated up to this many

# eval.json figures a sweep may optimise, and the direction that is better
METRICS = {
    "mean_reward": "maximize", "reward_gain": "maximize", "win_rate": "maximize", "finished_rate": "maximize",
    "distinct_1": "maximize", "distinct_2": "maximize", "embedding_diversity": "maximize",
    "initial_logp_per_token": "maximize", "drift": "minimize", "mean_length": "maximize",
}
BENCHMARK_PREFIX = "benchmarks."  # eval.json `benchmarks.<name>.<figure>`: IFEval / IFBench


@dataclass(frozen=True)
class SweepParam:
    """One swept option: `grid` (a list of values) or a `float` / `int` range (`log`: log-uniform)."""

    name: str  # canonical dotted key, e.g. "train.hparams.beta"
    kind: str  # grid | float | int
    values: tuple = ()
    low: float | None = None
    high: float | None = None
    log: bool = False

    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "grid":
            return CategoricalDistribution(list(self.values))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(float(self.low), float(self.high), log=self.log)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["values"] = list(self.values)
        return d

    @classmethod
    def from_json(cls, d: dict) -> SweepParam:
        return cls(**{**d, "values": tuple(d["values"])})

    def describe(self) -> str:
        if self.kind == "grid":
            return f"{self.name} in {{{', '.join(fmt_value(v) for v in self.values)}}}"
        return f"{self.name} in [{fmt_value(self.low)}, {fmt_value(self.high)}]{' (log)' if self.log else ''}"


def fmt_value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def canonical(key: str) -> str:
    """The dotted key an option is stored under: `train.X` -> `train.hparams.X` when X is not a
    `train` option (a loss hyperparameter)."""
    from .config import TrainConfig

    key = key.strip()
    parts = key.split(".")
    if len(parts) == 2 and parts[0] == "train" and parts[1] not in {f.name for f in dataclasses.fields(TrainConfig)}:
        return f"train.hparams.{parts[1]}"
    return key


def get_dotted(data: dict, key: str) -> Any:
    node = data
    for p in key.split("."):
        node = node[p]
    return node


def trial_config(base: dict, params: dict[str, Any], out: str, store: str | None) -> RunConfig:
    """The run config of one trial: the sweep's base config with `params` set, in folder `out`."""
    data = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(data, key, value)
    data["out"], data["store"] = out, store
    return load_config(base=data)


def base_data(config: RunConfig) -> dict:
    """The sweep's base config as plain data, without the run folder and the store."""
    data = config.to_dict()
    data.pop("out", None)
    data.pop("store", None)
    return data


def _split_option(flag: str, text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"{flag} {short(text)}: expected KEY=VALUES")
    key, raw = text.split("=", 1)
    key = canonical(key)
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"{flag} {short(text)}: expected a dotted option name before '='")
    if key in NOT_SWEPT:
        raise ConfigError(f"{flag} {key}: '{key}' cannot be swept (each trial has its own run folder under --out)")
    return key, raw


def _typed(base: dict, key: str, raw: str, flag: str, losses: tuple = ()) -> Any:
    """`raw` (YAML scalar text) set at `key` in the base config, checked and converted by the
    config's own types and ranges; returns the value as the config holds it. A loss
    hyperparameter is checked against the base loss, or against any of the swept `losses`."""
    if not raw.strip():
        raise ConfigError(f"{flag} {key}: empty value")
    value = safe_yaml(raw, f"{flag} {key}")
    error = None
    for loss in (losses if key.startswith("train.hparams.") and losses else (None,)):
        try:
            config = trial_config(base, {key: value, **({"train.loss": loss} if loss else {})}, "sweep-check", None)
            break
        except ConfigError as e:
            error = error or e
    else:
        hint = (f" ({key.replace('hparams.', '')} is not an option of train, so it is read as a loss hyperparameter)"
                if key.startswith("train.hparams.") else "")
        raise ConfigError(f"{flag} {key}={raw.strip()}: {error}{hint}") from None
    typed = get_dotted(config.to_dict(), key)
    if not (typed is None or isinstance(typed, (str, int, float, bool))):
        raise ConfigError(f"{flag} {key}={raw.strip()}: a swept value must be a number, a string or a boolean, "
                          f"got {short(typed)}")
    return typed


def parse_grid(base: dict, text: str, losses: tuple = ()) -> SweepParam:
    key, raw = _split_option("--grid", text)
    items = raw.split(",")
    if not raw.strip():
        raise ConfigError(f"--grid {key}: empty grid (give values: {key}=v1,v2,...)")
    values = [_typed(base, key, item, "--grid", losses) for item in items]
    for i, v in enumerate(values):
        if any(type(v) is type(w) and v == w for w in values[:i]):
            raise ConfigError(f"--grid {key}: the value {fmt_value(v)} is given twice")
    return SweepParam(key, "grid", tuple(values))


def parse_range(base: dict, text: str, losses: tuple = ()) -> SweepParam:
    key, raw = _split_option("--range", text)
    parts = raw.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].strip() not in ("log", "linear")):
        raise ConfigError(f"--range {key}={raw}: expected LOW:HIGH or LOW:HIGH:log")
    low, high = (_typed(base, key, p, "--range", losses) for p in parts[:2])
    log = len(parts) == 3 and parts[2].strip() == "log"
    numeric = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if not (numeric(low) and numeric(high)):
        raise ConfigError(f"--range {key}: a range needs a numeric option, got {short(low)}; use --grid for choices")
    if not low < high:
        raise ConfigError(f"--range {key}={raw}: LOW must be below HIGH")
    if log and low <= 0:
        raise ConfigError(f"--range {key}={raw}: a log range needs LOW > 0")
    kind = "int" if isinstance(low, int) and isinstance(high, int) else "float"
    return SweepParam(key, kind, (), low, high, log)


@dataclass(frozen=True)
class SweepSpace:
    params: tuple[SweepParam, ...]
    sampler: str  # grid | tpe | random
    n_trials: int

    @property
    def grid_size(self) -> int | None:
        if any(p.kind != "grid" for p in self.params):
            return None
        return math.prod(len(p.values) for p in self.params)

    def grid(self) -> dict[str, list]:
        return {p.name: list(p.values) for p in self.params}


def parse_space(base: dict, grids: list[str], ranges: list[str], overrides: list[str], sampler: str | None,
                trials: int | None) -> SweepSpace:
    """Check every swept option against the base config (types, ranges, unknown keys), the sampler
    against the options, and the number of trials against the grid; one ConfigError line if not."""
    losses = ()  # a swept loss: its hyperparameters are checked against the swept losses
    for g in grids:
        if "=" in g and canonical(g.split("=", 1)[0]) == "train.loss":
            losses = parse_grid(base, g).values
    params = [parse_grid(base, g, losses) for g in grids] + [parse_range(base, r, losses) for r in ranges]
    if not params:
        raise ConfigError("nothing to sweep: give --grid KEY=v1,v2,... or --range KEY=LOW:HIGH[:log]")
    names = [p.name for p in params]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"{name} is swept twice (--grid / --range)")
    fixed = {canonical(o.split("=", 1)[0]) for o in overrides if "=" in o}
    if both := sorted(fixed & set(names)):
        raise ConfigError(f"{both[0]} is both swept and set by an override; drop one of them")
    sampler = sampler or ("grid" if all(p.kind == "grid" for p in params) else "tpe")
    if sampler == "grid" and any(p.kind != "grid" for p in params):
        raise ConfigError("--range needs --sampler tpe or random (the grid sampler takes --grid values only)")
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    if sampler == "grid":
        size = math.prod(len(p.values) for p in params)
        if trials is not None and trials > size:
            shape = f" = {' x '.join(str(len(p.values)) for p in params)}" if len(params) > 1 else ""
            raise ConfigError(f"--trials {trials}: more trials than the grid has ({size}{shape})")
        trials = trials or size
    elif trials is None:
        raise ConfigError(f"--sampler {sampler} needs --trials N")
    space = SweepSpace(tuple(params), sampler, trials)
    check_combinations(base, space)
    return space


def check_combinations(base: dict, space: SweepSpace) -> None:
    """Validate the config of every combination of swept values (range ends for ranges), up to
    `MAX_CHECKED_COMBINATIONS`: options that are fine alone may clash together (a loss and a
    hyperparameter it does not take)."""
    choices = [p.values if p.kind == "grid" else (p.low, p.high) for p in space.params]
    if math.prod(len(c) for c in choices) > MAX_CHECKED_COMBINATIONS:
        return
    for combo in itertools.product(*choices):
        params = dict(zip((p.name for p in space.params), combo))
        try:
            trial_config(base, params, "sweep-check", None)
        except ConfigError as e:
            shown = ", ".join(f"{k}={fmt_value(v)}" for k, v in params.items())
            raise ConfigError(f"the trial {shown}: {e}") from None


def check_metric(name: str, config: RunConfig, allow_benchmark: bool) -> tuple[str, bool, str]:
    """(the metric's canonical name, whether it is computed on a benchmark, its default direction).
    The metric is a figure of the last round's `eval.json`; one computed on IFEval / IFBench
    (`benchmarks.<name>.<figure>`, or `ifeval.<figure>`) is refused unless `allow_benchmark`:
    tuning on a benchmark contaminates it."""
    parts = name.strip().split(".")
    if parts[0] in ("benchmarks", "ifeval", "ifbench"):
        from .ifeval.evaluate import SUMMARY_KEYS

        if parts[0] != "benchmarks":
            parts = ["benchmarks", *parts]
        if not allow_benchmark:
            raise ConfigError(f"--metric {short(name)}: a metric computed on a benchmark (IFEval / IFBench) is "
                              f"refused: tuning on it contaminates the benchmark. Tune on the run's own held-out "
                              f"reward (the default, mean_reward), or pass --allow-benchmark-metric to do it anyway")
        figures = [k for k in SUMMARY_KEYS if not k.endswith("_ci") and k not in ("n_prompts", "limit", "max_new_tokens")]
        if len(parts) != 3 or parts[2] not in figures:
            raise ConfigError(f"--metric {short(name)}: expected benchmarks.<ifeval|ifbench>.<figure>, a figure of "
                              f"{', '.join(figures)}")
        if parts[1] not in config.eval.benchmarks:
            raise ConfigError(f"--metric {short(name)}: the runs do not measure {parts[1]} (add it to eval.benchmarks)")
        return ".".join(parts), True, "maximize"
    if name not in METRICS:
        raise ConfigError(f"--metric {short(name)}: unknown; choose one of {', '.join(METRICS)} "
                          f"(figures of the last round's eval.json)")
    return name, False, METRICS[name]
