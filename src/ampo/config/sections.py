"""The run configuration's dataclasses: one per stage, gathered in `RunConfig`, with their defaults;
and `ConfigError` (from `ampo.errors`), the one error a bad configuration raises."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, short  # noqa: F401 (re-exported by ampo.config)


@dataclass
class ModelConfig:
    policy: str = "smollm2-135m-instruct"  # built-in name, local folder, or hub id (network only)
    dtype: str = "float32"  # float32 | bfloat16: how the weights are stored (train.dtype: how training computes)
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
    unfinished_reward: float | None = None  # the reward of a response that hit generate.max_new_tokens without
    # ending (open-instruct's non-stop penalty); null = score it like any other (scalar scorers only)


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
    learning_rate: float = 1e-4  # load_config replaces it, when unset, by the loss's default (ampo.losses.rates)
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
    dtype: str = "auto"  # the arithmetic of training and of the reference / old log-prob passes: auto (bf16
    # on CUDA or a CPU with native bf16, else fp32) | float32 | bfloat16 (autocast: bf16 matmuls, fp32 log-probs
    # and losses). Not `model.dtype`, the dtype the weights are stored (and updated) in: with model.dtype
    # float32 and train.dtype bfloat16 the weights, gradients and optimiser state stay fp32 (docs/pipeline.md)
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
    store: str | None = None  # a stage store shared by run folders (ampo.stage_store); in no stage key
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
