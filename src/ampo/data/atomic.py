"""Atomic outputs: a file or folder appears whole at its path or not at all, and an OSError while
writing names the output."""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
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


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _library_write_error(path: Path, error: Exception) -> OSError | None:
    """A failed write that a library reports as something other than an OSError, as the OSError it
    stands for, naming `path`; None for any other error. safetensors raises `SafetensorError`
    ("Error while serializing: I/O error: No space left on device (os error 28)"), `torch.save` a
    RuntimeError from its zip writer."""
    text = str(error)
    if type(error).__name__ == "SafetensorError" and text.startswith("Error while serializing"):
        found = _OS_ERROR.search(text)
        code = int(found.group(1)) if found else errno.EIO
        return WriteError(code, f"cannot write {path}: {os.strerror(code)}")
    if isinstance(error, RuntimeError) and ("PytorchStreamWriter" in text or "inline_container" in text):
        return WriteError(errno.EIO, f"cannot write {path}: the write stopped short (is the disk full?)")
    return None


_SAVE_CALLS = {("save_file", "filename"), ("save", "f")}  # safetensors.torch.save_file, torch.save


def _file_being_written(error: Exception) -> Path | None:
    """The file a failed save was writing: an OSError's own file name, else the file argument of
    the innermost `safetensors.torch.save_file` / `torch.save` call in the error's traceback
    (neither library names it in its error)."""
    if isinstance(error, OSError) and isinstance(error.filename, (str, os.PathLike)):
        return Path(error.filename)
    found, tb = None, error.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        module = code.co_filename.replace(os.sep, "/")
        for name, arg in _SAVE_CALLS:
            if code.co_name == name and ("/safetensors/" in module or "/torch/serialization" in module):
                value = tb.tb_frame.f_locals.get(arg)
                if isinstance(value, (str, os.PathLike)):
                    found = Path(value)
        tb = tb.tb_next
    return found


@contextlib.contextmanager
def naming_write_errors(folder: str | Path, written: str | Path | None = None) -> Iterator[None]:
    """Inside the block, a failed write (an OSError, or a library's own error for one: full disk,
    file size limit) becomes one `WriteError` naming the file it was writing (the folder when no
    file is known). `written`: the folder the block writes into, if not `folder` (a temporary
    sibling); a file there is named as its path under `folder`."""
    folder = Path(folder)
    written = Path(written) if written is not None else folder
    try:
        yield
    except WriteError:
        raise
    except Exception as e:
        path = _file_being_written(e)
        if path is None:
            path = folder
        elif path.absolute().is_relative_to(written.absolute()):
            path = folder / path.absolute().relative_to(written.absolute())
        error = _write_error(path, e) if isinstance(e, OSError) else _library_write_error(path, e)
        if error is None:
            raise
        raise error from e


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
    except Exception as e:  # a library's own error for a failed write (safetensors, torch.save)
        if (error := _library_write_error(path, e)) is None:
            raise
        raise error from e
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
        with naming_write_errors(path, tmp_path):  # safetensors' full disk too: one line naming the file
            yield tmp_path
        widen_permissions(tmp_path)
        old = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.old")
        try:  # the previous folder out of the way whole (a kill in its deletion must not leave half of it at `path`)
            os.rename(path, old)
        except FileNotFoundError:
            old = None
        try:
            os.rename(tmp_path, path)
        except OSError:
            if old is not None:
                os.rename(old, path)  # the previous folder back
            raise
        for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.old"):  # this one's, and a killed earlier one's
            shutil.rmtree(leftover, ignore_errors=True)
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
