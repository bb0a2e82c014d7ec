"""A content-keyed store of finished stages, shared by run folders (`store:` in a config; every
trial of `ampo sweep` uses `SWEEP/store`).

A stage's key is a hash of everything that changes its outputs (`ampo.stage_keys`), so two run
folders that meet the same key need the same files: the first makes them, the others take them.
After a stage finishes, `Runner.stage` records its declared outputs here (hard links where the
file system allows, else copies) under `STORE/<key>/files/`, with `STORE/<key>/entry.json`: the
stage's name, the size and sha256 of every file, and what the stage recorded in its manifest
entry. Before a stage runs, a store that holds its key puts those files into the run folder and
the stage is marked done with the same fingerprints, after checking that every file still has
the size and sha256 recorded (a damaged entry is dropped and the stage runs).

Only declared outputs enter the store: Trainer checkpoints (`round-R/train/`), shard folders
(`*.parts/`) and other work files stay in their run folder. `split` (it records the prompt file's
path, which its key leaves out) is never shared.

Several processes may share a store: an entry appears whole (written under a temporary name, then
renamed), and `claim(key)` is an exclusive `flock` held while a process makes a stage, so a second
process that needs the same key waits and then takes the first one's files instead of making them
again. The kernel drops a claim when its holder dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Iterator

ABANDONED_AFTER_S = 3600.0  # a hidden `.KEY.*.tmp` folder untouched this long was left by a killed `put`

log = logging.getLogger("ampo")

UNSHARED = ("split",)  # stages whose outputs hold more than their key says (split.json names the prompt file)


class StageStore:
    """`STORE/<key>/` holds one finished stage: `entry.json` and `files/` (paths relative to the run folder)."""

    def __init__(self, root: str | Path):
        if not str(root).strip():
            from .errors import ConfigError

            raise ConfigError("config 'store': expected a folder, got an empty path")
        self.root = Path(root)

    def entry_dir(self, key: str) -> Path:
        return self.root / key

    def has(self, key: str) -> bool:
        return (self.entry_dir(key) / "entry.json").is_file()

    # -- claims -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def claim(self, key: str) -> Iterator[None]:
        """Hold `key` while making it: another process claiming it waits (then finds it stored)."""
        claims = self.root / ".claims"
        try:
            claims.mkdir(parents=True, exist_ok=True)
            fd = os.open(claims / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:  # a store we cannot write: run without it
            log.warning("stage store %s: cannot claim %s (%s); running without the store", self.root, key,
                        e.strerror or e)
            yield
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("stage store: another process is making %s; waiting for it", key)
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- taking a stage from the store --------------------------------------------------------

    def fetch(self, name: str, key: str, run_dir: Path, outputs: list[Path]) -> dict | None:
        """Put stored stage `key`'s files into `run_dir` at the declared `outputs` and return its
        entry (`outputs`: fingerprints as found in `run_dir`, `info`: the stage's manifest extras,
        `seconds`: how long it took to make), or None when the store does not hold it intact."""
        from .fingerprints import fingerprints

        if name in UNSHARED or not self.has(key):
            return None
        entry_dir = self.entry_dir(key)
        try:
            entry = json.loads((entry_dir / "entry.json").read_text())
            recorded = entry["outputs"]
        except (OSError, ValueError, KeyError, TypeError):
            self._drop(key, "its entry.json is unreadable")
            return None
        try:
            declared = [p.relative_to(run_dir).as_posix() for p in outputs]
        except ValueError:  # an output outside the run folder: not shareable
            return None
        if not recorded or not all(any(rel == d or rel.startswith(d + "/") for d in declared) for rel in recorded):
            return None  # stored from another layout of outputs: leave it
        try:
            for out in outputs:
                _remove(out)
            for rel in recorded:
                if not (entry_dir / "files" / rel).is_file():  # a deletion cut short, or a user's
                    for out in outputs:
                        _remove(out)
                    self._drop(key, f"its file {rel} is missing")
                    return None
                _link_or_copy(entry_dir / "files" / rel, run_dir / rel)
        except OSError as e:
            log.warning("stage store: could not take %s from %s (%s): running the stage", name, entry_dir,
                        e.strerror or e)
            for out in outputs:
                _remove(out)
            return None
        found = fingerprints(run_dir, outputs)
        if found != recorded:
            for out in outputs:
                _remove(out)
            self._drop(key, "its files do not match the sizes and sha256 recorded when it was stored")
            return None
        return {"outputs": found, "info": entry.get("info") or {}, "seconds": entry.get("seconds"),
                "made_in": entry.get("made_in")}

    # -- recording a finished stage -----------------------------------------------------------

    def put(self, name: str, key: str, run_dir: Path, manifest_entry: dict) -> None:
        """Record a stage that just finished in `run_dir` (its manifest entry names its outputs)."""
        if name in UNSHARED or self.has(key):
            return
        recorded = manifest_entry.get("outputs") or {}
        if not recorded:
            return
        info = {k: v for k, v in manifest_entry.items()
                if k not in ("key", "status", "seconds", "finished_at", "outputs", "from_store")}
        tmp = self.root / f".{key}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            for rel in recorded:
                _link_or_copy(run_dir / rel, tmp / "files" / rel)
            (tmp / "entry.json").write_text(json.dumps(
                {"stage": name, "key": key, "outputs": recorded, "info": info,
                 "seconds": manifest_entry.get("seconds"), "made_in": str(run_dir),
                 "stored_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
            target = self.entry_dir(key)
            if target.exists():  # a damaged entry (no entry.json) or another process's, just stored
                if self.has(key):
                    return
                shutil.rmtree(target)
            os.rename(tmp, target)
        except OSError as e:
            log.warning("stage store: could not record %s in %s (%s)", name, self.root, e.strerror or e)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- listing and pruning --------------------------------------------------------------------

    def entries(self) -> list[dict]:
        """Every whole entry: its `entry.json` plus `bytes` (the size of its files) and `freed`
        (the bytes deleting it frees now: files no run folder links to as well)."""
        if not self.root.is_dir():
            return []
        out = []
        for entry_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                entry = json.loads((entry_dir / "entry.json").read_text())
            except (OSError, ValueError):
                continue
            files = [p for p in (entry_dir / "files").rglob("*") if p.is_file()]
            stats = [p.stat() for p in files]
            out.append({**entry, "key": entry_dir.name, "bytes": sum(s.st_size for s in stats),
                        "freed": sum(s.st_size for s in stats if s.st_nlink == 1)})
        return out

    def leftovers(self, older_than_s: float = ABANDONED_AFTER_S) -> list[Path]:
        """Hidden folders that a killed process left: an entry being stored (`.KEY.*.tmp`, untouched
        for `older_than_s`) or being deleted (`.KEY.*.del`)."""
        if not self.root.is_dir():
            return []
        now = time.time()
        return sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(".") and (
            p.name.endswith(".del") or (p.name.endswith(".tmp") and now - _newest_change(p) > older_than_s)))

    def remove(self, key: str) -> None:
        """Delete one entry (its run folders keep their own links or copies of the files)."""
        with self.claim(key):
            self._delete(key)

    def _drop(self, key: str, why: str) -> None:
        log.warning("stage store: %s %s: dropping it", self.entry_dir(key), why)
        self._delete(key)

    def _delete(self, key: str) -> None:
        """Rename the entry out of sight first, so a deletion cut short never leaves an entry that
        looks whole (its entry.json kept, files gone); the hidden leftover is pruned later."""
        doomed = self.root / f".{key}.{os.getpid()}-{secrets.token_hex(4)}.del"
        try:
            os.rename(self.entry_dir(key), doomed)
        except FileNotFoundError:
            return
        except OSError as e:  # a store we cannot write (read-only): leave it, the stage runs anyway
            log.warning("stage store %s: cannot delete %s (%s)", self.root, key, e.strerror or e)
            return
        shutil.rmtree(doomed, ignore_errors=True)


def keys_in(folders: list[Path]) -> set[str]:
    """Every stage key recorded by a run folder's `manifest.json` under `folders` (run folders,
    sweep folders, or folders holding them)."""
    keys: set[str] = set()
    for folder in folders:
        for manifest in folder.rglob("manifest.json"):  # the folder's own too
            try:
                stages = json.loads(manifest.read_text())["stages"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            keys |= {entry["key"] for entry in stages.values() if isinstance(entry, dict) and entry.get("key")}
    return keys


def _newest_change(folder: Path) -> float:
    """The latest modification time in `folder` (a `put` still copying keeps it recent); a folder
    that vanished meanwhile (its `put` finished) counts as just changed."""
    try:
        return max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.rglob("*"))])
    except FileNotFoundError:
        return time.time()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link of `source` at `target` (parents made), or a copy where links are not possible
    (another file system, a file system without links)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
