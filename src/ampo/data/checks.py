"""Field checks for input rows: each returns the value in its clean form or raises `PoolError`
naming the file, row and field."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import short
from .records import PoolError, Prompt
from .rows import _DuplicateMember, lone_surrogate, loads


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
            value = loads(value)
            surrogate = lone_surrogate(value, "meta")
        except _DuplicateMember as e:
            raise PoolError(path, i, "meta", f"member {short(e.name)} given twice in one JSON object") from None
        except json.JSONDecodeError as e:
            raise PoolError(path, i, "meta", f"not valid JSON ({e.msg})") from None
        except RecursionError:
            raise PoolError(path, i, "meta", "not valid JSON (nested too deeply)") from None
        except ValueError as e:  # e.g. an integer with more digits than Python converts
            raise PoolError(path, i, "meta", f"not valid JSON ({e})") from None
        if surrogate:
            raise PoolError(path, i, surrogate[0], f"holds a lone surrogate {ascii(surrogate[1])}: not Unicode text")
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
    return [_check_number(path, i, v, f"{name}[{j}]") for j, v in enumerate(value)]


def _check_number(path: Path, i: int, value: Any, name: str) -> float:
    """A finite number as float (a 400-digit integer is refused, not overflowed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PoolError(path, i, name, f"must be a number, got {short(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise PoolError(path, i, name, f"must be finite, got an integer of {len(str(value))} digits") from None
    if not math.isfinite(number):
        raise PoolError(path, i, name, f"must be finite, got {number}")
    return number


def _field(path: Path, i: int, row: dict, name: str, layout: str) -> Any:
    """`row[name]`, which the file's layout (set by its first row) requires."""
    if name not in row:
        raise PoolError(path, i, name, f"missing (the file's first row has the {layout} layout, which needs it)")
    return row[name]


def _check_embeddings(path: Path, i: int, value: Any, n: int) -> np.ndarray:
    """A finite float32 matrix with one row of numbers per response."""
    if not (isinstance(value, list) and all(isinstance(e, list) for e in value)):
        raise PoolError(path, i, "embeddings", "must be a list of number lists, one per response")
    widths = {len(e) for e in value}
    if len(widths) > 1:
        raise PoolError(path, i, "embeddings", f"rows have different widths {sorted(widths)}")
    try:
        emb = np.asarray(value)
    except ValueError:  # ragged deeper down
        emb = None
    if emb is None or emb.ndim != 2 or emb.dtype.kind not in "iuf":  # no strings, booleans, nested lists
        raise PoolError(path, i, "embeddings", "must hold numbers only")
    emb = emb.astype(np.float32)
    if emb.shape[0] != n or emb.shape[1] == 0:
        raise PoolError(path, i, "embeddings", f"must be [{n}, d] (one row per response), got shape {emb.shape}")
    if not np.isfinite(emb).all():
        raise PoolError(path, i, "embeddings", "must be finite")
    return emb
