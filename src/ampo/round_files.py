"""Reading a finished round folder back: the pool with its rewards, preference matrices,
embeddings and selection joined in. What the pipeline's later stages and `ampo report` read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import PoolRecord, read_pool


def read_scored_pool(round_dir: Path, with_selection: bool = True) -> list[PoolRecord]:
    """`round_dir`'s pool (`pool.parquet`) with `rewards.parquet`, `embeddings.npy` and, optionally,
    `selection.parquet` joined in."""
    import pyarrow.parquet as pq

    pool, _ = read_pool(round_dir / "pool.parquet")
    rewards = pq.read_table(round_dir / "rewards.parquet").to_pylist()
    emb = np.load(round_dir / "embeddings.npy")
    offset = 0
    for rec, row in zip(pool, rewards, strict=True):
        n = len(rec.responses)
        rec.rewards = row["rewards"]
        if row.get("pref_logits") is not None:
            rec.extra["pref_logits"] = np.asarray(row["pref_logits"], dtype=np.float64)
        rec.embeddings = emb[offset: offset + n]
        offset += n
    if with_selection:
        for rec, row in zip(pool, pq.read_table(round_dir / "selection.parquet").to_pylist(), strict=True):
            rec.selected = row["selected"]
    return pool
