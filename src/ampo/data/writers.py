"""Writing rows and pools atomically as JSONL or Parquet (by extension), and the row shapes written
from pools: gold responses appended, TRL preference pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .atomic import atomic_path
from .records import PoolRecord


def output_format(path: str | Path) -> str:
    """The format an output path asks for ("jsonl" or "parquet"), checked before any work is done."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".jsonl", ".json", ".parquet"):
        raise ValueError(f"{path}: unknown file type '{suffix}' (use .jsonl or .parquet)")
    return "parquet" if suffix == ".parquet" else "jsonl"


def write_rows(path: str | Path, rows: list[dict]) -> None:
    """Write dict rows atomically as JSONL or Parquet (by extension)."""
    fmt = output_format(path)
    with atomic_path(path) as tmp:
        dump_rows(tmp, rows, fmt)


def dump_rows(target: Path, rows: list[dict], fmt: str) -> None:
    """Write dict rows to `target` as `fmt` ("jsonl" or "parquet"); `write_rows` makes it atomic."""
    if fmt == "jsonl":
        with target.open("w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        # `meta` objects differ in shape from row to row: Parquet keeps each as its JSON text
        rows = [{**r, "meta": json.dumps(r["meta"])} if isinstance(r.get("meta"), dict) else r for r in rows]
        if len({isinstance(r.get("prompt"), str) for r in rows}) > 1:
            # Parquet columns have one type: write plain prompts as one user message (same meaning)
            rows = [{**r, "prompt": [{"role": "user", "content": r["prompt"]}]} if isinstance(r.get("prompt"), str)
                    else r for r in rows]
        pq.write_table(pa.Table.from_pylist(rows), target)


def write_pool(path: str | Path, records: list[PoolRecord]) -> None:
    """Write pool records atomically as JSONL or Parquet (by extension)."""
    write_rows(path, [r.to_row() for r in records])


def add_gold(row: dict[str, Any], gold: str, n_tokens: int) -> dict[str, Any]:
    """A generated pool row with a gold (off-policy) response appended: finished, its token count,
    and an `origin` column ("policy" per sampled response, "gold" for it) so that nothing reads
    the gold as the policy's own sample (DNO's gold response, `data.gold_field`)."""
    n = len(row["responses"])
    return {**row, "responses": [*row["responses"], gold], "finished": [*row["finished"], True],
            "n_tokens": [*row["n_tokens"], n_tokens], "origin": ["policy"] * n + ["gold"]}


def trl_pairs(records: list[PoolRecord]) -> list[dict]:
    """Selected groups as TRL preference pairs: (positive, each negative) per prompt."""
    rows = []
    for rec in records:
        if rec.selected is None:
            raise ValueError(f"record '{rec.id}' has no selection")
        pos, *negs = rec.selected
        for j in negs:
            row = {"prompt": rec.prompt, "chosen": rec.responses[pos], "rejected": rec.responses[j]}
            if rec.rewards is not None:
                row["score_chosen"] = rec.rewards[pos]
                row["score_rejected"] = rec.rewards[j]
            rows.append(row)
    return rows
