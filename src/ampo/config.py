"""Run configuration: one dataclass per stage, YAML files plus dotted `key=value` overrides.

Validation happens here, once, before any model is loaded: an unknown key, a wrong type or an
incompatible combination raises `ConfigError` with one line naming the option.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad configuration value; the message names the option."""


@dataclass
class ModelConfig:
    policy: str = "smollm2-135m-instruct"  # built-in name, local folder, or hub id (network only)
    dtype: str = "float32"  # float32 | bfloat16
    trust_remote_code: bool = False
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class DataConfig:
    prompts: str = "builtin"  # "builtin" (bundled demo prompts), "builtin-ifeval" (bundled IFEval training
    # prompts with their constraints as meta) or a JSONL/Parquet/TXT file
    heldout: int = 32  # prompts kept out of training for evaluation
    train_prompts: int = 0  # prompts used per round (0 = all of the train split)
    split_seed: int = 0
    gold_field: str | None = None  # a prompt-file column holding a gold (off-policy) response for each prompt:
    # added to every round's pool, scored and selectable like the rest, never evaluated as the policy's (DNO)


@dataclass
class GenerateConfig:
    backend: str = "hf"  # hf | vllm
    n: int = 8  # samples per prompt
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 64
    prompts_per_batch: int = 8  # batching "hf": prompts per transformers `generate` call
    share_prefill: bool = True  # batching "hf": one prefill per prompt (continuous always shares it)
    batching: str = "continuous"  # continuous (finished rows leave, waiting prompts fill in) | hf
    batch_rows: int = 128  # batching "continuous": rows decoded together (lowered to fit memory)
    dtype: str = "auto"  # auto (bf16 on CUDA or a CPU with native bf16, else fp32) | float32 | bfloat16
    shard_prompts: int = 32  # prompts per resumable shard


@dataclass
class ScoreConfig:
    reward: str = "builtin"  # builtin | ifeval[:loose=W,degeneracy=W] | module:function | pairwise:module:function
    # | local reward-model folder (one logit, or a GPM folder: preference matrices)
    aggregate: str = "auto"  # what `rewards` holds: auto (reward for scalar scorers, win_rate for pairwise ones)
    # | reward | mean_logit | win_rate | win_rate_self | copeland (of the preference matrix; S_ij = r_i - r_j for a reward)


@dataclass
class EmbedConfig:
    embedder: str = "minilm"  # minilm | policy | local sentence-transformers folder
    batch_size: int = 64


@dataclass
class SelectConfig:
    strategy: str = "optselect"
    k: int = 3  # negatives per group (group size k + 1)
    require_beats: float | None = None  # keep only candidates j the positive beats: sigmoid(S_pos,j) >= this
    min_margin: float | None = None  # drop a prompt this round when rewards[positive] - min(selected) < this


@dataclass
class TrainConfig:
    loss: str = "ampo"
    hparams: dict[str, float | bool | str] = field(default_factory=dict)  # loss hyperparameters (beta, gamma, ...)
    learning_rate: float = 5e-4
    epochs: float = 1.0
    max_steps: int = 0  # optimizer steps; 0 = as many as `epochs` make
    prompts_per_step: int = 2  # groups per device per optimizer micro-step
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    curriculum: str | bool = "none"  # none | groups (whole groups easy -> hard, no shuffle) | pairs (Curry-DPO
    # stages: stage t trains every prompt's t-th easiest pair against the previous stage's policy);
    # true = groups, false = none
    reference: str = "round_start"  # round_start | initial: the first reference model
    extra_references: list[str] = field(default_factory=list)  # more reference models (MRPO)
    logprob_chunk: int = 1024
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    shared_prefix: bool = False  # one row per group, prompt forwarded once (sdpa/eager attention)
    save_steps: int = 20
    report_to: list[str] = field(default_factory=list)  # e.g. ["tensorboard"]; nothing by default

    def __post_init__(self) -> None:
        if isinstance(self.curriculum, bool):  # the option's older yes/no form
            self.curriculum = "groups" if self.curriculum else "none"


@dataclass
class EvalConfig:
    samples_per_prompt: int = 2
    temperature: float = 0.8
    max_new_tokens: int = 64
    bootstrap: int = 1000
    benchmarks: list[str] = field(default_factory=list)  # ifeval | ifbench: greedy benchmark run per round
    benchmark_max_new_tokens: int = 256
    benchmark_limit: int = 0  # 0 = every benchmark prompt; else a fixed, seeded subset of this many
    benchmark_prompts_per_batch: int = 16


BENCHMARKS = ("ifeval", "ifbench")
# `score.aggregate` (besides "auto"): "reward" keeps a scalar reward as it is; the others are
# `ampo.preferences.AGGREGATES` of the preference matrix
AGGREGATES = ("reward", "mean_logit", "win_rate", "win_rate_self", "copeland")


@dataclass
class RunConfig:
    out: str = "runs/ampo"
    seed: int = 0
    rounds: int = 2
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Building from dicts, with type checks


def short(value: Any, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters: errors never echo a huge value back."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _check_type(name: str, value: Any, tp: Any) -> Any:
    """Check (and lightly coerce: int -> float) a value against a field's type annotation.
    NaN and infinities are refused wherever a number is expected."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config '{name}': must be a finite number, got {value}")
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        for arg in typing.get_args(tp):
            try:
                return _check_type(name, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"config '{name}': expected {tp}, got {short(value)}")
    if tp is type(None):
        if value is None:
            return None
    elif origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, list):
            return [_check_type(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    elif origin is dict:
        _, vt = typing.get_args(tp)
        if isinstance(value, dict):
            return {str(k): _check_type(f"{name}.{k}", v, vt) for k, v in value.items()}
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                return _check_type(name, number, tp)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    tname = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"config '{name}': expected {tname}, got {short(value)}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config '{prefix.rstrip('.') or 'root'}': expected a mapping, got {short(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown config key {short(f'{prefix}{key}')} (known: {', '.join(fields)})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_type(f"{prefix}{key}", value, tp)
    return cls(**kwargs)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config override '{dotted}': '{p}' is not a section")
    node[last] = value


MAX_YAML_VALUES = 100_000  # a config holds a few hundred; aliases can make a few bytes expand to billions


def safe_yaml(text: str, source: str) -> Any:
    """`yaml.safe_load`, refusing text whose aliases expand past `MAX_YAML_VALUES` values (a
    422-byte "billion laughs" document expands to gigabytes) and naming `source` in every error."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, {}, set()) > MAX_YAML_VALUES:
            raise ConfigError(f"{source}: its aliases expand to more than {MAX_YAML_VALUES} values; refused")
        return None if node is None else loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f": line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many values `node` becomes once every alias is expanded (counted once per node)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:  # an alias inside its own anchor: infinite
        return MAX_YAML_VALUES + 1
    open_nodes.add(id(node))
    children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                else node.value if isinstance(node, yaml.SequenceNode) else [])
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, open_nodes)
        if total > MAX_YAML_VALUES:
            break
    open_nodes.discard(id(node))
    sizes[id(node)] = total
    return total


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["select.k=5", "train.hparams.beta=2"]` -> nested dict; values parsed as YAML scalars."""
    data: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"config override {short(item)}: expected key=value")
        key, raw = item.split("=", 1)
        value = safe_yaml(raw, f"config override {short(key.strip() + '=')}") if raw.strip() else ""
        _set_dotted(data, key.strip(), value)
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None,
                self_play: bool = True) -> RunConfig:
    """Read YAML (optional), apply dotted overrides on top, build and validate a RunConfig.
    `self_play=False` (`ampo train` on a pool): the options of generation and prompts are not
    checked against selection, since nothing is generated."""
    data = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}" if not path.exists() else f"{path}: not a file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
        loaded = safe_yaml(text, str(path))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: must be a mapping of sections and options (like 'select: {{k: 3}}'), "
                              f"got a {type(loaded).__name__}")
        data = _merge(data, loaded)
    data = _merge(data, parse_overrides(list(overrides)))
    config = _build(RunConfig, data)
    validate(config, self_play)
    return config


# ---------------------------------------------------------------------------------------------
# Cross-field validation


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric option: bounds inclusive unless marked open."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def problem(self, value: float) -> str | None:
        """Why `value` is not allowed (one phrase), or None."""
        if not math.isfinite(value):
            return f"must be a finite number, got {value}"
        below = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        above = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        return f"must be {self}, got {value}" if below or above else None

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


# Every numeric option's range; the CLI's flags for the same options check the same ranges
# (`CLI_RANGES` below).
RANGES: dict[str, Range] = {
    "seed": Range(0), "rounds": Range(1),
    "model.lora_r": Range(1), "model.lora_alpha": Range(1), "model.lora_dropout": Range(0, 1, hi_open=True),
    "data.heldout": Range(1), "data.train_prompts": Range(0), "data.split_seed": Range(0),
    "generate.n": Range(2), "generate.temperature": Range(0), "generate.top_p": Range(0, 1, lo_open=True),
    "generate.max_new_tokens": Range(1), "generate.prompts_per_batch": Range(1), "generate.shard_prompts": Range(1),
    "generate.batch_rows": Range(1),
    "embed.batch_size": Range(1),
    "select.k": Range(1), "select.require_beats": Range(0, 1), "select.min_margin": Range(0),
    "train.learning_rate": Range(0, lo_open=True), "train.epochs": Range(0, lo_open=True), "train.max_steps": Range(0),
    "train.prompts_per_step": Range(1), "train.grad_accum": Range(1), "train.max_grad_norm": Range(0),
    "train.warmup_ratio": Range(0, 1, hi_open=True), "train.weight_decay": Range(0),
    "train.logprob_chunk": Range(1), "train.save_steps": Range(1),
    "eval.samples_per_prompt": Range(1), "eval.temperature": Range(0), "eval.max_new_tokens": Range(1),
    "eval.bootstrap": Range(1), "eval.benchmark_max_new_tokens": Range(1), "eval.benchmark_limit": Range(0),
    "eval.benchmark_prompts_per_batch": Range(1),
}

# The command-line flags' ranges: the same as the config's, except where a command does more than a
# self-play round. `ampo generate --n 1` is allowed (greedy single answers, e.g. benchmark
# responses); a round needs `generate.n >= 2` (a positive and at least one negative per group).
CLI_RANGES: dict[str, Range] = {**RANGES, "generate.n": Range(1)}

# transformers' schedulers that need no arguments beyond the warmup and the step count
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt")

CHOICES: dict[str, tuple[str, ...]] = {
    "model.dtype": ("float32", "bfloat16"),
    "generate.batching": ("continuous", "hf"),
    "generate.dtype": ("auto", "float32", "bfloat16"),
    "train.lr_scheduler": LR_SCHEDULERS,
    "train.reference": ("round_start", "initial"),
    "train.curriculum": ("none", "groups", "pairs"),
}


def choices() -> dict[str, tuple[str, ...]]:
    """`CHOICES`, plus the options whose choices a table defines (`backends.BACKENDS`)."""
    from .backends import BACKENDS

    return {**CHOICES, "generate.backend": tuple(BACKENDS)}


def option(c: RunConfig, dotted: str) -> Any:
    """The value of a dotted option, e.g. `option(c, "select.k")`."""
    return functools.reduce(getattr, dotted.split("."), c)


def validate(c: RunConfig, self_play: bool = True) -> None:
    """Refuse out-of-range values and incompatible options, each with one line naming it
    (`self_play=False`: not generation against selection, nor the prompt file)."""
    from .embeddings import embedder_kind
    from .losses import HPARAM_CHOICES, LOSSES, check_hparams
    from .pipeline import BUILTIN_PROMPT_SETS
    from .rewards import PAIRWISE_KINDS, reward_kind
    from .selection import SELECTORS

    for name, allowed in RANGES.items():
        if option(c, name) is not None and (problem := allowed.problem(option(c, name))):
            raise ConfigError(f"config '{name}': {problem}")
    for name, allowed in choices().items():
        if option(c, name) not in allowed:
            raise ConfigError(f"config '{name}': must be one of {', '.join(allowed)}, got {short(option(c, name))}")
    if c.generate.batch_rows < c.generate.n:
        raise ConfigError(f"config 'generate.batch_rows': must hold one prompt's generate.n = {c.generate.n} "
                          f"samples, got {c.generate.batch_rows}")
    if c.select.strategy not in SELECTORS:
        raise ConfigError(f"config 'select.strategy': unknown {short(c.select.strategy)} "
                          f"(known: {', '.join(SELECTORS)})")
    if SELECTORS[c.select.strategy].one_negative and c.select.k != 1:
        raise ConfigError(f"config 'select.k': strategy '{c.select.strategy}' selects exactly one negative; "
                          f"set select.k=1, got {c.select.k}")
    if self_play and c.select.k > c.generate.n - 1:
        raise ConfigError(f"config 'select.k': {c.select.k} negatives need generate.n >= {c.select.k + 1}, "
                          f"got generate.n={c.generate.n}")
    if c.model.lora and not c.model.lora_targets:
        raise ConfigError("config 'model.lora_targets': LoRA needs at least one target module")
    if c.train.loss not in LOSSES:
        raise ConfigError(f"config 'train.loss': unknown {short(c.train.loss)} (known: {', '.join(LOSSES)})")
    spec = LOSSES[c.train.loss]
    unknown = set(c.train.hparams) - set(spec.defaults)
    if unknown:
        raise ConfigError(f"config 'train.hparams': {short(sorted(unknown)[0])} is not a hyperparameter of "
                          f"loss '{c.train.loss}' (allowed: {', '.join(spec.defaults) or 'none'})")
    for name, value in c.train.hparams.items():
        default = spec.defaults[name]
        default = 0.0 if default is None else default  # a None default is an optional number
        if isinstance(default, (bool, str)) and type(value) is not type(default):
            raise ConfigError(f"config 'train.hparams.{name}': expected {type(default).__name__}, got {short(value)}")
        if name in HPARAM_CHOICES and value not in HPARAM_CHOICES[name]:
            raise ConfigError(f"config 'train.hparams.{name}': must be one of {', '.join(HPARAM_CHOICES[name])}, "
                              f"got {short(value)}")
        if isinstance(default, (int, float)) and not isinstance(default, bool) and (
                isinstance(value, (bool, str)) or not isinstance(value, (int, float))):
            raise ConfigError(f"config 'train.hparams.{name}': expected a number, got {short(value)}")
    n_refs = 1 + len(c.train.extra_references) if spec.refs else 0
    if spec.refs > n_refs:
        raise ConfigError(f"config 'train.extra_references': loss '{c.train.loss}' needs {spec.refs} reference "
                          f"models; give {spec.refs - 1} extra reference path(s)")
    if c.select.k < spec.negatives:
        raise ConfigError(f"config 'select.k': loss '{c.train.loss}' needs at least {spec.negatives} negatives "
                          f"per group, got {c.select.k}")
    if c.train.curriculum == "pairs":
        check_pair_stages(c, spec)
    try:
        check_hparams(c.train.loss, c.train.hparams)
    except ValueError as e:
        raise ConfigError(f"config 'train.hparams': {e}") from None
    if self_play and c.data.prompts not in BUILTIN_PROMPT_SETS and not Path(c.data.prompts).is_file():
        raise ConfigError(f"config 'data.prompts': no such file: {short(c.data.prompts)} "
                          f"(or a bundled set: {', '.join(BUILTIN_PROMPT_SETS)})")
    for name in c.eval.benchmarks:
        if name not in BENCHMARKS:
            raise ConfigError(f"config 'eval.benchmarks': unknown benchmark {short(name)} "
                              f"(known: {', '.join(BENCHMARKS)})")
    if len(set(c.eval.benchmarks)) != len(c.eval.benchmarks):
        raise ConfigError(f"config 'eval.benchmarks': a benchmark is named twice in {short(c.eval.benchmarks)}")
    for name, kind in (("score.reward", reward_kind), ("embed.embedder", embedder_kind)):
        try:
            kind(option(c, name))
        except ValueError as e:
            raise ConfigError(f"config '{name}': {e}") from None
    if c.score.aggregate not in ("auto", *AGGREGATES):
        raise ConfigError(f"config 'score.aggregate': must be one of auto, {', '.join(AGGREGATES)}, "
                          f"got {short(c.score.aggregate)}")
    if c.score.aggregate == "reward" and reward_kind(c.score.reward) in PAIRWISE_KINDS:
        raise ConfigError(f"config 'score.aggregate': the pairwise scorer {short(c.score.reward)} has no scalar "
                          f"reward; choose one of {', '.join(AGGREGATES[1:])} (or auto = win_rate)")
    if c.data.gold_field is not None and c.data.gold_field in ("id", "prompt", "meta", ""):
        raise ConfigError(f"config 'data.gold_field': {short(c.data.gold_field)} is not a response column")


def check_pair_stages(c: RunConfig, spec) -> None:
    """`train.curriculum: pairs` trains pairs (one negative each) against one reference that moves
    forward every stage, and needs at least two pairs per prompt to order."""
    where = "config 'train.curriculum': 'pairs'"
    if spec.negatives > 1:
        raise ConfigError(f"{where} trains pairs (one negative each); loss '{c.train.loss}' needs "
                          f"{spec.negatives} negatives per group")
    if spec.refs > 1 or c.train.extra_references:
        raise ConfigError(f"{where} moves one reference forward each stage; it cannot be used with "
                          f"train.extra_references or loss '{c.train.loss}' ({spec.refs} references)")
    from .selection import SELECTORS

    negatives = c.generate.n - 1 if SELECTORS[c.select.strategy].every_candidate else c.select.k
    if negatives < 2:
        raise ConfigError(f"{where} needs at least 2 negatives per prompt to order its pairs, got "
                          f"{negatives} (select.k={c.select.k}, strategy '{c.select.strategy}'); "
                          f"use curriculum 'none'")


def config_key(*parts: Any) -> str:
    """A short content hash of JSON-able parts: stage keys for caching and resume."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dump_config(c: RunConfig) -> str:
    return yaml.safe_dump(c.to_dict(), sort_keys=False)


def seed_from(*parts: Any) -> int:
    """A deterministic 31-bit integer seed derived from JSON-able parts."""
    return int(config_key("seed", *parts), 16) % (2**31)
