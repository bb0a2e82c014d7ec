"""Start a benchmark arm's run folder from another run's finished stages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def copy_stages(source: Path, dest: Path, files, stages) -> None:
    """Copy `files` (paths relative to the run folder; folders whole) from run folder `source` into
    `dest`, with the manifest entries of `stages`, so that the pipeline finds those stages done."""
    for name in files:
        src, dst = source / name, dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    manifest = json.loads((source / "manifest.json").read_text())
    manifest["stages"] = {k: v for k, v in manifest["stages"].items() if k in stages}
    (dest / "manifest.json").write_text(json.dumps(manifest))
