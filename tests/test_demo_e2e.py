"""`ampo demo` end to end on the real SmolLM2-135M-Instruct and MiniLM, at a reduced size."""

import json

import pytest

from ampo.cli import main


@pytest.mark.slow
@pytest.mark.ci
def test_demo_reduced_size_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["-q", "demo", "--out", str(out), "rounds=1", "data.train_prompts=4", "data.heldout=4",
            "generate.n=4", "generate.max_new_tokens=16", "eval.samples_per_prompt=1", "eval.max_new_tokens=16",
            "select.k=2", "train.prompts_per_step=2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "after round 0" in printed and "win rate vs initial" in printed
    ev = json.loads((out / "round-0" / "eval.json").read_text())
    assert ev["n_prompts"] == 4 and 0 <= ev["win_rate"] <= 1
    assert (out / "round-0" / "checkpoint" / "adapter_config.json").exists()  # the demo trains LoRA
    assert (out / "report.md").exists() and (out / "selection_map.png").exists()
    manifest = (out / "manifest.json").read_text()
    assert main(args) == 0  # a second run reuses everything
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages == json.loads(manifest)["stages"]
