"""Multi-process training, verified on CPU processes: `ampo train` and `ampo run` under
`accelerate launch` with two processes (gloo) give the same per-step losses (the loss and its
metrics averaged over ranks), the same selection and the same weights as one process with the
same global batch and data order, within fp32 tolerance; with the DDP and FSDP configs that ship
in examples/accelerate/, LoRA and full fine-tune; and the wrapper that trained is the one the
config asked for (manifest `parallel`), not DDP in its place.

Same global batch: groups per optimizer step = train.prompts_per_step (per process) x processes
x train.grad_accum. Two processes with prompts_per_step=1 take the Trainer's seeded permutation in
the same pairs as one process with prompts_per_step=2 (or 1 with grad_accum=2).

DeepSpeed (ZeRO-2 and ZeRO-3, the shipped configs) runs where it is installed (an optional extra:
`pip install -e .[deepspeed]`) and is skipped otherwise. On CPU processes accelerate itself would
train plain DDP under an FSDP or DeepSpeed config; `ampo.distributed.enable_cpu_sharding` makes it
train what the config says.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ampo.cli import main
from helpers import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CONFIGS = {"ddp": EXAMPLES / "accelerate" / "ddp_4gpu.yaml", "fsdp": EXAMPLES / "accelerate" / "fsdp.yaml",
           "zero2": EXAMPLES / "accelerate" / "deepspeed_zero2.yaml",
           "zero3": EXAMPLES / "accelerate" / "deepspeed_zero3.yaml"}
WRAPPER = {"ddp": "ddp", "fsdp": "fsdp2", "zero2": "deepspeed-zero2", "zero3": "deepspeed-zero3"}
DEEPSPEED = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                               reason="DeepSpeed not installed (optional: pip install -e .[deepspeed])")
ACCELERATE = Path(sys.executable).parent / "accelerate"
# 6 groups of 3 (bottomk, k=2); 4 steps of 2 groups: crosses into the second epoch's permutation
FLAGS = ["--input", str(EXAMPLES / "ampo_published.jsonl"), "--strategy", "bottomk", "--k", "2", "--max-steps", "4"]
OVERRIDES = ["train.dtype=float32", "train.learning_rate=0.01", "train.save_steps=1000", "model.lora_r=4"]


def train_args(policy: Path, mode: str, out: Path, *extra: str) -> list[str]:
    """`ampo train` arguments: the flags, then the dotted overrides (`extra` last)."""
    lora = "--no-lora" if mode == "full" else "--lora"
    return ["train", *FLAGS, "--policy", str(policy), lora, "--output", str(out), *OVERRIDES, *extra]
# fp32: one padded batch of 2 against two batches of 1 changes matmul shapes and summation order
LOSS_TOL = 2e-5  # relative and absolute, per step
METRIC_TOL = 5e-5  # relative: summed log-probs of hundreds of tokens
WEIGHT_TOL = 1e-5  # the weights move by ~1e-2 (asserted), so this tolerance is 1000x finer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: Path, args: list[str], processes: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file CONFIG -m ampo.cli -q ARGS` on `processes` CPU processes:
    the shipped GPU config with the process count and mixed precision overridden on the command
    line (bf16 autocast would blur an fp32 comparison; `train.dtype=float32` too)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(ACCELERATE), "launch", "--config_file", str(config), "--num_processes", str(processes),
           "--mixed_precision", "no", "--main_process_port", str(free_port()), "-m", "ampo.cli", "-q", *args]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-6000:])
    return done


def log_rows(folder: Path) -> list[dict]:
    return [e for e in json.loads((folder / "train_log.json").read_text()) if "loss" in e]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (checkpoint / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(checkpoint / name)


def assert_same_training(multi: Path, single: Path, start: dict[str, torch.Tensor] | None = None) -> dict:
    """Per-step loss and the loss's metrics (each the mean over ranks; counts summed) and the
    final weights agree; returns the largest differences (for the docs)."""
    a, b = log_rows(multi), log_rows(single)
    assert [e["step"] for e in a] == [e["step"] for e in b] != []
    diffs = {"loss": 0.0, "metrics": 0.0}
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=LOSS_TOL, abs=LOSS_TOL), (x, y)
        diffs["loss"] = max(diffs["loss"], abs(x["loss"] - y["loss"]))
        for name in ("logp_positive", "logp_negative", "margin", "reward_accuracy"):
            assert x[name] == pytest.approx(y[name], rel=METRIC_TOL, abs=1e-4), (name, x, y)
            diffs["metrics"] = max(diffs["metrics"], abs(x[name] - y[name]) / max(1.0, abs(y[name])))
    wa, wb = weights(multi / "checkpoint"), weights(single / "checkpoint")
    assert wa.keys() == wb.keys()
    diffs["weights"] = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert diffs["weights"] < WEIGHT_TOL, diffs
    if start is not None:  # not vacuous: training moved the weights far more than the tolerance
        moved = max(float((wb[k] - start[k]).abs().max()) for k in wb if k in start)
        assert moved > 100 * WEIGHT_TOL, moved
    return diffs


@pytest.fixture(scope="module")
def single_runs(tiny_policy, tmp_path_factory):
    """One process, global batch 2 (prompts_per_step 2), LoRA and full fine-tune."""
    runs = {}
    for mode in ("lora", "full"):
        out = tmp_path_factory.mktemp(f"single-{mode}")
        assert main(["-q", *train_args(tiny_policy, mode, out, "train.prompts_per_step=2")]) == 0
        runs[mode] = out
    return runs


def run_two_processes(kind: str, mode: str, policy: Path, out: Path) -> None:
    launch(CONFIGS[kind], train_args(policy, mode, out, "train.prompts_per_step=1"))
    stage = json.loads((out / "manifest.json").read_text())["stages"]["train"]
    assert (stage["parallel"], stage["processes"]) == (WRAPPER[kind], 2)  # FSDP really sharded, not DDP


def test_grad_accum_keeps_the_global_batch(tiny_policy, single_runs, tmp_path):
    """One process: prompts_per_step 1 x grad_accum 2 trains like prompts_per_step 2 (the rule
    that keeps the global batch when the process count changes)."""
    out = tmp_path / "accum"
    assert main(["-q", *train_args(tiny_policy, "full", out, "train.prompts_per_step=1", "train.grad_accum=2")]) == 0
    assert_same_training(out, single_runs["full"])


@pytest.mark.slow
@pytest.mark.ci
def test_fsdp_full_finetune_on_two_cpu_processes_equals_one_process(tiny_policy, single_runs, tmp_path):
    """FSDP2 (full shard, examples/accelerate/fsdp.yaml) over two CPU processes, full fine-tune."""
    run_two_processes("fsdp", "full", tiny_policy, tmp_path / "fsdp")
    diffs = assert_same_training(tmp_path / "fsdp", single_runs["full"], weights(tiny_policy))
    print("fsdp full", diffs)


@pytest.mark.slow
@pytest.mark.parametrize("kind, mode", [
    ("ddp", "full"), ("ddp", "lora"), ("fsdp", "lora"),
    pytest.param("zero2", "full", marks=DEEPSPEED), pytest.param("zero3", "full", marks=DEEPSPEED),
    pytest.param("zero3", "lora", marks=DEEPSPEED),
])
def test_two_cpu_processes_equal_one_process(kind, mode, tiny_policy, single_runs, tmp_path):
    run_two_processes(kind, mode, tiny_policy, tmp_path / kind)
    diffs = assert_same_training(tmp_path / kind, single_runs[mode])
    print(kind, mode, diffs)


@pytest.mark.slow
def test_self_play_rounds_under_accelerate_equal_one_process(tiny_policy, tmp_path):
    """`ampo run` (two rounds, full fine-tune) under `accelerate launch` with the FSDP config on two
    CPU processes: the same pools, selections, per-step losses, checkpoints and eval.json as one
    process with the same global batch."""
    common = ["rounds=2", "generate.shard_prompts=1", "train.dtype=float32", "train.learning_rate=0.01"]
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert main(["-q", "run", *tiny_overrides(tiny_policy, single, *common, "train.prompts_per_step=2")]) == 0
    launch(CONFIGS["fsdp"], ["run", *tiny_overrides(tiny_policy, multi, *common, "train.prompts_per_step=1")])
    import pyarrow.parquet as pq

    stages = json.loads((multi / "manifest.json").read_text())["stages"]
    for r in (0, 1):
        assert stages[f"round-{r}/generate"]["shards_by_rank"] == {"0": 2, "1": 2}
        assert (stages[f"round-{r}/train"]["parallel"], stages[f"round-{r}/train"]["processes"]) == ("fsdp2", 2)
        a, b = multi / f"round-{r}", single / f"round-{r}"
        for name in ("pool.parquet", "rewards.parquet", "selection.parquet"):
            assert pq.read_table(a / name).equals(pq.read_table(b / name)), (r, name)
        assert_same_training(a, b)
        ea, eb = (json.loads((d / "eval.json").read_text()) for d in (a, b))
        assert ea.keys() == eb.keys()
        for key, value in eb.items():
            assert ea[key] == (pytest.approx(value, abs=1e-6) if isinstance(value, float) else value), key


def test_metrics_are_reduced_over_ranks_like_the_loss():
    """One process: means of the values, counts summed (the same arithmetic the all-reduce does
    over ranks)."""
    from ampo.distributed import reduce_metrics

    out, tps = reduce_metrics({"margin": [1.0, 3.0], "zero_signal_groups": [1.0, 2.0]}, {"zero_signal_groups"},
                              tokens=100, elapsed=2.0, device=torch.device("cpu"))
    assert out == {"margin": 2.0, "zero_signal_groups": 3.0} and tps == 50.0


def checkpoint_files(work_dir: Path) -> dict[str, float]:
    """Every file of the Trainer's checkpoints in `work_dir` and its modification time."""
    return {str(p.relative_to(work_dir)): p.stat().st_mtime_ns for p in work_dir.glob("checkpoint-*/**/*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ddp", pytest.param("fsdp", marks=pytest.mark.ci), pytest.param("zero2", marks=DEEPSPEED),
                                  pytest.param("zero3", marks=DEEPSPEED)])
def test_an_interrupted_two_process_run_resumes_from_its_checkpoint(kind, tiny_policy, single_runs, tmp_path):
    """A two-process `ampo train` (4 steps, a checkpoint every 2) is cut back to what a kill after
    step 2 leaves (its outputs and the step-4 checkpoint removed), then the same command runs
    again: it resumes from the step-2 checkpoint (whose files are not written again, the wrapper's
    own optimizer and model shards included) and ends where one process does. (A real kill -9 of
    this tiny model's 0.2-second training cannot be timed reliably; the pipeline's kill tests
    cover the kill itself.)"""
    import shutil

    out = tmp_path / kind
    args = train_args(tiny_policy, "full", out, "train.prompts_per_step=1", "train.save_steps=2")
    launch(CONFIGS[kind], args)
    work = out / "train"
    assert (work / "checkpoint-4").is_dir()
    shutil.rmtree(work / "checkpoint-4")
    shutil.rmtree(out / "checkpoint")
    (out / "train_log.json").unlink()
    before = checkpoint_files(work)
    assert before and all(name.startswith("checkpoint-2/") for name in before)
    launch(CONFIGS[kind], args)
    after = checkpoint_files(work)
    rewritten = [name for name, t in before.items() if after.get(name) != t]
    assert not rewritten, f"training started over: {rewritten[:5]}"
    assert (work / "checkpoint-4").is_dir()
    assert_same_training(out, single_runs["full"])
