"""Stage keys (`ampo.stage_keys`): the keys of the shipped recipes and of the configs that exercise
every key's optional parts stay what earlier versions wrote into run folders (so no finished run
redoes its stages), each key is computed once per run (linear in rounds), and `ampo run --dry-run`
reports what a run would do without loading a model or writing a file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import ampo.stage_keys as stage_keys
from ampo.config import load_config
from ampo.dry_run import plan, stage_keys as planned_keys
from ampo.recipes import HERE as RECIPES
from ampo.stage_keys import PoolKeys, RunKeys

PINNED = json.loads((Path(__file__).parent / "data" / "stage_keys.json").read_text())
EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.fixture
def fp32_machine(monkeypatch):
    """Keys as an fp32 machine computes them ("auto" resolves to float32 for generation and training)."""
    monkeypatch.setattr(stage_keys, "generation_dtype", lambda requested: "float32" if requested == "auto" else requested)
    monkeypatch.setattr(stage_keys, "train_dtype", lambda c: "float32" if c.train.dtype == "auto" else c.train.dtype)


def run_keys(case: dict, out: Path) -> dict:
    c = load_config(RECIPES / case["recipe"], [*case["overrides"], f"out={out}"])
    keys = RunKeys(c)
    found = dict(planned_keys(keys))
    if c.train.curriculum == "pairs":
        for r in range(c.rounds):
            for t in (1, 2, 3):
                found[f"round-{r}/train-s{t}"] = keys.train_stage(r, t)
                found[f"round-{r}/refs-s{t}"] = keys.refs_stage(r, t)
    if keys.refs(0) is None:  # the old capture lists a refs key of None for losses without references
        found.update({f"round-{r}/refs": None for r in range(c.rounds)})
    return found


@pytest.mark.parametrize("name", [n for n in PINNED if "pool" not in PINNED[n]])
def test_run_keys_are_the_ones_earlier_versions_wrote(name, tmp_path, monkeypatch, fp32_machine):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples" / "refmodel").mkdir(parents=True)  # the MRPO case's extra reference
    assert run_keys(PINNED[name], tmp_path / "run") == PINNED[name]["keys"]


@pytest.mark.parametrize("name", [n for n in PINNED if "pool" in PINNED[n]])
def test_ampo_train_keys_are_pinned(name, fp32_machine):
    case = PINNED[name]
    c = load_config(RECIPES / case["recipe"], case["overrides"])
    keys = PoolKeys(c, EXAMPLES / Path(case["pool"]).name, has_embeddings=False)
    found = {"embed": keys.embed(), "select": keys.select(), "refs": keys.refs(), "train": keys.train(),
             "merge": keys.merge()}
    assert found == case["keys"]


def test_ampo_train_keys_are_a_rounds_keys_with_the_pool_file_for_its_generation(fp32_machine, tmp_path):
    """`ampo train` and a round share the key functions: with the same upstream key they agree."""
    c = load_config(RECIPES / "demo.yaml", ["train.loss=dpo", f"out={tmp_path}"])
    pool, run = PoolKeys(c, EXAMPLES / "ampo_published.jsonl", has_embeddings=False), RunKeys(c)
    run._memo[("score", (0,))] = run._memo[("generate", (0,))] = pool.input  # as if round 0 had generated the file
    assert (pool.embed(), pool.select(), pool.refs(), pool.train()) == (run.embed(0), run.select(0), run.refs(0),
                                                                        run.train(0))


def count_key_calls(monkeypatch, rounds: int) -> int:
    calls = []
    real = stage_keys.config_key
    monkeypatch.setattr(stage_keys, "config_key", lambda *parts: calls.append(parts[0]) or real(*parts))
    c = load_config(RECIPES / "demo.yaml", [f"rounds={rounds}", "train.loss=dpo", "embed.embedder=policy",
                                            "eval.benchmarks=[ifeval]"])
    planned_keys(RunKeys(c))
    return len(calls)


def test_key_computations_grow_linearly_with_rounds(monkeypatch, fp32_machine):
    """Each round adds the same number of key computations (earlier versions tripled to 8x per round)."""
    counts = {r: count_key_calls(monkeypatch, r) for r in (1, 2, 6, 12)}
    per_round = counts[2] - counts[1]
    assert counts[6] - counts[1] == 5 * per_round and counts[12] - counts[6] == 6 * per_round
    assert per_round <= 12  # one computation per stage of a round


def test_dry_run_loads_no_model_and_writes_nothing(tmp_path):
    """In a fresh process: the plan of a 12-round run, with no transformers model class imported."""
    import subprocess

    out = tmp_path / "run"
    code = ("import sys; from ampo.cli import main; "
            f"main(['run', {str(RECIPES / 'demo.yaml')!r}, 'rounds=12', 'train.loss=dpo', 'embed.embedder=policy', "
            f"'out={out}', '--dry-run']); "
            "assert 'transformers.models.llama.modeling_llama' not in sys.modules, 'a model class was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[1].split()[0] == "split" and lines[-2].split()[0] == "report"
    assert sum(" round-11/" in f" {line}" for line in lines) == 7  # generate score embed select refs train evaluate
    assert lines[-1].endswith("0 done, 0 to resume, 0 to redo (changed key or damaged outputs), 87 to run")
    assert not out.exists()


def test_dry_run_reports_done_resume_redo_and_run(tmp_path, fp32_machine):
    c = load_config(RECIPES / "demo.yaml", [f"out={tmp_path}"])
    keys = dict(planned_keys(RunKeys(c)))
    (tmp_path / "split.json").write_text("{}")
    stages = {"split": {"key": keys["split"], "status": "done",
                        "outputs": {"split.json": {"size": 2, "sha256": __import__("hashlib").sha256(b"{}").hexdigest()}}},
              "baseline": {"key": keys["baseline"], "status": "done",
                           "outputs": {"baseline/summary.json": {"size": 1, "sha256": "0"}}},  # missing: damaged
              "round-0/generate": {"key": keys["round-0/generate"], "status": "running"},
              "round-0/score": {"key": "0123456789abcdef", "status": "done", "outputs": {}}}
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": stages}))
    status = {s.name: s.status for s in plan(c)}
    assert (status["split"], status["baseline"], status["round-0/generate"], status["round-0/score"],
            status["round-0/embed"]) == ("done", "redo", "resume", "redo", "run")
