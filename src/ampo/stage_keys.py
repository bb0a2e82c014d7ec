"""Every stage key, in one place.

A stage's key is a content hash of the keys of its inputs and of the config fields that change its
numbers: a rerun skips a stage whose key is recorded as done, and a changed field redoes exactly
the stages downstream of it. Each key below is one small function over named fields and upstream
keys. `RunKeys` wires them for a self-play run and `PoolKeys` for `ampo train` on a pool the user
already has (the same functions, with the pool file in place of a round's generation and scoring),
so a pool trained by `ampo train` gets the key a round would give it.

`RunKeys` memoises every key, so a run of R rounds computes each key once: the cost is linear in
R (each round's keys chain through the previous round's train key).

Keys of finished run folders must not change (a changed key redoes the stage and everything after
it): options added after runs existed are keyed only when they differ from the value that earlier
runs had implicitly (`select.require_beats`/`min_margin` only when set, `train.max_steps` only when
set, a training dtype only when it is not float32, `score.aggregate` only when it is not the plain
reward). `tests/test_stage_keys.py` pins the keys of the shipped recipes. Stages that only some
losses have (the sampling policy's log-probs, `old_key`) are keyed, and appear in the train key,
only where the loss reads them.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable

from .hashing import config_key, seed_from

# `train` options that do not change the trained weights: not keyed, so changing them reuses work
TRAIN_COSMETIC = ("save_steps", "report_to", "logprob_chunk", "gradient_checkpointing", "shared_prefix")


# -- the keys, one function each ----------------------------------------------------------------

def policy_key(model) -> str:
    """The initial policy (`model.policy` in `model.dtype`): round 0's starting point."""
    return config_key("policy", model.policy, model.dtype)


def split_key(rows: list[dict], heldout: int, split_seed: int, gold_field: str | None) -> str:
    """The train / held-out split of the prompt rows."""
    metas = [row.get("meta") for row in rows]
    golds = [row["gold"] for row in rows] if gold_field else []
    return config_key("split", [row["prompt"] for row in rows], [row["id"] for row in rows], heldout, split_seed,
                      *([metas] if any(metas) else []), *([golds] if golds else []))


def generate_key(policy: str, prompts: list[dict], generate: dict, seed: int, r: int, gold_field: str | None) -> str:
    """Round r's samples: the starting policy, the round's prompt ids, every `generate` option (with
    `dtype` resolved for this machine: batch sizes do not choose a response's random stream, but
    they can move its logits by rounding, and with them, rarely, a sampled token) and the sampler."""
    from .sampling import SAMPLER

    gold = [[p["gold"] for p in prompts]] if gold_field else []
    return config_key("generate", policy, [p["id"] for p in prompts], generate, seed, r, SAMPLER, *gold)


def score_key(pool: str, reward: str, aggregate: str, unfinished_reward: float | None = None) -> str:
    """Rewards of a pool (its generation key) by `score.reward`, aggregated by `aggregate`, with
    `score.unfinished_reward` only when it is set."""
    return config_key("score", pool, reward, *([aggregate] if aggregate != "reward" else []),
                      *([{"unfinished_reward": unfinished_reward}] if unfinished_reward is not None else []))


def embed_key(pool: str, embedder: str, policy: str | None) -> str:
    """Embeddings of a pool; `policy` is the embedding policy's key for `embed.embedder: policy`."""
    return config_key("embed", pool, embedder, policy)


def select_key(scored: str, embedded: str | None, select: dict, seed: int) -> str:
    """The selection from a scored (and embedded, or `None`: the pool's own embeddings) pool."""
    s = dict(select)
    for option in ("require_beats", "min_margin"):
        if s.get(option) is None:
            s.pop(option, None)
    return config_key("select", scored, embedded, s, seed)


def refs_key(selected: str, reference: str, extra_references: list[str], dtype: str) -> str:
    """Reference log-probs of the selected responses under `reference` (a policy key) and each
    extra reference, computed in `dtype` (the resolved `train.dtype`)."""
    return config_key("refs", selected, reference, extra_references, *([dtype] if dtype != "float32" else []))


def old_key(selected: str, policy: str, dtype: str) -> str:
    """The sampling policy's log-probs of the selected responses (`LossSpec.old`: grpo's ratio):
    under `policy` (the policy key of the one that generated them), computed in `dtype` (the
    resolved `train.dtype`), as the references are."""
    return config_key("old", selected, policy, *([dtype] if dtype != "float32" else []))


def train_key(policy: str, selected: str, refs: str | None, train: dict, model: dict, seed: int,
              lora_seed: int | None, old: str | None = None) -> str:
    """A round's training: its starting policy, groups, references, the weight-changing `train`
    options (`train_options`), the `model` options, the new adapter's seed and, for a loss that
    reads them from their own stage, the sampling policy's log-probs (`old_key`; None: the loss
    reads none, or reads the references' first column, which `refs` already keys)."""
    return config_key("train", policy, selected, refs, train, model, seed, lora_seed, *([old] if old else []))


def train_stage_key(train: str, t: int) -> str:
    """Curry-DPO stage t of a round's training (`train.curriculum: pairs`)."""
    return config_key("train-stage", train, t)


def refs_stage_key(train: str, t: int) -> str:
    """Curry-DPO stage t's references (t >= 2: under the policy after stage t - 1)."""
    return config_key("refs-stage", train, t)


def baseline_key(policy: str, split: str, reward: str, embedder: str, eval_options: dict, seed: int) -> str:
    """The initial policy's held-out samples and their summary."""
    from .sampling import SAMPLER

    return config_key("baseline", policy, split, reward, embedder, eval_options, seed, SAMPLER)


def benchmark_key(name: str, policy: str, eval_config, seed: int, dtype: dict | None = None) -> str:
    """Benchmark `name` (greedy) on a policy (the initial one's key, or a round's train key);
    `dtype` is `sampling_dtype_option` of `generate.dtype`."""
    e = eval_config
    return config_key("benchmark", name, policy, e.benchmark_max_new_tokens, e.benchmark_limit,
                      e.benchmark_prompts_per_batch, seed, *([dtype] if dtype else []))


def eval_key(trained: str, baseline: str, eval_options: dict, benchmarks: list[str]) -> str:
    """A round's `eval.json`: its trained policy against the baseline, plus the benchmark keys."""
    return config_key("eval", trained, baseline, eval_options, *benchmarks)


def report_key(evals: list[str]) -> str:
    return config_key("report", evals)


def input_key(source: Path) -> str:
    """A pool file (or folder) given to `ampo train`, by its size and sha256."""
    from .runner import fingerprints

    return config_key("input", list(fingerprints(source.parent, [source]).values()))


def merge_key(train: str) -> str:
    return config_key("merge", train)


# -- the config fields each key reads -------------------------------------------------------------

def train_options(c) -> dict:
    """The `train` options that change the trained weights: all but `TRAIN_COSMETIC`, `max_steps`
    only when set, and the compute dtype (resolved) only when it is not float32."""
    t = {k: v for k, v in dataclasses.asdict(c.train).items() if k not in TRAIN_COSMETIC}
    if not t["max_steps"]:
        t.pop("max_steps")
    t.pop("dtype", None)  # "auto" means different things on different machines: key what it resolves to
    dtype = train_dtype(c)
    if dtype != "float32":
        t["dtype"] = dtype
    return t


def train_dtype(c) -> str:
    """`train.dtype` resolved for this machine ("float32" or "bfloat16")."""
    from .precision import resolve_train_dtype

    return resolve_train_dtype(getattr(c.train, "dtype", "float32"))


def generation_options(c) -> dict:
    """Every `generate` option, with `dtype` resolved for this machine, so that a run resumed on a
    machine that resolves "auto" differently regenerates instead of mixing dtypes."""
    g = dataclasses.asdict(c.generate)
    g["dtype"] = generation_dtype(g["dtype"])
    return g


def generation_dtype(requested: str) -> str:
    """The dtype generation runs in here ("auto" resolved for this machine's device)."""
    from .precision import default_device, resolve_dtype

    return resolve_dtype(requested, default_device())


def eval_options(c) -> dict:
    """The `eval` options of the held-out evaluation (the benchmark ones key their own stages),
    with the sampling dtype (`generate.dtype` resolved here) only when it is not float32."""
    options = {k: v for k, v in dataclasses.asdict(c.eval).items() if not k.startswith("benchmark")}
    return {**options, **sampling_dtype_option(c.generate.dtype)}


def sampling_dtype_option(requested: str) -> dict:
    """{"dtype": resolved} for a key, or {} when `requested` resolves to float32 here (so the keys
    of fp32 machines, made before evaluation sampled in `generate.dtype`, hold)."""
    dtype = generation_dtype(requested)
    return {} if dtype == "float32" else {"dtype": dtype}


def aggregate(c) -> str:
    """`score.aggregate` with "auto" resolved for the configured scorer."""
    from .rewards import resolve_aggregate, reward_kind

    return resolve_aggregate(c.score.aggregate, reward_kind(c.score.reward))


def n_refs(c) -> int:
    """How many reference columns the reference pass computes: 0 (no pass) when the loss reads no
    reference with its configured hyperparameters (`LossSpec.needs_refs`: grpo with `kl = 0`)."""
    from .losses import LOSSES

    return (1 + len(c.train.extra_references)) if LOSSES[c.train.loss].needs_refs(c.train.hparams) else 0


def needs_old(c) -> bool:
    """Whether the loss reads the sampling policy's log-probs (`LossSpec.old`: grpo)."""
    from .losses import LOSSES

    return LOSSES[c.train.loss].old


def lora_seed(c, r: int) -> int:
    """The seed of round r's new LoRA adapter: each round draws different initial weights."""
    return seed_from("lora", c.seed, r)


def _memoised(method: Callable) -> Callable:
    @functools.wraps(method)
    def cached(self, *args):
        slot = (method.__name__, args)
        if slot not in self._memo:
            self._memo[slot] = method(self, *args)
        return self._memo[slot]

    return cached


class RunKeys:
    """The keys of a self-play run's stages (`ampo run`), each computed once.

    Reads only the config and the prompt file: no model is loaded and nothing is written, so
    `ampo run --dry-run` can print every key of a long run in seconds.
    """

    def __init__(self, config, split=None):
        self.c = config
        self._memo: dict[tuple, Any] = {}
        if split is not None:
            self._memo[("split", ())] = split

    @_memoised
    def split(self):
        """The `ampo.prompt_split.PromptSplit` of the run's prompts."""
        from .prompt_split import split_prompts

        return split_prompts(self.c.data)

    def round_prompts(self, r: int) -> list[dict]:
        return self.split().window(r, self.c.data.train_prompts)

    @_memoised
    def split_key(self) -> str:
        d = self.c.data
        return split_key(self.split().rows, d.heldout, d.split_seed, d.gold_field)

    @_memoised
    def policy(self, r: int) -> str:
        """The policy round r starts from: the initial one, or round r - 1's training."""
        return policy_key(self.c.model) if r == 0 else self.train(r - 1)

    @_memoised
    def generate(self, r: int) -> str:
        return generate_key(self.policy(r), self.round_prompts(r), generation_options(self.c), self.c.seed, r,
                            self.c.data.gold_field)

    @_memoised
    def score(self, r: int) -> str:
        return score_key(self.generate(r), self.c.score.reward, aggregate(self.c), self.c.score.unfinished_reward)

    @_memoised
    def embed(self, r: int) -> str:
        policy = self.policy(r) if self.c.embed.embedder == "policy" else None
        return embed_key(self.generate(r), self.c.embed.embedder, policy)

    @_memoised
    def select(self, r: int) -> str:
        return select_key(self.score(r), self.embed(r), dataclasses.asdict(self.c.select), self.c.seed)

    def reference(self, r: int) -> str:
        """The policy key of round r's first reference (`train.reference`)."""
        return self.policy(0 if self.c.train.reference == "initial" else r)

    @_memoised
    def refs(self, r: int) -> str | None:
        if not n_refs(self.c):
            return None
        return refs_key(self.select(r), self.reference(r), self.c.train.extra_references, train_dtype(self.c))

    def old_in_refs(self, r: int) -> bool:
        """The loss reads the sampling policy's log-probs, and round r's first reference is that
        policy (the round-start policy: `train.reference: round_start`, or round 0): the refs
        stage's first column serves as both, computed once."""
        return needs_old(self.c) and self.refs(r) is not None and self.reference(r) == self.policy(r)

    @_memoised
    def old(self, r: int) -> str | None:
        """Round r's old log-prob stage (the round-start policy sampled the round's pool); None
        when the loss reads none or reads the refs stage's first column (`old_in_refs`)."""
        if not needs_old(self.c) or self.old_in_refs(r):
            return None
        return old_key(self.select(r), self.policy(r), train_dtype(self.c))

    @_memoised
    def train(self, r: int) -> str:
        seed = lora_seed(self.c, r) if self.c.model.lora else None
        return train_key(self.policy(r), self.select(r), self.refs(r), train_options(self.c),
                         dataclasses.asdict(self.c.model), self.c.seed, seed, self.old(r))

    def train_stage(self, r: int, t: int) -> str:
        return train_stage_key(self.train(r), t)

    def refs_stage(self, r: int, t: int) -> str:
        return refs_stage_key(self.train(r), t)

    @_memoised
    def baseline(self) -> str:
        c = self.c
        return baseline_key(self.policy(0), self.split_key(), c.score.reward, c.embed.embedder, eval_options(c),
                            c.seed)

    @_memoised
    def benchmark(self, name: str, r: int) -> str:
        """Benchmark `name` on the policy after round r (the initial policy for r = -1)."""
        return benchmark_key(name, self.policy(r + 1), self.c.eval, self.c.seed,
                             sampling_dtype_option(self.c.generate.dtype))

    @_memoised
    def evaluate(self, r: int) -> str:
        benchmarks = [self.benchmark(name, i) for name in self.c.eval.benchmarks for i in (-1, r)]
        return eval_key(self.train(r), self.baseline(), eval_options(self.c), benchmarks)

    def report(self) -> str:
        return report_key([self.evaluate(r) for r in range(self.c.rounds)])


class PoolKeys:
    """The keys of `ampo train` on the pool file `source`: a round 0 whose generation and scoring
    are the file (`input_key`). `has_embeddings`: every record already carries embeddings."""

    def __init__(self, config, source: Path, has_embeddings: bool):
        self.c = config
        self.input = input_key(Path(source))
        self.has_embeddings = has_embeddings
        self._memo: dict[tuple, Any] = {}

    @_memoised
    def policy(self) -> str:
        return policy_key(self.c.model)

    @_memoised
    def embed(self) -> str | None:
        """None: the strategy needs no embeddings or the pool has its own."""
        from .selection import SELECTORS

        if not SELECTORS[self.c.select.strategy].needs_embeddings or self.has_embeddings:
            return None
        policy = self.policy() if self.c.embed.embedder == "policy" else None
        return embed_key(self.input, self.c.embed.embedder, policy)

    @_memoised
    def select(self) -> str:
        return select_key(self.input, self.embed(), dataclasses.asdict(self.c.select), self.c.seed)

    @_memoised
    def refs(self) -> str | None:
        if not n_refs(self.c):
            return None
        return refs_key(self.select(), self.policy(), self.c.train.extra_references, train_dtype(self.c))

    def old_in_refs(self) -> bool:
        """The loss reads the sampling policy's log-probs and has a reference pass: the model being
        trained, at its start, is both (the first reference is always `model.policy` here)."""
        return needs_old(self.c) and self.refs() is not None

    @_memoised
    def old(self) -> str | None:
        """The old log-prob stage: None when the loss reads none or reads the refs' first column."""
        if not needs_old(self.c) or self.old_in_refs():
            return None
        return old_key(self.select(), self.policy(), train_dtype(self.c))

    @_memoised
    def train(self) -> str:
        seed = lora_seed(self.c, 0) if self.c.model.lora else None
        return train_key(self.policy(), self.select(), self.refs(), train_options(self.c),
                         dataclasses.asdict(self.c.model), self.c.seed, seed, self.old())

    def merge(self) -> str:
        return merge_key(self.train())
