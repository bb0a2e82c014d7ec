"""IFEval end to end on the real SmolLM2-135M-Instruct: the benchmark on a fixed subset, and one
round of the IFEval recipe at a tiny size."""

import json

import pytest

from ampo.cli import main


@pytest.mark.slow
@pytest.mark.ci
def test_evaluate_smollm2_on_an_ifeval_subset(tmp_path, capsys):
    out = tmp_path / "ifeval"
    args = ["-q", "evaluate", "--benchmark", "ifeval", "--policy", "smollm2-135m-instruct", "--limit", "8",
            "--max-new-tokens", "64", "--output", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "IFEval: 8 of 541 prompts (fixed subset, seed 0)" in printed and "model-card figure" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_prompts"] == 8 and metrics["limit"] == 8 and metrics["decoding"] == "greedy"
    assert 0 <= metrics["avg_prompt_inst_strict_acc"] <= 1
    responses = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert len(responses) == 8 and any(r["response"].strip() for r in responses)
    rescored = tmp_path / "rescored"
    assert main(["-q", "evaluate", "--benchmark", "ifeval", "--responses", str(out / "responses.jsonl"),
                 "--output", str(rescored)]) == 0  # its own responses file scores the same
    again = json.loads((rescored / "metrics.json").read_text())
    assert again["avg_prompt_inst_strict_acc"] == metrics["avg_prompt_inst_strict_acc"]


@pytest.mark.slow
def test_ifeval_recipe_one_tiny_round(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["-q", "demo", "--recipe", "ifeval", "--out", str(out), "rounds=1", "data.train_prompts=4",
            "data.heldout=4", "generate.n=4", "generate.max_new_tokens=24", "train.prompts_per_step=2",
            "eval.samples_per_prompt=1", "eval.max_new_tokens=24", "eval.benchmark_limit=4",
            "eval.benchmark_max_new_tokens=24"]
    assert main(args) == 0
    assert "ifeval avg prompt/inst (strict)" in capsys.readouterr().out
    ev = json.loads((out / "round-0" / "eval.json").read_text())
    assert ev["benchmarks"]["ifeval"]["n_prompts"] == 4
    assert (out / "benchmarks.png").exists()
