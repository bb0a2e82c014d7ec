"""The self-play pipeline on a tiny in-process policy: a full round, skip-on-rerun, exact
invalidation on config change, resume after `kill -9`, and the run folder's contracts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers import ROOT, kill_when, run, run_cli, stage_done, tiny_overrides

def mtimes(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_one_round_writes_the_run_folder(tiny_policy, tmp_path):
    out = tmp_path / "run"
    results = run(tiny_policy, out)
    rd = out / "round-0"
    for name in ("pool.parquet", "rewards.parquet", "embeddings.npy", "selection.parquet", "eval.json",
                 "train_log.json", "checkpoint/config.json"):
        assert (rd / name).exists(), name
    for name in ("config.yaml", "manifest.json", "split.json", "report.md", "rounds.png", "selection_map.png"):
        assert (out / name).exists(), name
    pool = pq.read_table(rd / "pool.parquet").to_pylist()
    split = json.loads((out / "split.json").read_text())
    assert len(split["heldout"]) == 2 and len(split["train"]) == 4
    assert [r["id"] for r in pool] == [p["id"] for p in split["train"]]
    assert all(len(r["responses"]) == 4 for r in pool)
    sel = pq.read_table(rd / "selection.parquet").to_pylist()
    assert all(len(s["selected"]) == 3 and len(set(s["selected"])) == 3 for s in sel)
    ev = results[0]
    for key in ("mean_reward", "win_rate", "win_rate_ci", "drift", "distinct_2", "mean_length"):
        assert key in ev
    assert 0 <= ev["win_rate_ci"][0] <= ev["win_rate"] <= ev["win_rate_ci"][1] <= 1
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert all(s["status"] == "done" for s in stages.values())
    assert stages["round-0/generate"]["shards_by_rank"] == {"0": 2}
    assert not (rd / "generate.parts").exists()  # shards merged and cleaned up


def test_rerun_skips_and_config_change_reruns_only_downstream(tiny_policy, tmp_path):
    out = tmp_path / "run"
    run(tiny_policy, out)
    before = mtimes(out)
    run(tiny_policy, out)
    after = mtimes(out)
    changed = {k for k in before if before[k] != after.get(k)}
    assert changed <= {".lock"}  # a finished run is reused without writing: only the lock names its new holder
    run(tiny_policy, out, "select.strategy=bottomk")
    again = mtimes(out)
    rerun = {k for k in after if after[k] != again.get(k)}
    for unchanged in ("round-0/pool.parquet", "round-0/rewards.parquet", "round-0/embeddings.npy",
                      "baseline/samples.parquet", "split.json"):
        assert unchanged not in rerun, unchanged
    for redone in ("round-0/selection.parquet", "round-0/eval.json", "round-0/checkpoint/model.safetensors"):
        assert redone in rerun, redone


def test_reference_losses_get_one_logp_column_per_reference(tiny_policy, tmp_path):
    out = tmp_path / "run"
    run(tiny_policy, out, "train.loss=mrpo", f"train.extra_references=[{tiny_policy}]")
    refs = pq.read_table(out / "round-0" / "ref_logps.parquet").to_pylist()
    sel = pq.read_table(out / "round-0" / "selection.parquet").to_pylist()
    assert len(refs) == len(sel)
    for r, s in zip(refs, sel):
        assert len(r["ref_logps"]) == 2  # the round's starting policy, then the extra reference
        assert all(len(col) == len(s["selected"]) for col in r["ref_logps"])
        assert all(v < 0 for v in r["ref_logps"][0])
        # round 0 starts from the same weights as the extra reference: the columns agree
        assert r["ref_logps"][0] == pytest.approx(r["ref_logps"][1], abs=1e-4)


def test_lora_round_chains_adapters(tiny_policy, tmp_path):
    out = tmp_path / "run"
    results = run(tiny_policy, out, "model.lora=true", "model.lora_r=2", "model.lora_targets=[q_proj]", "rounds=2")
    assert len(results) == 2
    assert (out / "round-1" / "checkpoint" / "adapter_config.json").exists()
    assert not (out / "round-1" / "checkpoint" / "config.json").exists()


KILL_POINTS = {
    "mid-generate": lambda out: lambda: any((out / "round-0" / "generate.parts").glob("shard-00000-*.jsonl")),
    "after-select": lambda out: stage_done(out, "round-0/select"),
    "mid-train": lambda out: lambda: any((out / "round-0" / "train").glob("checkpoint-*/trainer_state.json")),
}


@pytest.mark.parametrize("point", [
    "mid-generate", "mid-train", pytest.param("after-select", marks=pytest.mark.slow)])
def test_kill_9_and_resume_gives_the_same_result(tiny_policy, tmp_path, point):
    slower = "generate.max_new_tokens=48"  # long enough shards that the poller sees one finished
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    reference = run(tiny_policy, ref_out, slower)[0]
    proc = run_cli(tiny_overrides(tiny_policy, out, slower))
    kill_when(proc, KILL_POINTS[point](out))
    resumed = run(tiny_policy, out, slower)[0]
    for name in ("pool.parquet", "rewards.parquet", "selection.parquet"):
        assert pq.read_table(out / "round-0" / name).equals(pq.read_table(ref_out / "round-0" / name)), name
    for key in ("mean_reward", "win_rate", "mean_length"):
        assert resumed[key] == pytest.approx(reference[key], abs=1e-6), key


def test_two_processes_shard_and_merge_exactly_once(tiny_policy, tmp_path):
    """`torchrun --nproc_per_node 2` (gloo on CPU): both processes generate, score and embed their
    shards, each shard is merged once, and the pool equals the single-process run's."""
    single, multi = tmp_path / "single", tmp_path / "multi"
    args = tiny_overrides(tiny_policy, multi, "generate.shard_prompts=1", "train.prompts_per_step=1")
    run(tiny_policy, single, "generate.shard_prompts=1", "train.prompts_per_step=1")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29533", "-m", "ampo.cli", "-q",
                           "run", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    stages = json.loads((multi / "manifest.json").read_text())["stages"]
    for stage in ("generate", "score", "embed"):
        assert stages[f"round-0/{stage}"]["shards_by_rank"] == {"0": 2, "1": 2}, stage
    for name in ("pool.parquet", "rewards.parquet", "selection.parquet"):
        a = pq.read_table(multi / "round-0" / name)
        assert a.equals(pq.read_table(single / "round-0" / name)), name
    ids = [r["id"] for r in pq.read_table(multi / "round-0" / "pool.parquet").to_pylist()]
    assert len(ids) == len(set(ids)) == 4
    assert (multi / "round-0" / "checkpoint" / "model.safetensors").exists()
    assert json.loads((multi / "round-0" / "eval.json").read_text()).keys() >= {"mean_reward", "win_rate", "win_rate_ci"}


def test_generation_key_records_the_resolved_dtype():
    """A run resumed on a machine where `auto` resolves otherwise must not reuse shards of the other dtype."""
    from ampo.stage_keys import generation_dtype

    assert generation_dtype("auto") in ("float32", "bfloat16")
    assert generation_dtype("float32") == "float32" and generation_dtype("bfloat16") == "bfloat16"


def test_evaluation_keys_carry_the_sampling_dtype_only_when_it_is_not_float32(monkeypatch):
    """Baseline, eval and benchmark stages sample in `generate.dtype`: a run switched to bf16
    sampling re-evaluates; fp32 keys are the ones made before the dtype was keyed."""
    from ampo import stage_keys
    from ampo.config import load_config
    from ampo.stage_keys import RunKeys

    monkeypatch.setattr(stage_keys, "generation_dtype", lambda requested: "float32" if requested == "auto" else requested)

    def keys(*extra):
        k = RunKeys(load_config(overrides=["out=/nonexistent", "eval.benchmarks=[ifeval]", *extra]))
        return k.baseline(), k.evaluate(0), k.benchmark("ifeval", -1)

    auto, fp32, bf16 = keys(), keys("generate.dtype=float32"), keys("generate.dtype=bfloat16")
    assert auto == fp32
    assert all(a != b for a, b in zip(fp32, bf16))
    assert "dtype" not in stage_keys.eval_options(load_config(overrides=["out=/x"]))


def test_the_held_out_evaluation_samples_in_the_generation_dtype(tiny_policy, tmp_path, monkeypatch):
    import ampo.evaluation

    seen, real = [], ampo.evaluation.sample_and_score

    def spy(*args, **kwargs):
        seen.append(kwargs.get("dtype"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ampo.evaluation, "sample_and_score", spy)
    run(tiny_policy, tmp_path / "run", "generate.dtype=float32")
    assert seen == ["float32", "float32"]  # the baseline, then round 0


def test_a_run_given_more_rounds_keeps_the_rounds_it_finished(tiny_policy, tmp_path):
    """`rounds=1`, then the same command with `rounds=2` on the same folder: round 0's stages are
    not made again (the IFEval recipe's driver runs a seed one round at a time this way)."""
    out = tmp_path / "run"
    first = run(tiny_policy, out)
    done = {name: dict(entry) for name, entry in stages_of(out).items() if name.startswith("round-0/")}
    both = run(tiny_policy, out, "rounds=2")
    assert both[0] == first[0] and len(both) == 2
    for name, entry in done.items():
        assert stages_of(out)[name]["finished_at"] == entry["finished_at"], name


def stages_of(out):
    return json.loads((out / "manifest.json").read_text())["stages"]


def test_the_merged_policy_folder_for_disk_loading_engines_follows_the_policy_key(tiny_policy, tmp_path):
    """vLLM loads round r's policy from `round-r/policy/`: saved once, and made again when an earlier
    round changed (its key), never taken from a stale copy."""
    from ampo.config import load_config
    from ampo.pipeline import Pipeline

    out = tmp_path / "run"
    run(tiny_policy, out, "rounds=2")
    with Pipeline(load_config(overrides=tiny_overrides(tiny_policy, out, "rounds=2")), progress=False) as pipe:
        folder = Path(pipe.policy_folder(1))
        stamp = folder / "policy_key.txt"
        assert stamp.read_text() == pipe.keys.policy(1) and (folder / "config.json").is_file()
        made = (folder / "config.json").stat().st_mtime_ns
        assert pipe.policy_folder(1) == str(folder) and (folder / "config.json").stat().st_mtime_ns == made
        stamp.write_text("the policy of an earlier config")
        pipe.policy_folder(1)
        assert stamp.read_text() == pipe.keys.policy(1)
