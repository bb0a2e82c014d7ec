"""`ampo run CONFIG --dry-run`: every stage of a run with its key and what a real run would do with
it, read from the run folder's manifest. Loads no model and writes nothing (like `make -n`), so a
user sees what a changed option will redo before paying for it.

A stage is
- `done`: finished with this key and its recorded outputs intact: skipped;
- `resume`: started with this key and interrupted: generation, scoring and embedding continue from
  their finished shards, training from its last Trainer checkpoint;
- `redo`: recorded with another key (an option it depends on changed) or with damaged outputs: runs again;
- `run`: never started: runs;
- `store`: not done here, but the run's stage store (`store:`) holds its key: its files are taken from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .runner import Manifest, fingerprints
from .stage_keys import RunKeys


@dataclass(frozen=True)
class PlannedStage:
    name: str  # as in manifest.json: "split", "round-0/generate", ...
    key: str
    status: str  # done | resume | redo | run


def stage_keys(keys: RunKeys) -> list[tuple[str, str]]:
    """(stage name, key) of every stage of the run, in the order the run meets them. A Curry-DPO
    round's per-pair stages are not listed: how many there are depends on the selection."""
    c = keys.c
    stages = [("split", keys.split_key()), ("baseline", keys.baseline())]
    stages += [(f"baseline/{name}", keys.benchmark(name, -1)) for name in c.eval.benchmarks]
    for r in range(c.rounds):
        stages += [(f"round-{r}/generate", keys.generate(r)), (f"round-{r}/score", keys.score(r)),
                   (f"round-{r}/embed", keys.embed(r)), (f"round-{r}/select", keys.select(r))]
        if keys.refs(r) is not None:
            stages.append((f"round-{r}/refs", keys.refs(r)))
        if keys.old(r) is not None:  # the sampling policy's log-probs (grpo), unless the refs' first column
            stages.append((f"round-{r}/old", keys.old(r)))
        stages.append((f"round-{r}/train", keys.train(r)))
        stages += [(f"round-{r}/{name}", keys.benchmark(name, r)) for name in c.eval.benchmarks]
        stages.append((f"round-{r}/evaluate", keys.evaluate(r)))
    stages.append(("report", keys.report()))
    return stages


def plan(config) -> list[PlannedStage]:
    """Every stage of `config`'s run and its status in the run folder `config.out`."""
    folder = Path(config.out)
    recorded = Manifest.read(folder / "manifest.json")["stages"] if (folder / "manifest.json").exists() else {}
    stored = _stored(config)
    return [PlannedStage(name, key, "store" if status != "done" and stored(name, key) else status)
            for name, key in stage_keys(RunKeys(config))
            for status in [_status(folder, recorded.get(name), key)]]


def _stored(config):
    """Whether the run's stage store (`store:`) holds a stage: a run takes it from there."""
    if not getattr(config, "store", None):
        return lambda name, key: False
    from .stage_store import UNSHARED, StageStore

    store = StageStore(config.store)
    return lambda name, key: name not in UNSHARED and store.has(key)


def _status(folder: Path, entry: dict | None, key: str) -> str:
    if entry is None:
        return "run"
    if entry["key"] != key:
        return "redo"
    if entry["status"] != "done":
        return "resume"
    outputs = entry.get("outputs")
    if outputs is None:
        return "redo"
    found = fingerprints(folder, [folder / rel for rel in outputs])
    return "done" if found == outputs else "redo"


def format_plan(stages: list[PlannedStage], folder: str) -> str:
    width = max(len(s.name) for s in stages)
    lines = [f"{'stage':<{width}}  {'key':<16}  status"]
    lines += [f"{s.name:<{width}}  {s.key:<16}  {s.status}" for s in stages]
    counts = {status: sum(s.status == status for s in stages) for status in ("done", "resume", "redo", "run", "store")}
    lines.append(f"{folder}: {counts['done']} done, {counts['resume']} to resume, {counts['redo']} to redo "
                 f"(changed key or damaged outputs), {counts['run']} to run"
                 + (f", {counts['store']} to take from the stage store" if counts["store"] else ""))
    return "\n".join(lines)
