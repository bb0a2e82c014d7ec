"""`ampo export`: a run's policy after a round as one model folder (a LoRA run's adapters merged
in order), equal to the policy the run itself continues from; refusals in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from ampo.cli import main
from ampo.config import load_config
from ampo.stages import load_round_policy
from helpers import run, tiny_overrides

LORA = ("model.lora=true", "model.lora_r=2", "model.lora_targets=[q_proj]", "rounds=2")


@pytest.fixture(scope="module")
def lora_run(tiny_policy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    run(tiny_policy, out, *LORA)
    return out


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([[1, 5, 9, 14, 3]])).logits


def test_export_writes_the_last_round_policy_with_its_adapters_merged(lora_run, tiny_policy, tmp_path, capsys):
    assert main(["export", str(lora_run), "--out", str(tmp_path / "model")]) == 0
    assert "the policy after round 1" in capsys.readouterr().out
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").is_file() and (tmp_path / "model" / "tokenizer.json").is_file()
    config = load_config(overrides=tiny_overrides(tiny_policy, lora_run, *LORA))
    chain, _ = load_round_policy(config, [lora_run / f"round-{r}" / "checkpoint" for r in range(2)])
    first, _ = load_round_policy(config, [lora_run / "round-0" / "checkpoint"])
    torch.testing.assert_close(logits(exported), logits(chain), rtol=0, atol=1e-5)
    assert not torch.allclose(logits(exported), logits(first), atol=1e-5)  # round 1 moved it
    info = json.loads((tmp_path / "model" / "ampo_export.json").read_text())
    manifest = json.loads((lora_run / "manifest.json").read_text())["stages"]
    assert info["round"] == 1 and info["train_keys"] == [manifest[f"round-{r}/train"]["key"] for r in range(2)]

    assert main(["export", str(lora_run), "--out", str(tmp_path / "r0"), "--round", "0"]) == 0
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "r0")), logits(first),
                               rtol=0, atol=1e-5)


def test_a_damaged_round_checkpoint_is_not_exported(lora_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    adapter = next((run / "round-1" / "checkpoint").glob("*.safetensors"))
    adapter.write_bytes(adapter.read_bytes()[:-8] + b"\0" * 8)
    assert main(["export", str(run), "--out", str(tmp_path / "m"), "--round", "1"]) == 2
    assert "--round 1 is not finished" in capsys.readouterr().err and not (tmp_path / "m").exists()
    assert main(["export", str(run), "--out", str(tmp_path / "m")]) == 0  # the last intact round
    assert json.loads((tmp_path / "m" / "ampo_export.json").read_text())["round"] == 0


@pytest.mark.parametrize("case, message", [
    ("not a run", "is not a run folder"),
    ("out not empty", "exists and is not empty"),
    ("no round", "has no finished round to export"),
    ("round too far", "--round 2 is not finished"),
])
def test_export_refusals_are_one_line(lora_run, tmp_path, capsys, case, message):
    run, out, flags = lora_run, tmp_path / "model", []
    if case == "not a run":
        run = tmp_path
    elif case == "out not empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "no round":
        run = tmp_path / "run"
        run.mkdir()
        shutil.copy(lora_run / "config.yaml", run)
        (run / "manifest.json").write_text(json.dumps({"stages": {}}))
    else:
        flags = ["--round", "2"]
    assert main(["export", str(run), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ampo: error:") and "\n" not in err and message in err, err
    assert case == "out not empty" and (out / "keep.txt").read_text() == "mine" or not out.exists()


def test_a_full_fine_tune_round_exports_its_weights_as_ampo_run_says(tiny_policy, tmp_path, capsys):
    assert main(["-q", "run", *tiny_overrides(tiny_policy, tmp_path / "run")]) == 0
    hint = capsys.readouterr().out.strip().splitlines()[-1]
    assert hint == f"the trained policy as one model folder: ampo export {tmp_path / 'run'} --out MODEL_DIR"
    assert main(hint.split(": ampo ")[1].replace("MODEL_DIR", str(tmp_path / "model")).split()) == 0
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "round-0" / "checkpoint")
    torch.testing.assert_close(logits(exported), logits(trained), rtol=0, atol=0)
