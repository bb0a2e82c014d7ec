"""Run configuration: one dataclass per stage, YAML files plus dotted `key=value` overrides.

Validation happens here, once, before any model is loaded: an unknown key, a wrong type or an
incompatible combination raises `ConfigError` with one line naming the option.

Modules: `sections` (the dataclasses, `ConfigError`), `loading` (YAML and overrides to a checked
`RunConfig`), `validation` (the range and choice tables, cross-field checks). `config_key` and `seed_from`
are re-exported from `ampo.hashing`; the stage keys themselves are in `ampo.stage_keys`.
"""

from ..hashing import config_key, seed_from
from .loading import MAX_YAML_VALUES, dump_config, load_config, parse_overrides, safe_yaml
from .sections import (AGGREGATES, BENCHMARKS, ConfigError, DataConfig, EmbedConfig, EvalConfig, GenerateConfig,
                       ModelConfig, RunConfig, ScoreConfig, SelectConfig, TrainConfig, short)
from .validation import CHOICES, CLI_RANGES, LR_SCHEDULERS, RANGES, Range, check_pair_stages, choices, option, validate

__all__ = [
    "AGGREGATES", "BENCHMARKS", "CHOICES", "CLI_RANGES", "LR_SCHEDULERS", "MAX_YAML_VALUES", "RANGES", "ConfigError",
    "DataConfig", "EmbedConfig", "EvalConfig", "GenerateConfig", "ModelConfig", "Range", "RunConfig", "ScoreConfig",
    "SelectConfig", "TrainConfig", "check_pair_stages", "choices", "config_key", "dump_config", "load_config", "option",
    "parse_overrides", "safe_yaml", "seed_from", "short", "validate",
]
