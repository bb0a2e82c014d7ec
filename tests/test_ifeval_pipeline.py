"""The IFEval task through a tiny in-process run: prompt metadata from the prompt file to the
pool and the reward, and the benchmark evaluated per round (and once for the initial policy)."""

import json
import os
from pathlib import Path

import pyarrow.parquet as pq

from ampo.cli import main
from ampo.config import load_config
from ampo.pipeline import Pipeline
from ampo.runner import RunLock
from helpers import ROOT


def test_one_round_with_the_ifeval_reward_and_benchmark(tiny_policy, tmp_path, capsys):
    prompts = tmp_path / "if_prompts.jsonl"
    assert main(["-q", "make-prompts", "--task", "ifeval", "--output", str(prompts), "--n", "6", "--seed", "1",
                 "--base", str(ROOT / "examples" / "tiny_prompts.jsonl")]) == 0
    out = tmp_path / "run"
    overrides = [f"out={out}", "rounds=1", f"model.policy={tiny_policy}", "model.lora=false",
                 f"data.prompts={prompts}", "data.heldout=2", "generate.n=4", "generate.max_new_tokens=6",
                 "generate.shard_prompts=2", "select.k=2", "embed.embedder=policy", "score.reward=ifeval:loose=0.5",
                 "eval.samples_per_prompt=2", "eval.max_new_tokens=6", "eval.bootstrap=100",
                 "eval.benchmarks=[ifeval]", "eval.benchmark_limit=3", "eval.benchmark_max_new_tokens=4",
                 "train.prompts_per_step=2", "train.learning_rate=0.01", "train.save_steps=1"]
    results = Pipeline(load_config(overrides=overrides), progress=False).run()

    source = {json.loads(line)["id"]: json.loads(line)["meta"] for line in prompts.read_text().splitlines()}
    pool = pq.read_table(out / "round-0" / "pool.parquet").to_pylist()
    assert all(json.loads(row["meta"]) == source[row["id"]] for row in pool)
    rewards = pq.read_table(out / "round-0" / "rewards.parquet").to_pylist()
    assert all(0 <= r <= 1.5 for row in rewards for r in row["rewards"])

    for folder in (out / "baseline" / "ifeval", out / "round-0" / "ifeval"):
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["n_prompts"] == 3 and metrics["limit"] == 3 and metrics["decoding"] == "greedy"
        assert len((folder / "responses.jsonl").read_text().splitlines()) == 3
        assert len((folder / "results.jsonl").read_text().splitlines()) == 3
        assert not (folder / "responses.parts").exists()
    bench = results[0]["benchmarks"]["ifeval"]
    assert "avg_prompt_inst_strict_acc" in bench and "avg_prompt_inst_strict_acc" in bench["initial"]
    assert (out / "benchmarks.png").exists() and "## Benchmarks" in (out / "report.md").read_text()

    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["baseline/ifeval"]["status"] == stages["round-0/ifeval"]["status"] == "done"
    for stage in ("baseline/ifeval", "round-0/ifeval"):  # every file a benchmark stage writes is hashed
        assert sorted(Path(rel).name for rel in stages[stage]["outputs"]) == [
            "metrics.json", "responses.jsonl", "results.jsonl"]
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    Pipeline(load_config(overrides=overrides), progress=False).run()  # a rerun reuses both benchmark runs
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")} == mtimes

    # a damaged responses file is detected, and generated again rather than rescored
    responses = out / "round-0" / "ifeval" / "responses.jsonl"
    good = responses.read_bytes()
    responses.write_bytes(good.replace(b'"response": "', b'"response": "X', 1))
    Pipeline(load_config(overrides=overrides), progress=False).run()
    assert responses.read_bytes() == good


def test_evaluate_a_policy_holds_its_output_folder(tiny_policy, tmp_path, capsys):
    def argv(output):
        return ["-q", "evaluate", "--benchmark", "ifeval", "--policy", str(tiny_policy), "--output", str(output),
                "--limit", "2", "--max-new-tokens", "2", "--bootstrap", "10"]

    out = tmp_path / "eval"
    assert main(argv(out)) == 0
    assert "2 of 541 prompts (fixed subset, seed 0)" in capsys.readouterr().out
    for name in ("metrics.json", "results.jsonl", "responses.jsonl"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~_umask()  # 0644 under the default umask
    responses = out / "responses.jsonl"  # a rerun rescores only a whole responses file
    whole = responses.read_text()
    responses.write_text(whole.splitlines(keepends=True)[0])
    assert main(argv(out)) == 0 and responses.read_text() == whole
    capsys.readouterr()
    with RunLock(out):  # another evaluation writing there
        assert main(argv(out)) == 2
        assert main(["-q", "evaluate", "--benchmark", "ifeval", "--responses", str(out / "responses.jsonl"),
                     "--output", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(f"output folder {out} is in use by another ampo process" in e for e in err)

    run = tmp_path / "run"  # inside a run folder, the run's own lock: never under a running `ampo run`
    run.mkdir()
    (run / "manifest.json").write_text("{}")
    (run / "config.yaml").write_text("{}")
    with RunLock(run):
        assert main(argv(run / "round-0" / "ifeval")) == 2
    assert f"run folder {run} is in use by another ampo process" in capsys.readouterr().err
    assert not (run / "round-0").exists()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_benchmark_answers_are_regenerated_where_generation_would_run_in_another_dtype(tiny_policy, tmp_path,
                                                                                       monkeypatch):
    """`auto` is bf16 on CPUs with native bf16 matmuls and fp32 elsewhere: answers made in one dtype
    are not reused (nor their shards resumed) on a machine that would generate in the other."""
    import ampo.generation
    from ampo.ifeval.evaluate import evaluate_policy
    from ampo.models import load_policy

    policy, out = load_policy(str(tiny_policy)), tmp_path / "eval"
    first = evaluate_policy("ifeval", policy, out, key="k", limit=2, max_new_tokens=2, n_boot=10, progress=False)
    again = evaluate_policy("ifeval", policy, out, key="k", limit=2, max_new_tokens=2, n_boot=10, progress=False)
    assert again["generation_key"] == first["generation_key"]
    other = {"float32": "bfloat16"}.get(first["generation_dtype"], "float32")
    monkeypatch.setattr(ampo.generation, "resolve_dtype", lambda requested, device: other)
    moved = evaluate_policy("ifeval", policy, out, key="k", limit=2, max_new_tokens=2, n_boot=10, progress=False)
    assert moved["generation_dtype"] == other and moved["generation_key"] != first["generation_key"]


def test_benchmark_answers_made_in_shards_of_another_size_are_regenerated(tiny_policy, tmp_path):
    """A shard's prompts decode in one batch (bf16 greedy answers depend on it), and finished shards
    of one size cannot be resumed as shards of another: the shard size is part of the key."""
    from ampo.ifeval.evaluate import evaluate_policy
    from ampo.models import load_policy

    policy, out = load_policy(str(tiny_policy)), tmp_path / "eval"
    run = lambda shard: evaluate_policy("ifeval", policy, out, key="k", limit=3, max_new_tokens=2, n_boot=10,
                                        shard_prompts=shard, progress=False)["generation_key"]
    first = run(2)
    assert run(2) == first and run(3) != first
