"""Run configuration: one dataclass per stage, YAML files plus dotted `key=value` overrides.

Validation happens here, once, before any model is loaded: an unknown key, a wrong type or an
incompatible combination raises `ConfigError` with one line naming the option.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
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
    prompts: str = "builtin"  # "builtin" (bundled demo prompts) or a JSONL/Parquet/TXT file
    heldout: int = 32  # prompts kept out of training for evaluation
    train_prompts: int = 0  # prompts used per round (0 = all of the train split)
    split_seed: int = 0


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
    reward: str = "builtin"  # builtin | module:function | local reward-model folder


@dataclass
class EmbedConfig:
    embedder: str = "minilm"  # minilm | policy | local sentence-transformers folder
    batch_size: int = 64


@dataclass
class SelectConfig:
    strategy: str = "optselect"
    k: int = 3  # negatives per group (group size k + 1)


@dataclass
class TrainConfig:
    loss: str = "ampo"
    hparams: dict[str, float | bool | str] = field(default_factory=dict)  # loss hyperparameters (beta, gamma, ...)
    learning_rate: float = 5e-4
    epochs: float = 1.0
    prompts_per_step: int = 2  # groups per device per optimizer micro-step
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    curriculum: bool = False  # order groups easy -> hard by reward gap (Curry-DPO) instead of shuffling
    reference: str = "round_start"  # round_start | initial: the first reference model
    extra_references: list[str] = field(default_factory=list)  # more reference models (MRPO)
    logprob_chunk: int = 1024
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    shared_prefix: bool = False  # one row per group, prompt forwarded once (sdpa/eager attention)
    save_steps: int = 20
    report_to: list[str] = field(default_factory=list)  # e.g. ["tensorboard"]; nothing by default


@dataclass
class EvalConfig:
    samples_per_prompt: int = 2
    temperature: float = 0.8
    max_new_tokens: int = 64
    bootstrap: int = 1000


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


def _check_type(name: str, value: Any, tp: Any) -> Any:
    """Check (and lightly coerce: int -> float) a value against a field's type annotation."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        for arg in typing.get_args(tp):
            try:
                return _check_type(name, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"config '{name}': expected {tp}, got {value!r}")
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
                return float(value)
            except ValueError:
                pass
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    tname = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"config '{name}': expected {tname}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config '{prefix.rstrip('.') or 'root'}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown config key '{prefix}{key}' (known: {', '.join(fields)})")
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


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["select.k=5", "train.hparams.beta=2"]` -> nested dict; values parsed as YAML scalars."""
    data: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"config override '{item}': expected key=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None) -> RunConfig:
    """Read YAML (optional), apply dotted overrides on top, build and validate a RunConfig."""
    data = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        data = _merge(data, loaded)
    data = _merge(data, parse_overrides(list(overrides)))
    config = _build(RunConfig, data)
    validate(config)
    return config


# ---------------------------------------------------------------------------------------------
# Cross-field validation


def validate(c: RunConfig) -> None:
    """Refuse incompatible options, each with one line naming it."""
    from .losses import HPARAM_CHOICES, LOSSES
    from .selection import SELECTORS

    if c.rounds < 1:
        raise ConfigError(f"config 'rounds': must be >= 1, got {c.rounds}")
    if c.generate.backend not in ("hf", "vllm"):
        raise ConfigError(f"config 'generate.backend': must be 'hf' or 'vllm', got '{c.generate.backend}'")
    if c.generate.batching not in ("continuous", "hf"):
        raise ConfigError(f"config 'generate.batching': must be 'continuous' or 'hf', got '{c.generate.batching}'")
    if c.generate.dtype not in ("auto", "float32", "bfloat16"):
        raise ConfigError(f"config 'generate.dtype': must be auto, float32 or bfloat16, got '{c.generate.dtype}'")
    if c.generate.batch_rows < c.generate.n:
        raise ConfigError(f"config 'generate.batch_rows': must hold one prompt's generate.n = {c.generate.n} "
                          f"samples, got {c.generate.batch_rows}")
    if c.generate.n < 2:
        raise ConfigError(f"config 'generate.n': need at least 2 samples per prompt, got {c.generate.n}")
    if c.generate.temperature < 0:
        raise ConfigError("config 'generate.temperature': must be >= 0")
    if not 0 < c.generate.top_p <= 1:
        raise ConfigError("config 'generate.top_p': must be in (0, 1]")
    if c.select.strategy not in SELECTORS:
        raise ConfigError(f"config 'select.strategy': unknown '{c.select.strategy}' "
                          f"(known: {', '.join(SELECTORS)})")
    if c.select.k < 1:
        raise ConfigError(f"config 'select.k': need at least 1 negative, got {c.select.k}")
    if c.select.k > c.generate.n - 1:
        raise ConfigError(f"config 'select.k': {c.select.k} negatives need generate.n >= {c.select.k + 1}, "
                          f"got generate.n={c.generate.n}")
    if c.train.loss not in LOSSES:
        raise ConfigError(f"config 'train.loss': unknown '{c.train.loss}' (known: {', '.join(LOSSES)})")
    spec = LOSSES[c.train.loss]
    unknown = set(c.train.hparams) - set(spec.defaults)
    if unknown:
        raise ConfigError(f"config 'train.hparams': '{sorted(unknown)[0]}' is not a hyperparameter of "
                          f"loss '{c.train.loss}' (allowed: {', '.join(spec.defaults) or 'none'})")
    for name, value in c.train.hparams.items():
        default = spec.defaults[name]
        if isinstance(default, (bool, str)) and type(value) is not type(default):
            raise ConfigError(f"config 'train.hparams.{name}': expected {type(default).__name__}, got {value!r}")
        if name in HPARAM_CHOICES and value not in HPARAM_CHOICES[name]:
            raise ConfigError(f"config 'train.hparams.{name}': must be one of {', '.join(HPARAM_CHOICES[name])}, "
                              f"got {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool) and (
                isinstance(value, (bool, str)) or not isinstance(value, (int, float))):
            raise ConfigError(f"config 'train.hparams.{name}': expected a number, got {value!r}")
    n_refs = 1 + len(c.train.extra_references) if spec.refs else 0
    if spec.refs > n_refs:
        raise ConfigError(f"config 'train.extra_references': loss '{c.train.loss}' needs {spec.refs} reference "
                          f"models; give {spec.refs - 1} extra reference path(s)")
    if c.train.reference not in ("round_start", "initial"):
        raise ConfigError("config 'train.reference': must be 'round_start' or 'initial'")
    if c.model.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"config 'model.dtype': must be float32 or bfloat16, got '{c.model.dtype}'")
    if c.data.heldout < 1:
        raise ConfigError("config 'data.heldout': need at least 1 held-out prompt for evaluation")
    for name in ("learning_rate", "epochs"):
        if getattr(c.train, name) <= 0:
            raise ConfigError(f"config 'train.{name}': must be > 0")
    if c.train.prompts_per_step < 1 or c.train.grad_accum < 1:
        raise ConfigError("config 'train.prompts_per_step' and 'train.grad_accum': must be >= 1")


def config_key(*parts: Any) -> str:
    """A short content hash of JSON-able parts: stage keys for caching and resume."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dump_config(c: RunConfig) -> str:
    return yaml.safe_dump(c.to_dict(), sort_keys=False)


def seed_from(*parts: Any) -> int:
    """A deterministic 31-bit integer seed derived from JSON-able parts."""
    return int(config_key("seed", *parts), 16) % (2**31)
