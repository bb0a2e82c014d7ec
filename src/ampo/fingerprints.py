"""Size and sha256 of a stage's output files: what the manifest records when a stage finishes and
checks before skipping it, and what the stage store checks before sharing it. A leaf module."""

from __future__ import annotations

import hashlib
from pathlib import Path


def fingerprints(root: Path, outputs: list[Path]) -> dict[str, dict]:
    """Size and sha256 of each output file, folders expanded to the files inside them, keyed by
    the path relative to `root`. Missing outputs are left out."""
    files = []
    for path in outputs:
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else
                     [path] if path.is_file() else [])
    return {p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
