"""The stage functions, from inputs to outputs, that both the stage commands (`ampo generate`,
`score`, `embed`, `select`, `train`) and `Pipeline` call: sampling, scoring, embedding, selection,
reference log-probs, and the policy a round starts from. They know nothing of run folders, keys or
processes (that is `ampo.runner` and `ampo.pipeline`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from .data import PoolRecord


def sample_rows(generator, prompts: list[dict], progress: bool = True) -> list[dict]:
    """N samples per prompt row (`id`, `prompt`, optional `meta`) as pool rows. Each response's
    random stream follows from (the generator's seed, the prompt's id, the sample index)."""
    samples = generator.generate([p["prompt"] for p in prompts], progress=progress, keys=[p["id"] for p in prompts])
    return [{"id": p["id"], "prompt": p["prompt"], "responses": [x.text for x in ss],
             "finished": [x.finished for x in ss], "n_tokens": [x.n_tokens for x in ss],
             **({"meta": p["meta"]} if p.get("meta") is not None else {})}
            for p, ss in zip(prompts, samples)]


def embed_pool(embedder, pool: list[PoolRecord]) -> list[np.ndarray]:
    """Embed every response in one call; one float32 `[n_responses, d]` array per record."""
    emb = np.asarray(embedder([t for rec in pool for t in rec.responses]), dtype=np.float32)
    return _per_record(emb, pool)


def _per_record(flat: np.ndarray, pool: list[PoolRecord]) -> list[np.ndarray]:
    return np.split(flat, np.cumsum([len(rec.responses) for rec in pool])[:-1]) if pool else []


def select_pool(strategy: str, k: int, pool: list[PoolRecord], seed: int, progress: bool = True,
                require_beats: float | None = None, min_margin: float | None = None):
    """Active selection on scored records (embedded where the strategy needs it): a
    `ampo.preference_filters.GroupSelection`, positive first in each prompt's indices.
    `require_beats` and `min_margin` are `ampo.preference_filters.select_groups`' preference
    filters (a record's matrix is its `extra["pref_logits"]`, where it has one)."""
    from .preference_filters import select_groups
    from .selection import SELECTORS

    embeddings = [rec.embeddings for rec in pool] if SELECTORS[strategy].needs_embeddings else None
    return select_groups(strategy, [np.asarray(rec.rewards) for rec in pool], embeddings, k, seed=seed,
                         prefs=[rec.extra.get("pref_logits") for rec in pool], require_beats=require_beats,
                         min_margin=min_margin, progress=progress)


def reference_logps(references: Iterable[tuple], pool: list[PoolRecord], shared_prefix: bool = False,
                    progress: bool = True, dtype: str = "float32") -> list[list[list[float]]]:
    """Summed log-probs of each record's selected responses under each reference (model,
    tokenizer): per record `[R][K]`. `references` may load each model lazily (one in memory).
    `dtype`: the resolved `train.dtype` (`ampo.precision.resolve_train_dtype`), the numerics the
    policy trains in; references computed otherwise start the log-ratios away from 0."""
    columns = [selected_logprobs(policy, pool, shared_prefix, progress, dtype) for policy in references]
    return [[col[i].tolist() for col in columns] for i in range(len(pool))]


def selected_logprobs(policy: tuple, pool: list[PoolRecord], shared_prefix: bool = False,
                      progress: bool = True, dtype: str = "float32") -> list[np.ndarray]:
    """Summed log-probs of each record's selected responses under `policy` (model, tokenizer), in
    the resolved compute `dtype` (as `reference_logps`)."""
    from .layouts import response_logprobs

    prompts = [rec.prompt for rec in pool]
    responses = [[rec.responses[i] for i in rec.selected] for rec in pool]
    finished = [[rec.finished[i] if rec.finished else True for i in rec.selected] for rec in pool]
    return response_logprobs(*policy, prompts, responses, finished, progress=progress,
                             shared_prefix=shared_prefix, dtype=dtype)[0]


def load_round_policy(c, checkpoints: list[Path]):
    """The initial policy (`c.model`) with the given round checkpoints applied in order.

    A LoRA checkpoint is an adapter merged into the weights; a full fine-tune checkpoint is a
    complete model folder, so only the last one matters.
    """
    from .models import load_policy

    full = [p for p in checkpoints if (p / "config.json").exists()]
    start = full[-1] if full else c.model.policy
    model, tok = load_policy(str(start), dtype=c.model.dtype, trust_remote_code=c.model.trust_remote_code)
    adapters = checkpoints[checkpoints.index(full[-1]) + 1:] if full else checkpoints
    if adapters:
        from .models import load_adapter

        for path in adapters:
            model = load_adapter(model, path).merge_and_unload()
    return model, tok


def references(c, first: tuple):
    """The reference models of `c.train`: `first` (model, tokenizer), then each of
    `train.extra_references`, loaded one at a time."""
    from .models import load_policy

    yield first
    for path in c.train.extra_references:
        yield load_policy(path, dtype=c.model.dtype, trust_remote_code=c.model.trust_remote_code)
