"""Raw rows from input files: JSONL, Parquet, a `datasets` `save_to_disk` folder, or a .txt prompt
file, each row with its 1-based number (as the user counts lines)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

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


def _json_row(path: Path, i: int, raw: bytes) -> dict:
    """One JSONL line as a dict, or a PoolError naming the row."""
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise PoolError(path, i, None, f"not UTF-8 text (byte {e.start + 1} of the line)") from None
    except json.JSONDecodeError as e:
        raise PoolError(path, i, None, f"not valid JSON ({e.msg})") from None
    except RecursionError:
        raise PoolError(path, i, None, "not valid JSON (nested too deeply)") from None
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise PoolError(path, i, None, f"not valid JSON ({e})") from None
    if not isinstance(row, dict):
        raise PoolError(path, i, None, "a row must be a JSON object")
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
