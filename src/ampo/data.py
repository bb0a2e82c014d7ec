"""Pool records: the one data shape every stage reads and writes, with validation and atomic I/O.

A pool record is one prompt with its responses (and, once scored / embedded / selected, their
rewards, embeddings and the selected indices). Files are JSONL or Parquet, chosen by extension.
Readers also accept the published multi-response layouts and TRL preference pairs, and report
which column mapping they used. Bad input raises `PoolError` naming file, row and field.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

Prompt = str | list[dict]


class PoolError(ValueError):
    """Bad input: the message names the file, the row (1-based) and the field."""

    def __init__(self, path: str | Path, row: int | None, field_name: str | None, problem: str):
        where = str(path)
        if row is not None:
            where += f": row {row}"
        if field_name is not None:
            where += f": field '{field_name}'"
        super().__init__(f"{where}: {problem}")


@dataclass
class PoolRecord:
    """One prompt and its response pool. Lists are parallel: one entry per response."""

    prompt: Prompt
    responses: list[str]
    rewards: list[float] | None = None
    embeddings: np.ndarray | None = None  # float32 [n_responses, d]
    id: str | None = None
    finished: list[bool] | None = None  # ended with EOS (True) or at the token limit (False)
    n_tokens: list[int] | None = None
    selected: list[int] | None = None  # selection: positive first, then the negatives
    meta: dict[str, Any] | None = None  # prompt-side data a reward may need (e.g. IFEval's constraints)
    extra: dict[str, Any] = field(default_factory=dict)  # columns a stage adds (e.g. ref_logps)

    def to_row(self) -> dict[str, Any]:
        """A JSON/Parquet-friendly dict with only the fields that are set."""
        row: dict[str, Any] = {"id": self.id, "prompt": self.prompt, "responses": list(self.responses)}
        if self.rewards is not None:
            row["rewards"] = [float(r) for r in self.rewards]
        if self.embeddings is not None:
            row["embeddings"] = np.asarray(self.embeddings, dtype=np.float32).tolist()
        if self.finished is not None:
            row["finished"] = [bool(f) for f in self.finished]
        if self.n_tokens is not None:
            row["n_tokens"] = [int(n) for n in self.n_tokens]
        if self.selected is not None:
            row["selected"] = [int(i) for i in self.selected]
        if self.meta is not None:
            row["meta"] = self.meta
        row.update(self.extra)
        return row


def prompt_text(prompt: Prompt) -> str:
    """Plain text of a prompt: itself, or the content of the last user message of a chat list."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else prompt[-1]["content"]


# ---------------------------------------------------------------------------------------------
# Atomic writes


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds.

    A crash or an exception leaves no file at `path` (or the previous one untouched).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------
# Reading


def read_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Raw rows (1-based row numbers) from JSONL or Parquet."""
    path = Path(path)
    if not path.exists():
        raise PoolError(path, None, None, "file not found")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with path.open() as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PoolError(path, i, None, f"not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise PoolError(path, i, None, "a row must be a JSON object")
                yield i, row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield i, row
    else:
        raise PoolError(path, None, None, f"unknown file type '{suffix}' (use .jsonl or .parquet)")


def detect_layout(row: dict) -> str:
    """Name the column mapping a row follows (see `read_pool`)."""
    if "responses" in row:
        return "ampo"
    if "all_generated_responses" in row:
        return "multi_response"
    if "completions" in row:
        return "ultrafeedback"
    if "chosen" in row and "rejected" in row:
        return "trl_pairs"
    if "prompt" in row:
        return "prompts"
    return "unknown"


def _check_prompt(path: Path, i: int, value: Any, name: str = "prompt") -> Prompt:
    if isinstance(value, str):
        if not value.strip():
            raise PoolError(path, i, name, "empty prompt")
        return value
    if isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    ):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise PoolError(path, i, name, "must be a string or a list of {role, content} messages")


def _check_meta(path: Path, i: int, value: Any) -> dict[str, Any]:
    """A prompt's `meta`: a JSON object, given as one or as its JSON text (how Parquet stores it)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise PoolError(path, i, "meta", f"not valid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise PoolError(path, i, "meta", "must be a JSON object")
    return value


def _message_text(value: Any) -> Any:
    """TRL conversational responses are message lists: keep the assistant's text."""
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return value[-1].get("content")
    return value


def _check_responses(path: Path, i: int, value: Any, name: str) -> list[str]:
    if not isinstance(value, list):
        raise PoolError(path, i, name, "must be a list of strings")
    if not value:
        raise PoolError(path, i, name, "empty response list")
    out = [_message_text(v) for v in value]
    for j, v in enumerate(out):
        if not isinstance(v, str):
            raise PoolError(path, i, f"{name}[{j}]", f"must be a string, got {type(v).__name__}")
    return out


def _check_floats(path: Path, i: int, value: Any, name: str, n: int) -> list[float]:
    if not isinstance(value, list):
        raise PoolError(path, i, name, "must be a list of numbers")
    if len(value) != n:
        raise PoolError(path, i, name, f"has {len(value)} entries but there are {n} responses")
    out = []
    for j, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise PoolError(path, i, f"{name}[{j}]", f"must be a number, got {v!r}")
        if not math.isfinite(v):
            raise PoolError(path, i, f"{name}[{j}]", f"must be finite, got {v}")
        out.append(float(v))
    return out


def _parse_row(path: Path, i: int, row: dict, layout: str) -> PoolRecord:
    """One raw row in `layout` → a validated PoolRecord."""
    rid = row.get("id", row.get("prompt_id"))
    if layout == "ampo":
        prompt = _check_prompt(path, i, row.get("prompt"))
        responses = _check_responses(path, i, row.get("responses"), "responses")
        rewards = row.get("rewards")
        rewards = None if rewards is None else _check_floats(path, i, rewards, "rewards", len(responses))
    elif layout == "multi_response":
        prompt = _check_prompt(path, i, row.get("prompt"))
        responses = _check_responses(path, i, row["all_generated_responses"], "all_generated_responses")
        scores = row.get("all_reward_scores")
        rewards = None if scores is None else _check_floats(path, i, scores, "all_reward_scores", len(responses))
    elif layout == "ultrafeedback":
        prompt = _check_prompt(path, i, row.get("prompt", row.get("instruction")))
        comps = row["completions"]
        if not isinstance(comps, list) or not comps:
            raise PoolError(path, i, "completions", "must be a non-empty list")
        for j, c in enumerate(comps):
            if not isinstance(c, dict) or "response" not in c:
                raise PoolError(path, i, f"completions[{j}]", "needs a 'response'")
        responses = _check_responses(path, i, [c["response"] for c in comps], "completions.response")
        scores = [c.get("overall_score") for c in comps]
        rewards = None if all(s is None for s in scores) else _check_floats(
            path, i, scores, "completions.overall_score", len(responses))
    elif layout == "trl_pairs":
        prompt = _check_prompt(path, i, row.get("prompt"))
        responses = _check_responses(path, i, [row["chosen"], row["rejected"]], "chosen/rejected")
        if "score_chosen" in row and "score_rejected" in row:
            rewards = _check_floats(path, i, [row["score_chosen"], row["score_rejected"]],
                                    "score_chosen/score_rejected", 2)
        else:
            rewards = [1.0, 0.0]  # chosen preferred: a hard label
    else:
        raise PoolError(path, i, None, "no 'responses' (or all_generated_responses, completions, "
                        "chosen/rejected) field: not a pool file")
    rec = PoolRecord(prompt=prompt, responses=responses, rewards=rewards,
                     id=str(rid) if rid is not None else f"row{i}")
    if row.get("embeddings") is not None:
        emb = np.asarray(row["embeddings"], dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(responses):
            raise PoolError(path, i, "embeddings", f"must be [{len(responses)}, d], got shape {emb.shape}")
        if not np.isfinite(emb).all():
            raise PoolError(path, i, "embeddings", "must be finite")
        rec.embeddings = emb
    for name, kind in (("finished", bool), ("n_tokens", int), ("selected", int)):
        if row.get(name) is not None:
            vals = row[name]
            if not isinstance(vals, list) or not all(isinstance(v, kind) for v in vals):
                raise PoolError(path, i, name, f"must be a list of {kind.__name__}")
            setattr(rec, name, list(vals))
    if rec.selected is not None and any(not 0 <= s < len(responses) for s in rec.selected):
        raise PoolError(path, i, "selected", "index out of range")
    if row.get("meta") is not None:
        rec.meta = _check_meta(path, i, row["meta"])
    known = {"id", "prompt_id", "prompt", "responses", "rewards", "embeddings", "finished",
             "n_tokens", "selected", "meta", "all_generated_responses", "all_reward_scores", "completions",
             "instruction", "chosen", "rejected", "score_chosen", "score_rejected"}
    rec.extra = {k: v for k, v in row.items() if k not in known and layout == "ampo"}
    return rec


def read_pool(path: str | Path, require: tuple[str, ...] = ()) -> tuple[list[PoolRecord], str]:
    """Read and validate a pool file; return (records, layout name).

    Layouts: `ampo` (prompt/responses/rewards/embeddings), `multi_response`
    (all_generated_responses/all_reward_scores), `ultrafeedback` (completions with
    overall_score), `trl_pairs` (prompt/chosen/rejected; rewards 1/0 unless scores are given).
    `require` names fields every record must have (e.g. "rewards", "embeddings").
    """
    path = Path(path)
    records: list[PoolRecord] = []
    layout = None
    for i, row in read_rows(path):
        layout = layout or detect_layout(row)
        rec = _parse_row(path, i, row, layout)
        for name in require:
            if getattr(rec, name) is None:
                raise PoolError(path, i, name, "missing (run the stage that produces it first)")
        records.append(rec)
    if not records:
        raise PoolError(path, None, None, "no rows")
    return records, layout or "ampo"


def read_prompts(path: str | Path) -> list[tuple[str, Prompt]]:
    """(id, prompt) pairs from a JSONL/Parquet file with a `prompt` field, or a .txt (one per line)."""
    return [(row["id"], row["prompt"]) for row in read_prompt_rows(path)]


def read_prompt_rows(path: str | Path) -> list[dict[str, Any]]:
    """`{"id", "prompt"}` per prompt (plus `"meta"`, a JSON object, where the row has one) from a
    JSONL/Parquet file with a `prompt` field, or a .txt (one per line)."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        if not path.exists():
            raise PoolError(path, None, None, "file not found")
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        return [{"id": f"row{i}", "prompt": ln} for i, ln in enumerate(lines, start=1) if ln]
    out = []
    for i, row in read_rows(path):
        if "prompt" not in row and "instruction" not in row:
            raise PoolError(path, i, "prompt", "missing")
        prompt = _check_prompt(path, i, row.get("prompt", row.get("instruction")))
        rid = row.get("id", row.get("prompt_id"))
        out.append({"id": str(rid) if rid is not None else f"row{i}", "prompt": prompt})
        if row.get("meta") is not None:
            out[-1]["meta"] = _check_meta(path, i, row["meta"])
    if not out:
        raise PoolError(path, None, None, "no prompts")
    ids = [row["id"] for row in out]
    if len(set(ids)) != len(ids):
        dup = next(r for r in ids if ids.count(r) > 1)
        raise PoolError(path, ids.index(dup) + 1, "id", f"duplicate id '{dup}'")
    return out


# ---------------------------------------------------------------------------------------------
# Writing


def write_rows(path: str | Path, rows: list[dict]) -> None:
    """Write dict rows atomically as JSONL or Parquet (by extension)."""
    path = Path(path)
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix in (".jsonl", ".json"):
            with tmp.open("w") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        elif suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            # `meta` objects differ in shape from row to row: Parquet keeps each as its JSON text
            rows = [{**r, "meta": json.dumps(r["meta"])} if isinstance(r.get("meta"), dict) else r for r in rows]
            if len({isinstance(r.get("prompt"), str) for r in rows}) > 1:
                # Parquet columns have one type: write plain prompts as one user message (same meaning)
                rows = [{**r, "prompt": [{"role": "user", "content": r["prompt"]}]} if isinstance(r.get("prompt"), str)
                        else r for r in rows]
            pq.write_table(pa.Table.from_pylist(rows), tmp)
        else:
            raise ValueError(f"{path}: unknown file type '{suffix}' (use .jsonl or .parquet)")


def write_pool(path: str | Path, records: list[PoolRecord]) -> None:
    """Write pool records atomically as JSONL or Parquet (by extension)."""
    write_rows(path, [r.to_row() for r in records])


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
