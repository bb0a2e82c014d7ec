"""`ampo store STORE`: what a stage store holds, and pruning it (docs/sweep.md)."""

from __future__ import annotations

import shutil
from pathlib import Path


def cmd_store(args) -> None:
    """List the entries of a stage store; with `--prune --keep FOLDER...`, delete those no run
    folder under the given folders records (`--dry-run`: only say which)."""
    from ..errors import ConfigError
    from ..stage_store import StageStore, keys_in

    store = StageStore(args.store)
    if not store.root.is_dir():
        raise ConfigError(f"ampo store: {store.root} is not a folder")
    entries = store.entries()
    if not args.prune:
        if args.keep:
            raise ConfigError("ampo store: --keep goes with --prune")
        for e in entries:
            print(f"{e['key']}  {e.get('stage', '?'):<22} {e['bytes'] / 2**20:9.1f} MiB  "
                  f"(frees {e['freed'] / 2**20:.1f})  {e.get('stored_at', '?')}  {e.get('made_in', '')}")
        print(f"{len(entries)} entries, {sum(e['bytes'] for e in entries) / 2**20:.1f} MiB "
              f"({sum(e['freed'] for e in entries) / 2**20:.1f} MiB held only here)")
        return
    if not args.keep:
        raise ConfigError("ampo store --prune: name the run or sweep folders whose stages to keep (--keep DIR ...)")
    missing = [d for d in args.keep if not Path(d).is_dir()]
    if missing:
        raise ConfigError(f"ampo store --prune: --keep {missing[0]} is not a folder")
    kept = keys_in([Path(d) for d in args.keep])
    drop = [e for e in entries if e["key"] not in kept]
    leftovers = store.leftovers()
    if not args.dry_run:
        for e in drop:
            store.remove(e["key"])
        for folder in leftovers:
            shutil.rmtree(folder, ignore_errors=True)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {len(drop)} of {len(entries)} entries ({sum(e['freed'] for e in drop) / 2**20:.1f} MiB freed; "
          f"{len(entries) - len(drop)} recorded by a run folder under --keep stay)"
          + (f" and {len(leftovers)} folder(s) left by killed processes" if leftovers else ""))
