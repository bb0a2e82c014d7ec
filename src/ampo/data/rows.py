"""Raw rows from input files: JSONL, Parquet, a `datasets` `save_to_disk` folder, or a .txt prompt
file, each row with its 1-based number (as the user counts lines)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from .records import PoolError


def read_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Raw rows (1-based row numbers, as the user counts lines) from JSONL, Parquet, or a folder
    written by `datasets`' `save_to_disk` (a `DatasetDict`'s `train` split, or its only one)."""
    path = Path(path)
    if not path.exists():
        raise PoolError(path, None, None, "file not found")
    if path.is_dir():
        yield from enumerate(_saved_dataset_rows(path), start=1)
        return
    if not path.is_file():
        raise PoolError(path, None, None, "not a file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with path.open("rb") as f:
            for i, raw in enumerate(f, start=1):
                if raw.strip():
                    yield i, _json_row(path, i, raw)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except pa.ArrowException as e:
            raise PoolError(path, None, None, f"not a readable Parquet file ({str(e).splitlines()[0]})") from None
        for i, row in enumerate(table.to_pylist(), start=1):
            yield i, row
    else:
        raise PoolError(path, None, None, f"unknown file type '{suffix}' (use .jsonl or .parquet)")


def _saved_dataset_rows(folder: Path) -> Iterator[dict]:
    """Rows of a `save_to_disk` folder, read with pyarrow from the Arrow files its `state.json`
    lists (no `datasets` import, no pickle)."""
    import pyarrow as pa

    if (folder / "dataset_dict.json").is_file():
        try:
            splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
        except (ValueError, KeyError, TypeError):
            raise PoolError(folder / "dataset_dict.json", None, None, "not a datasets DatasetDict description") from None
        split = "train" if "train" in splits else splits[0] if len(splits) == 1 else None
        if split is None:
            raise PoolError(folder, None, None, f"a DatasetDict without a 'train' split (splits: {', '.join(splits)}); "
                            "give the split's folder instead")
        folder = folder / split
    state = folder / "state.json"
    if not state.is_file():
        raise PoolError(folder, None, None, "a folder, but not one written by datasets' save_to_disk "
                        "(no state.json or dataset_dict.json)")
    try:
        files = [entry["filename"] for entry in json.loads(state.read_text())["_data_files"]]
    except (ValueError, KeyError, TypeError):
        raise PoolError(state, None, None, "not a datasets state.json (no _data_files)") from None
    for name in files:
        arrow = folder / Path(name).name  # a file of this folder, never a path elsewhere
        try:
            with pa.memory_map(str(arrow)) as f:
                table = pa.ipc.open_stream(f).read_all()
        except (OSError, pa.ArrowException) as e:
            raise PoolError(arrow, None, None, f"not a readable Arrow file ({str(e).splitlines()[0]})") from None
        yield from table.to_pylist()


class _DuplicateMember(ValueError):
    """A JSON object that names one member twice (`json` would keep only the last value)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def unique_members(pairs: list[tuple[str, Any]]) -> dict:
    """`object_pairs_hook` that refuses a member name given twice in one object."""
    obj: dict = {}
    for name, value in pairs:
        if name in obj:
            raise _DuplicateMember(name)
        obj[name] = value
    return obj


def loads(text: str | bytes) -> Any:
    """`json.loads`, raising `_DuplicateMember` for a member name given twice in one object."""
    return json.loads(text, object_pairs_hook=unique_members)


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # how a (lone) UTF-16 surrogate is written in JSON


def lone_surrogate(value: Any, where: str = "") -> tuple[str, str] | None:
    """(the member path, the character) of the first string in `value` (keys included) that holds a
    lone UTF-16 surrogate: valid JSON (`"\\ud800"`), but not Unicode text, so no UTF-8 file can hold
    it; None if there is none."""
    if isinstance(value, str):
        for ch in value:
            if "\ud800" <= ch <= "\udfff":
                return where, ch
        return None
    items = (enumerate(value) if isinstance(value, list)
             else value.items() if isinstance(value, dict) else ())
    for key, item in items:
        name = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else str(key)
        found = (lone_surrogate(key, name) if isinstance(key, str) else None) or lone_surrogate(item, name)
        if found:
            return found
    return None


def _json_row(path: Path, i: int, raw: bytes) -> dict:
    """One JSONL line as a dict, or a PoolError naming the row (and the member, for a name given
    twice in one object or a string that is not Unicode text)."""
    try:
        row = loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise PoolError(path, i, None, f"not UTF-8 text (byte {e.start + 1} of the line)") from None
    except json.JSONDecodeError as e:
        raise PoolError(path, i, None, f"not valid JSON ({e.msg})") from None
    except RecursionError:
        raise PoolError(path, i, None, "not valid JSON (nested too deeply)") from None
    except _DuplicateMember as e:
        name = e.name if len(e.name) <= 60 else e.name[:60] + "..."
        raise PoolError(path, i, name, "given twice in one JSON object (a reader would silently keep one of "
                        "the values)") from None
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise PoolError(path, i, None, f"not valid JSON ({e})") from None
    if not isinstance(row, dict):
        raise PoolError(path, i, None, "a row must be a JSON object")
    try:
        found = _SURROGATE_ESCAPE.search(raw) and lone_surrogate(row)
    except RecursionError:
        raise PoolError(path, i, None, "not valid JSON (nested too deeply)") from None
    if found:
        raise PoolError(path, i, found[0], f"holds a lone surrogate {ascii(found[1])}, half of a UTF-16 pair: "
                        "valid JSON, but not Unicode text")
    return row


def _txt_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """A .txt prompt file's non-blank lines as rows `{"prompt": line}` (1-based row numbers)."""
    if not path.is_file():
        raise PoolError(path, None, None, "file not found" if not path.exists() else "not a file")
    with path.open("rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise PoolError(path, i, None, f"not UTF-8 text (byte {e.start + 1} of the line)") from None
            if line:
                yield i, {"prompt": line}
