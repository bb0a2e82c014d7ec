"""Validating a `RunConfig` once, before any model loads: the range and choice tables of every
option, and the cross-field checks, each failure one `ConfigError` line naming the option."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .sections import AGGREGATES, BENCHMARKS, ConfigError, RunConfig, short


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric option: bounds inclusive unless marked open."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def problem(self, value: float) -> str | None:
        """Why `value` is not allowed (one phrase), or None. Integers are compared exactly: one too
        large for a float (400 digits) is refused as in a pool file, not overflowed."""
        if isinstance(value, int):
            if huge := too_many_digits(value):
                return huge
        elif not math.isfinite(value):
            return f"must be a finite number, got {value}"
        below = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        above = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        return f"must be {self}, got {value}" if below or above else None

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {_bound(self.lo)}"
        return f"in {'(' if self.lo_open else '['}{_bound(self.lo)}, {_bound(self.hi)}{')' if self.hi_open else ']'}"


def _bound(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"  # 4294967295, not 4.29497e+09


def too_many_digits(value: int) -> str | None:
    """The problem with an integer too large for a float (the phrase pool files use), or None."""
    try:
        float(value)
    except OverflowError:
        return f"must be finite, got an integer of {len(str(value))} digits"
    return None


# Every numeric option's range; the CLI's flags for the same options check the same ranges
# (`CLI_RANGES` below).
RANGES: dict[str, Range] = {
    "seed": Range(0, 2**32 - 1), "rounds": Range(1),  # seed: NumPy's (and the Trainer's) seeds are 32-bit
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
    "train.dtype": ("auto", "float32", "bfloat16"),
}


def choices() -> dict[str, tuple[str, ...]]:
    """`CHOICES`, plus the options whose choices a table defines (`backends.BACKENDS`)."""
    from ..backends import BACKENDS

    return {**CHOICES, "generate.backend": tuple(BACKENDS)}


def option(c: RunConfig, dotted: str) -> Any:
    """The value of a dotted option, e.g. `option(c, "select.k")`."""
    return functools.reduce(getattr, dotted.split("."), c)


def validate(c: RunConfig, self_play: bool = True) -> None:
    """Refuse out-of-range values and incompatible options, each with one line naming it
    (`self_play=False`: not generation against selection, nor the prompt file)."""
    from ..embeddings import embedder_kind
    from ..losses import HPARAM_CHOICES, LOSSES, check_hparams
    from ..recipes import BUILTIN_PROMPT_SETS
    from ..rewards import PAIRWISE_KINDS, reward_kind
    from ..selection import SELECTORS

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
    needed = spec.needs_refs(c.train.hparams)  # grpo reads its reference only with kl > 0
    n_refs = 1 + len(c.train.extra_references) if needed else 0
    if needed > n_refs:
        raise ConfigError(f"config 'train.extra_references': loss '{c.train.loss}' needs {needed} reference "
                          f"models; give {needed - 1} extra reference path(s)")
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
    if c.score.unfinished_reward is not None and reward_kind(c.score.reward) in PAIRWISE_KINDS:
        raise ConfigError(f"config 'score.unfinished_reward': the pairwise scorer {short(c.score.reward)} compares "
                          "responses and gives no reward to replace; leave it unset")
    if c.data.gold_field is not None and c.data.gold_field in ("id", "prompt", "meta", ""):
        raise ConfigError(f"config 'data.gold_field': {short(c.data.gold_field)} is not a response column")


def check_pair_stages(c: RunConfig, spec) -> None:
    """`train.curriculum: pairs` trains pairs (one negative each) against one reference that moves
    forward every stage, and needs at least two pairs per prompt to order. A loss that reads the
    sampling policy's log-probs (grpo) is a group loss: its advantages need the whole group."""
    where = "config 'train.curriculum': 'pairs'"
    if spec.old:
        raise ConfigError(f"{where} trains one pair per stage; loss '{c.train.loss}' is a group loss (its "
                          f"advantages compare every response of a group, sampled by one policy): use "
                          f"curriculum 'none' or 'groups'")
    if spec.negatives > 1:
        raise ConfigError(f"{where} trains pairs (one negative each); loss '{c.train.loss}' needs "
                          f"{spec.negatives} negatives per group")
    needed = spec.needs_refs(c.train.hparams)
    if needed > 1 or c.train.extra_references:
        raise ConfigError(f"{where} moves one reference forward each stage; it cannot be used with "
                          f"train.extra_references or loss '{c.train.loss}' ({needed} references)")
    from ..selection import SELECTORS

    negatives = c.generate.n - 1 if SELECTORS[c.select.strategy].every_candidate else c.select.k
    if negatives < 2:
        raise ConfigError(f"{where} needs at least 2 negatives per prompt to order its pairs, got "
                          f"{negatives} (select.k={c.select.k}, strategy '{c.select.strategy}'); "
                          f"use curriculum 'none'")
