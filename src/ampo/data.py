"""Pool records: the one data shape every stage reads and writes, with validation and atomic I/O.

A pool record is one prompt with its responses (and, once scored / embedded / selected, their
rewards, embeddings and the selected indices). Files are JSONL or Parquet, chosen by extension.
Readers also accept the published multi-response layouts and TRL preference pairs, and report
which column mapping they used. Bad input raises `PoolError` naming file, row and field.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import secrets
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .config import short

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


def _temp_name(path: Path) -> Path:
    """A hidden, unique sibling of `path` to write into before renaming."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


class WriteError(OSError):
    """An OSError while writing an output, its message naming the output."""


def _write_error(path: Path, error: OSError) -> OSError:
    """The same OSError, its message naming the file being written (a full disk names none)."""
    if isinstance(error, FileExistsError):  # mkdir: a parent's name is taken by a file
        error = NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
    return WriteError(error.errno, f"cannot write {path}: {error.strerror or error}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds.

    A crash or an exception leaves no file at `path` (or the previous one untouched). The file is
    created like any new file (0666 less the umask: 0644 by default), not 0600 as `mkstemp` would.
    An OSError (full disk, a parent that is a file, a read-only folder) names `path`.
    """
    path = Path(path)
    tmp_path = _temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except WriteError:  # another output written inside this block: already named
        raise
    except OSError as e:
        raise _write_error(path, e) from e
    finally:
        tmp_path.unlink(missing_ok=True)


def widen_permissions(folder: Path) -> None:
    """Give `folder`, its subfolders and its files at least the umask's usual modes (0755 and 0644
    by default): some writers create them 0600 (safetensors' `save_file`) or 0700 (`mkdtemp`)."""
    mask = os.umask(0o022)  # reading the umask means setting it: set it straight back
    os.umask(mask)
    for path in [folder, *folder.rglob("*")]:
        if path.is_file() or path.is_dir():
            usual = (0o777 if path.is_dir() else 0o666) & ~mask
            path.chmod(stat.S_IMODE(path.stat().st_mode) | usual)


def ensure_dir(path: str | Path) -> Path:
    """Make output folder `path` (and its parents); an OSError names it, as for any output."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(path, e) from e
    return path


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a new empty folder beside `path`; it replaces `path` only if the block succeeds.

    A killed or failed write leaves the previous folder (or none), never a partial one at `path`.
    Its files get the usual permissions (`widen_permissions`).
    """
    path = Path(path)
    tmp_path = _temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path.mkdir()
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        yield tmp_path
        widen_permissions(tmp_path)
        shutil.rmtree(path, ignore_errors=True)
        os.rename(tmp_path, path)
    except WriteError:
        raise
    except OSError as e:
        raise _write_error(path, e) from e
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------
# Reading


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


def detect_layout(row: dict) -> str:
    """Name the column mapping a row follows (see `read_pool`)."""
    if "responses" in row:
        return "ampo"
    if "all_generated_responses" in row:
        return "multi_response"
    if "completions" in row:
        return "ultrafeedback"
    if "A0" in row:
        return "numbered"
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
        except RecursionError:
            raise PoolError(path, i, "meta", "not valid JSON (nested too deeply)") from None
        except ValueError as e:  # e.g. an integer with more digits than Python converts
            raise PoolError(path, i, "meta", f"not valid JSON ({e})") from None
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
        responses = _check_responses(path, i, _field(path, i, row, "all_generated_responses", layout),
                                     "all_generated_responses")
        scores = row.get("all_reward_scores")
        rewards = None if scores is None else _check_floats(path, i, scores, "all_reward_scores", len(responses))
    elif layout == "ultrafeedback":
        prompt = _check_prompt(path, i, row.get("prompt", row.get("instruction")))
        comps = _field(path, i, row, "completions", layout)
        if not isinstance(comps, list) or not comps:
            raise PoolError(path, i, "completions", "must be a non-empty list")
        for j, c in enumerate(comps):
            if not isinstance(c, dict) or "response" not in c:
                raise PoolError(path, i, f"completions[{j}]", "needs a 'response'")
        responses = _check_responses(path, i, [c["response"] for c in comps], "completions.response")
        scores = [c.get("overall_score") for c in comps]
        rewards = None if all(s is None for s in scores) else _check_floats(
            path, i, scores, "completions.overall_score", len(responses))
    elif layout == "numbered":
        prompt = _check_prompt(path, i, row.get("prompt"))
        responses, rewards = _numbered_columns(path, i, row)
    elif layout == "trl_pairs":
        prompt = _check_prompt(path, i, row.get("prompt"))
        responses = [_check_responses(path, i, [_field(path, i, row, name, layout)], name)[0]
                     for name in ("chosen", "rejected")]
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
        rec.embeddings = _check_embeddings(path, i, row["embeddings"], len(responses))
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


def _numbered_columns(path: Path, i: int, row: dict) -> tuple[list[str], list[float] | None]:
    """Responses `A0, A1, ...` and their rewards `score_A0, score_A1, ...` (the AMPO authors'
    published layout). A missing or null `Aj` (sets whose rows differ in size) is no response."""
    names = [f"A{j}" for j in range(len(row)) if row.get(f"A{j}") is not None]
    if not names:
        raise PoolError(path, i, "A0", "no responses (every A0, A1, ... is missing or null)")
    responses = _check_responses(path, i, [row[n] for n in names], "A0..An")
    scores = [row.get(f"score_{n}") for n in names]
    if all(s is None for s in scores):
        return responses, None
    missing = next((n for n, s in zip(names, scores) if s is None), None)
    if missing:
        raise PoolError(path, i, f"score_{missing}", "missing while other responses have scores")
    return responses, [_check_number(path, i, s, f"score_{n}") for n, s in zip(names, scores)]


RESPONSE_FIELDS = {"ampo": "responses", "multi_response": "all_generated_responses", "ultrafeedback": "completions",
                   "numbered": "A0..An", "trl_pairs": "chosen/rejected"}  # where each layout keeps its responses


def read_pool(path: str | Path, require: tuple[str, ...] = (), min_responses: int = 1,
              why: str = "run the stage that produces it first") -> tuple[list[PoolRecord], str]:
    """Read and validate a pool file; return (records, layout name).

    Layouts: `ampo` (prompt/responses/rewards/embeddings), `multi_response`
    (all_generated_responses/all_reward_scores), `ultrafeedback` (completions with
    overall_score), `numbered` (A0..An/score_A0..score_An), `trl_pairs` (prompt/chosen/rejected;
    rewards 1/0 unless scores are given). `path` may also be a `save_to_disk` folder.
    `require` names fields every record must have (e.g. "rewards", "embeddings"; `why` says what
    to do about a missing one), `min_responses` how many responses each needs.
    """
    path = Path(path)
    records: list[PoolRecord] = []
    layout = None
    width = None  # (embedding width, row that set it)
    for i, row in read_rows(path):
        layout = layout or detect_layout(row)
        rec = _parse_row(path, i, row, layout)
        for name in require:
            if getattr(rec, name) is None:
                raise PoolError(path, i, name, f"missing ({why})")
        if len(rec.responses) < min_responses:
            raise PoolError(path, i, RESPONSE_FIELDS[layout], f"{len(rec.responses)} usable response(s); "
                            f"a training group needs at least {min_responses}")
        if rec.embeddings is not None:
            width = width or (rec.embeddings.shape[1], i)
            if rec.embeddings.shape[1] != width[0]:
                raise PoolError(path, i, "embeddings", f"width {rec.embeddings.shape[1]} differs from row "
                                f"{width[1]}'s {width[0]}")
        records.append(rec)
    if not records:
        raise PoolError(path, None, None, "no rows")
    return records, layout or "ampo"


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


# ---------------------------------------------------------------------------------------------
# Writing


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
