"""Atomic outputs: a file or folder appears whole at its path or not at all, and an OSError while
writing names the output."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any, Iterator


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
