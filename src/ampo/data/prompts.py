"""Reading prompt files: ids, prompts, optional `meta` objects and gold responses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import short
from .checks import _check_meta, _check_prompt
from .records import PoolError, Prompt
from .rows import _txt_rows, read_rows


def read_prompts(path: str | Path) -> list[tuple[str, Prompt]]:
    """(id, prompt) pairs from a JSONL/Parquet file with a `prompt` field, or a .txt (one per line)."""
    return [(row["id"], row["prompt"]) for row in read_prompt_rows(path)]


def read_prompt_rows(path: str | Path, gold_field: str | None = None) -> list[dict[str, Any]]:
    """`{"id", "prompt"}` per prompt (plus `"meta"`, a JSON object, where the row has one) from a
    JSONL/Parquet file with a `prompt` field, or a .txt (one per line). Refuses a file without
    prompts and duplicate ids. With `gold_field`, every row must hold a gold response (a
    non-empty string) in that column, returned as `"gold"`."""
    path = Path(path)
    if gold_field is not None and path.suffix.lower() == ".txt":
        raise PoolError(path, None, gold_field, "a .txt prompt file has no gold-response column")
    out, first_row = [], {}
    for i, row in _txt_rows(path) if path.suffix.lower() == ".txt" else read_rows(path):
        if "prompt" not in row and "instruction" not in row:
            raise PoolError(path, i, "prompt", "missing")
        prompt = _check_prompt(path, i, row.get("prompt", row.get("instruction")))
        rid = row.get("id", row.get("prompt_id"))
        rid = str(rid) if rid is not None else f"row{i}"
        if rid in first_row:
            raise PoolError(path, i, "id", f"duplicate id {short(rid)} (first on row {first_row[rid]})")
        first_row[rid] = i
        out.append({"id": rid, "prompt": prompt})
        if row.get("meta") is not None:
            out[-1]["meta"] = _check_meta(path, i, row["meta"])
        if gold_field is not None:
            gold = row.get(gold_field)
            if not isinstance(gold, str) or not gold.strip():
                raise PoolError(path, i, gold_field, "missing" if gold is None else "must be a non-empty string "
                                "(the gold response of data.gold_field)")
            out[-1]["gold"] = gold
    if not out:
        raise PoolError(path, None, None, "no prompts")
    return out
