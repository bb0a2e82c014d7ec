"""Same config and seed, same files: two uninterrupted runs in fresh processes (each with torch's
own random start state) give byte-identical pools, selections, checkpoints and eval.json."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, tiny_overrides

# Files that legitimately differ between two runs, and why:
VARYING = {
    "config.yaml",  # holds the run folder's own path (`out`)
    "report.md",  # its title names the run folder
    "manifest.json",  # stage timings (its stage keys and output hashes are compared below)
}
VARYING_UNDER = ("train_log.json",  # per-step wall-clock fields (tokens/s, runtime)
                 "train/")  # Trainer resume state: training_args.bin holds output_dir; timings


def _files(folder: Path) -> dict[str, bytes]:
    """Every file of a run folder (relative path -> bytes), minus the ones that hold paths or times."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel not in VARYING and not any(part in rel for part in VARYING_UNDER) \
                and rel != ".lock":
            out[rel] = path.read_bytes()
    return out


def _start(args: list[str], hash_seed: str) -> subprocess.Popen:
    """`ampo run` in a fresh process whose string hash is seeded with `hash_seed`: two runs with
    different seeds order every set of strings differently (PEFT's `target_modules` is one)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONHASHSEED": hash_seed}
    return subprocess.Popen([sys.executable, "-m", "ampo.cli", "-q", "run", *args], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("mode", [  # LoRA on the default four target modules, a set in PEFT
    ["model.lora=true", "model.lora_r=2", "model.lora_dropout=0.1", "rounds=2"],
    ["model.lora=false"],
    ["model.lora=true", "model.lora_r=2", "train.curriculum=pairs", "train.loss=dpo"],
], ids=["lora-2-rounds", "full", "curry-dpo-stages"])
def test_two_runs_give_identical_files(tiny_policy, tmp_path, mode):  # noqa: F811
    runs = [tmp_path / "a", tmp_path / "b"]
    procs = [_start(tiny_overrides(tiny_policy, out, *mode), seed)  # concurrently: 2 cores
             for out, seed in zip(runs, ("1", "2"))]  # q,k,v,o as a set: k,v,q,o in one, o,k,v,q in the other
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    a, b = (_files(out) for out in runs)
    assert a.keys() == b.keys()
    weights = "adapter_model.safetensors" if "model.lora=true" in mode else "model.safetensors"
    for rel in ("round-0/pool.parquet", "round-0/selection.parquet", f"round-0/checkpoint/{weights}",
                "round-0/eval.json"):
        assert rel in a, rel
    assert [rel for rel in a if a[rel] != b[rel]] == []
    # the Trainer's checkpoints (resume state, not compared above) hold the same adapter config too
    saved = [sorted(out.glob("round-*/**/train/checkpoint-*/adapter_config.json")) for out in runs]
    assert bool(saved[0]) == ("model.lora=true" in mode) and len(saved[0]) == len(saved[1])
    assert [p.read_bytes() for p in saved[0]] == [p.read_bytes() for p in saved[1]]
    if "model.lora=true" in mode:
        assert json.loads(a["round-0/checkpoint/adapter_config.json"])["target_modules"] == [
            "k_proj", "o_proj", "q_proj", "v_proj"]
    stages = [json.loads((out / "manifest.json").read_text())["stages"] for out in runs]
    assert {n: s["key"] for n, s in stages[0].items()} == {n: s["key"] for n, s in stages[1].items()}
