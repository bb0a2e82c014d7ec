"""`ampo train` on the pools users already have: every layout gives a loadable checkpoint whose
loss went down; the same pool gives the same groups and losses as a pipeline round's train stage;
a killed run resumes to the same result; bad pools are refused with one line naming the row."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from ampo.cli import main
from ampo.config import load_config
from ampo.data import read_pool, write_pool
from ampo.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FAST = ["--no-lora", "--strategy", "bottomk", "--k", "1", "--epochs", "4", "train.learning_rate=0.01",
        "train.prompts_per_step=1", "train.save_steps=1000"]


def losses(out: Path) -> list[float]:
    return [e["loss"] for e in json.loads((out / "train_log.json").read_text()) if "loss" in e]


def _save_to_disk(tmp_path: Path) -> Path:
    import datasets

    rows = [json.loads(line) for line in (EXAMPLES / "ampo_published.jsonl").read_text().splitlines()]
    folder = tmp_path / "published_ds"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(folder))
    return folder


def _parquet(tmp_path: Path) -> Path:
    pool, _ = read_pool(EXAMPLES / "tiny_pool.jsonl")
    write_pool(tmp_path / "tiny_pool.parquet", pool)
    return tmp_path / "tiny_pool.parquet"


LAYOUTS = {
    "numbered (A0..An)": lambda tmp: EXAMPLES / "ampo_published.jsonl",
    "save_to_disk folder": _save_to_disk,
    "multi_response": lambda tmp: EXAMPLES / "multi_response.jsonl",
    "ultrafeedback": lambda tmp: EXAMPLES / "ultrafeedback_style.jsonl",
    "trl_pairs": lambda tmp: EXAMPLES / "trl_pairs.jsonl",
    "ampo (parquet)": _parquet,
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_layout_trains_a_loadable_checkpoint_whose_loss_went_down(layout, tiny_policy, tmp_path):
    source, out = LAYOUTS[layout](tmp_path), tmp_path / "out"
    assert main(["-q", "train", "--input", str(source), "--output", str(out), "--policy", str(tiny_policy),
                 *FAST]) == 0
    values = losses(out)
    groups = len(read_pool(source)[0])
    assert len(values) == 4 * groups
    assert np.mean(values[-groups:]) < np.mean(values[:groups])  # the same groups, last epoch vs first
    model = AutoModelForCausalLM.from_pretrained(out / "checkpoint")
    assert model.config.vocab_size == AutoModelForCausalLM.from_pretrained(tiny_policy).config.vocab_size
    assert (out / "checkpoint" / "tokenizer.json").exists()


def test_lora_with_a_reference_loss_and_merge(tiny_policy, tmp_path):
    """dpo needs reference log-probs (computed once); the adapter and the merged model both load,
    and the merged model is the base plus the adapter."""
    out = tmp_path / "out"
    assert main(["-q", "train", "--input", str(EXAMPLES / "ampo_published.jsonl"), "--output", str(out),
                 "--policy", str(tiny_policy), "--loss", "dpo", "--strategy", "optselect", "--k", "2",
                 "--embedder", "policy", "--max-steps", "3", "--merge", "model.lora_r=2",
                 "train.learning_rate=0.01", "train.prompts_per_step=2"]) == 0
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert {name for name, e in stages.items() if e["status"] == "done"} == {"embed", "select", "refs", "train", "merge"}
    refs = pq.read_table(out / "ref_logps.parquet").to_pylist()
    assert all(len(row["ref_logps"]) == 1 and len(row["ref_logps"][0]) == 3 for row in refs)
    assert json.loads((out / "train_log.json").read_text())[-1]["step"] == 3
    assert (out / "checkpoint" / "adapter_config.json").exists()
    adapter = AutoModelForCausalLM.from_pretrained(out / "checkpoint")  # transformers' PEFT integration
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        assert torch.allclose(adapter(ids).logits, merged(ids).logits, atol=1e-4)
        assert not torch.allclose(merged(ids).logits, AutoModelForCausalLM.from_pretrained(tiny_policy)(ids).logits)


def test_same_groups_and_losses_as_a_pipeline_round(tiny_policy, tmp_path):
    from helpers import tiny_overrides

    overrides = tiny_overrides(tiny_policy, tmp_path / "run")
    Pipeline(load_config(overrides=overrides), progress=False).run()
    with Pipeline(load_config(overrides=overrides), progress=False) as pipe:
        pool = pipe.scored_pool(0, with_selection=False)
    write_pool(tmp_path / "round0.parquet", pool)
    out = tmp_path / "train"
    assert main(["-q", "train", "--input", str(tmp_path / "round0.parquet"), "--output", str(out),
                 *[o for o in overrides if not o.startswith("out=")]]) == 0
    round_dir = tmp_path / "run" / "round-0"
    assert pq.read_table(out / "selection.parquet").equals(pq.read_table(round_dir / "selection.parquet"))
    assert losses(out) == losses(round_dir.parent / "round-0") != []
    a, b = load_file(out / "checkpoint" / "model.safetensors"), load_file(round_dir / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_killed_train_resumes_to_the_same_result(tiny_policy, tmp_path):
    args = ["train", "--input", str(EXAMPLES / "ampo_published.jsonl"), "--policy", str(tiny_policy), "--no-lora",
            "--strategy", "bottomk", "--k", "2", "--epochs", "6", "train.prompts_per_step=1", "train.save_steps=1",
            "train.learning_rate=0.01"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert main(["-q", *args, "--output", str(reference)]) == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ampo.cli", "-q", *args, "--output", str(killed)], env=env,
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not list((killed / "train").glob("checkpoint-[3-9]/trainer_state.json")):
        assert proc.poll() is None, "ampo train ended before the kill point"
        assert time.time() - t0 < 240, "kill point not reached"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoint").exists()
    assert main(["-q", *args, "--output", str(killed)]) == 0
    state = json.loads((killed / "manifest.json").read_text())["stages"]
    assert state["train"]["status"] == "done"
    assert losses(killed)[-3:] == pytest.approx(losses(reference)[-3:], abs=1e-5)
    a, b = load_file(killed / "checkpoint" / "model.safetensors"), load_file(reference / "checkpoint" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_rerun_is_up_to_date(tiny_policy, tmp_path, caplog):
    args = ["-q", "train", "--input", str(EXAMPLES / "trl_pairs.jsonl"), "--output", str(tmp_path / "o"),
            "--policy", str(tiny_policy), "--no-lora", "--max-steps", "1"]
    assert main(args) == 0
    before = (tmp_path / "o" / "checkpoint" / "model.safetensors").stat().st_mtime_ns
    caplog.set_level(logging.INFO, logger="ampo")
    assert main(args) == 0
    assert "[train] up to date" in caplog.text and "[select] up to date" in caplog.text
    assert (tmp_path / "o" / "checkpoint" / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.parametrize("rows, expected", [
    ([{"prompt": "a", "responses": ["x", "y"], "rewards": [1, 0]}, {"prompt": "b", "responses": ["x"], "rewards": [1]}],
     "row 2: field 'responses': 1 usable response(s); a training group needs at least 2"),
    ([{"prompt": "a", "A0": "x", "A1": None, "score_A0": 1}],
     "row 1: field 'A0..An': 1 usable response(s); a training group needs at least 2"),
    ([{"prompt": "a", "responses": ["x", "y"]}],
     "row 1: field 'rewards': missing (`ampo train` takes each group's positive by reward and loss 'ampo' "
     "weighs by them; add them with `ampo score` first)"),
    ([{"prompt": "a", "responses": ["x", "y", "z"], "rewards": [1, 0, 2], "finished": [True, False]}],
     "row 1: field 'finished': has 2 entries but there are 3 responses"),  # once an IndexError after loading
])
def test_bad_pools_are_refused_with_one_line_naming_the_row(rows, expected, tmp_path, capsys):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["-q", "train", "--input", str(pool), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == f"ampo: error: {pool}: {expected}\n"
    assert not (tmp_path / "o").exists()  # no output folder, partial or empty
    assert main(["-q", "train", "--input", str(pool), "--output", str(tmp_path / "o")]) == 2  # nothing left locked
    assert capsys.readouterr().err == err


def test_evaluate_a_policy_against_another_writes_a_rounds_eval_json(tiny_policy, tmp_path):
    """A policy against itself draws the same samples (same seed): win rate exactly 1/2, no drift;
    an adapter from `ampo train` against its base gets every key a round's eval.json has."""
    from helpers import run

    round_keys = set(run(tiny_policy, tmp_path / "run")[0]) - {"round"}
    common = ["-q", "evaluate", "--prompts", str(EXAMPLES / "tiny_prompts.jsonl"), "--max-new-tokens", "6",
              "--embedder", "policy", "--bootstrap", "200"]
    assert main([*common, "--policy", str(tiny_policy), "--against", str(tiny_policy),
                 "--output", str(tmp_path / "self")]) == 0
    same = json.loads((tmp_path / "self" / "eval.json").read_text())
    assert same["win_rate"] == 0.5 and same["win_rate_ci"] == [0.5, 0.5] and same["drift"] == 0.0
    assert same.keys() == round_keys | {"policy", "against"}
    trained = tmp_path / "trained"
    assert main(["-q", "train", "--input", str(EXAMPLES / "trl_pairs.jsonl"), "--output", str(trained),
                 "--policy", str(tiny_policy), "--max-steps", "2", "model.lora_r=2", "train.learning_rate=0.05"]) == 0
    assert main([*common, "--policy", str(trained / "checkpoint"), "--base", str(tiny_policy),
                 "--output", str(tmp_path / "adapter")]) == 0
    e = json.loads((tmp_path / "adapter" / "eval.json").read_text())
    assert e["against"] == str(tiny_policy) and e["n_prompts"] == 6 and 0 <= e["win_rate"] <= 1
    assert e["baseline_mean_reward"] == same["baseline_mean_reward"]  # the same baseline samples


@pytest.mark.slow
@pytest.mark.ci
def test_real_smollm2_lora_train_then_evaluate_the_adapter(tmp_path):
    """The real SmolLM2-135M-Instruct: a few LoRA steps on the published-layout example pool
    (optselect, MiniLM embeddings on the fly), then the adapter evaluated against its base."""
    out = tmp_path / "lora"
    assert main(["-q", "train", "--input", str(EXAMPLES / "ampo_published.jsonl"), "--output", str(out),
                 "--k", "3", "--max-steps", "3", "train.prompts_per_step=2"]) == 0
    assert (out / "checkpoint" / "adapter_model.safetensors").exists() and len(losses(out)) == 3
    assert main(["-q", "evaluate", "--policy", str(out / "checkpoint"), "--output", str(tmp_path / "eval"),
                 "--limit", "4", "--max-new-tokens", "16", "--bootstrap", "100"]) == 0
    e = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert e["n_prompts"] == 4 and 0 <= e["win_rate"] <= 1


def test_curriculum_pairs_is_refused_by_ampo_train(tmp_path, capsys):
    assert main(["-q", "train", "--input", str(EXAMPLES / "trl_pairs.jsonl"), "--output", str(tmp_path / "o"),
                 "train.curriculum=pairs"]) == 2
    assert "'train.curriculum': 'pairs' (Curry-DPO stages) runs in `ampo run` only" in capsys.readouterr().err
