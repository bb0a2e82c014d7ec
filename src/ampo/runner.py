"""Running stages in a folder: the manifest of stage keys, the folder's lock, the processes of a
distributed launch, and sharded resumable work. `Pipeline` (self-play rounds) and `ampo train`
(one pool) both schedule their stages through `Runner.stage`.

A stage is (name, key, function, outputs): it runs unless the manifest holds the same key with
status `done` and the outputs still have the sizes and sha256 recorded when it finished.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .data import atomic_path, ensure_dir, write_json, write_rows
from .fingerprints import fingerprints  # noqa: F401 (re-exported: callers import it from here)

log = logging.getLogger("ampo")


class Manifest:
    """`manifest.json`: per stage its key, status, timing and outputs, written after every change."""

    def __init__(self, path: Path, write: bool = True):
        self.path = path
        self.write = write  # only the main process writes
        self.data = self.read(path)
        self.data["versions"] = _versions()

    @staticmethod
    def read(path: Path) -> dict:
        """The manifest's content; a damaged one is named and counts as empty (every stage is redone)."""
        if not path.exists():
            return {"stages": {}}
        try:
            data = json.loads(path.read_bytes())
        except (ValueError, RecursionError):
            data = None
        if not (isinstance(data, dict) and isinstance(data.get("stages"), dict)
                and all(isinstance(e, dict) and {"key", "status"} <= e.keys() for e in data["stages"].values())):
            log.warning("%s is damaged: redoing every stage", path)
            return {"stages": {}}
        return data

    def done(self, stage: str, key: str) -> bool:
        entry = self.data["stages"].get(stage)
        return bool(entry) and entry["key"] == key and entry["status"] == "done"

    def mark(self, stage: str, key: str, status: str, **info: Any) -> None:
        self.data["stages"][stage] = {"key": key, "status": status, **info}
        if self.write:
            write_json(self.path, self.data)


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"ampo": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


class RunInUseError(ValueError):
    """Another process holds the run folder's lock."""


_HELD: dict[Path, "RunLock"] = {}  # folders locked by `RunLock.hold`, for their Runner to take over


class RunLock:
    """An exclusive lock on a run folder (`flock` on `RUN/.lock`) for as long as a process uses it
    (also taken by `ampo evaluate` on its output folder: `what` and `option` name them).

    Two runs on one folder would overwrite each other's manifest and files, so the second is
    refused. The kernel drops the lock when its holder exits, even by SIGKILL, so a killed run
    never blocks the next one. In a folder this process cannot write, an existing lock file is
    locked through a read-only handle; without one there is nothing to lock (and nothing can be
    written).
    """

    def __init__(self, folder: Path, what: str = "run folder", option: str = "'out'"):
        path = folder / ".lock"
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            writable = True
        except OSError:
            try:
                self.fd, writable = os.open(path, os.O_RDONLY), False
            except OSError:
                self.fd = None
                return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip()
            os.close(self.fd)
            raise RunInUseError(f"{what} {folder} is in use by another ampo process"
                                f"{f' (pid {holder})' if holder else ''}; wait for it to end or choose "
                                f"another {option}") from None
        if writable:  # the holder's pid, for the message above
            os.ftruncate(self.fd, 0)
            os.write(self.fd, str(os.getpid()).encode())

    @classmethod
    def hold(cls, folder: Path, what: str = "run folder", option: str = "'out'") -> RunLock:
        """Lock `folder` (made if missing) now, for the `Runner` this process makes on it later, which
        takes this lock over: a command that imports a heavy stack first refuses a folder in use
        before paying for the imports (`ampo train`)."""
        lock = cls(ensure_dir(folder), what, option)
        _HELD[Path(folder).resolve()] = lock
        return lock

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only handle drops the lock
            self.fd = None
        for folder in [f for f, lock in _HELD.items() if lock is self]:
            del _HELD[folder]

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Dist:
    """This process's rank among those started by `accelerate launch` or `torchrun` (one process
    otherwise). Without CUDA the processes talk over gloo."""

    def __init__(self):
        import torch
        from accelerate import PartialState

        self._state = PartialState(cpu=not torch.cuda.is_available())
        self.rank, self.world = self._state.process_index, self._state.num_processes

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wait(self) -> None:
        if self.world > 1:
            self._state.wait_for_everyone()

    def share(self, value: Any) -> Any:
        """The main process's `value`, on every process (so that all take the same branch)."""
        if self.world > 1:
            from accelerate.utils import broadcast_object_list

            value = broadcast_object_list([value])[0]
        return value


class Runner:
    """One output folder: its lock (main process), its manifest, and `stage` to run keyed work in it.

    Under `accelerate launch` / `torchrun` every process makes a Runner on the same folder; the
    main one takes the lock and writes `config_text` to `config.yaml` when given.
    """

    def __init__(self, folder: str | Path, config_text: str | None = None, progress: bool = True,
                 store: str | Path | None = None):
        self.dir = Path(folder)
        self.store = None  # `ampo.stage_store.StageStore`: finished stages shared with other run folders
        if store is not None:
            from .stage_store import StageStore

            self.store = StageStore(store)
        self.dist = Dist()
        self.progress = progress and self.dist.main
        self._lock = None
        if self.dist.main:  # one process per folder takes the lock; the others are its helpers
            if not self.dir.is_dir():
                self.dir.mkdir(parents=True)
            self._lock = _HELD.get(self.dir.resolve()) or RunLock(self.dir)
        try:
            if self.dist.main and config_text is not None:
                _write_if_changed(self.dir / "config.yaml", config_text)
            self.dist.wait()
            self.manifest = Manifest(self.dir / "manifest.json", write=self.dist.main)
            self.dist.wait()  # every process reads the manifest before any stage changes it
        except BaseException:  # a full disk, an unreadable manifest: the folder is not left locked
            self.close()
            raise

    def close(self) -> None:
        """Release the folder for the next process."""
        if self._lock is not None:
            self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stage(self, name: str, key: str, fn: Callable[[], Any], outputs: list[Path], everyone: bool = False) -> None:
        """Run `fn` unless this stage already finished with the same key and its outputs are the
        files it wrote (same size and sha256 as recorded in the manifest when it finished).

        `everyone`: every process runs `fn` (sharded or data-parallel work); otherwise only the
        main one does. A dict returned by `fn` is recorded in the manifest entry.
        """
        up_to_date = (self.manifest.done(name, key) and self._intact(name, outputs)) if self.dist.main else None
        if self.dist.share(up_to_date):
            if self.dist.main:
                log.info("[%s] up to date (key %s)", name, key)
            return
        with self._claim(key):
            if self._from_store(name, key, outputs):
                return
            if self.dist.main:
                log.info("[%s] running (key %s)", name, key)
            self.manifest.mark(name, key, "running")
            t0 = time.perf_counter()
            info = fn() if (everyone or self.dist.main) else None
            self.dist.wait()
            files = fingerprints(self.dir, outputs) if self.dist.main else {}
            self.manifest.mark(name, key, "done", seconds=round(time.perf_counter() - t0, 2),
                               finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"), **(info or {}), outputs=files)
            if self.store is not None and self.dist.main:
                self.store.put(name, key, self.dir, self.manifest.data["stages"][name])

    def _claim(self, key: str):
        """The store's claim on `key` while this process makes it (main process; nothing without a store)."""
        import contextlib

        return self.store.claim(key) if self.store is not None and self.dist.main else contextlib.nullcontext()

    def _from_store(self, name: str, key: str, outputs: list[Path]) -> bool:
        """Take the stage from the store when it holds `key` intact: mark it done (every process
        learns whether it did)."""
        if self.store is None:
            return False
        entry = None
        if self.dist.main:
            t0 = time.perf_counter()
            entry = self.store.fetch(name, key, self.dir, outputs)
            if entry is not None:
                log.info("[%s] taken from the stage store %s (key %s)", name, self.store.root, key)
                self.manifest.mark(name, key, "done", seconds=round(time.perf_counter() - t0, 2),
                                   finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"), **entry["info"],
                                   outputs=entry["outputs"], from_store={"seconds": entry["seconds"],
                                                                         "made_in": entry["made_in"]})
        return bool(self.dist.share(entry is not None))

    def _intact(self, name: str, outputs: list[Path]) -> bool:
        """Whether a finished stage's outputs still match their manifest record; if not, say which
        file does not (the stage then runs again)."""
        recorded = self.manifest.data["stages"][name].get("outputs")
        if recorded is None:
            log.warning("[%s] the manifest has no record of its outputs (an older ampo made it): redoing it", name)
            return False
        found = fingerprints(self.dir, outputs)
        for rel in sorted(recorded.keys() | found.keys()):
            if recorded.get(rel) != found.get(rel):
                problem = ("is missing" if rel not in found else "was not written by this stage" if rel not in recorded
                           else "does not match the size and sha256 recorded when the stage finished")
                log.warning("[%s] %s %s: redoing the stage", name, self.dir / rel, problem)
                return False
        return True


def _write_if_changed(path: Path, text: str) -> None:
    """Write `text` atomically unless `path` already holds it (a finished run may be read-only)."""
    if not (path.is_file() and path.read_text() == text):
        with atomic_path(path) as tmp:
            tmp.write_text(text)


def sharded_map(items: list, shard_size: int, work: Callable[[int, list], list[dict]], parts: Path, key: str,
                dist: Dist) -> tuple[list[dict], dict]:
    """Apply `work(shard_index, shard)` to shards of `items`, spread over processes, resumably.

    Shard s is done by process s % world and written atomically to `parts/` (tagged with the
    stage key and the process that wrote it): a killed run redoes only unfinished shards, and a
    shard written once is read once. Returns all rows in item order (every process gets them)
    and {"shards_by_rank": {...}} for the manifest.
    """
    if dist.main:
        if parts.exists() and (not (parts / "KEY").exists() or (parts / "KEY").read_text() != key):
            shutil.rmtree(parts)
        parts.mkdir(parents=True, exist_ok=True)
        (parts / "KEY").write_text(key)
    dist.wait()
    shards = [items[i: i + shard_size] for i in range(0, len(items), shard_size)]
    for s in range(dist.rank, len(shards), dist.world):
        if not list(parts.glob(f"shard-{s:05d}-rank*.jsonl")):
            write_rows(parts / f"shard-{s:05d}-rank{dist.rank}.jsonl", work(s, shards[s]))
    dist.wait()
    rows, by_rank = [], {}
    for s in range(len(shards)):
        (path,) = parts.glob(f"shard-{s:05d}-rank*.jsonl")
        rank = path.stem.rsplit("rank", 1)[1]
        by_rank[rank] = by_rank.get(rank, 0) + 1
        with path.open() as f:
            rows.extend(json.loads(line) for line in f)
    dist.wait()
    if dist.main:
        shutil.rmtree(parts)
    return rows, {"shards_by_rank": by_rank}
