"""`ampo run` on a tiny in-process policy with pairwise preferences: the new losses (gpo, tripo,
mmpo target=pref) trained from a pairwise judge's matrices, and the DNO recipe with a gold
response and the margin filter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ampo.config import load_config
from ampo.pipeline import Pipeline
from ampo.preferences import aggregate
from helpers import ROOT, tiny_overrides

JUDGE = f"pairwise:{Path(__file__).parent / 'judges.py'}:cyclic"


def run(policy, out, *extra, config=None):
    return Pipeline(load_config(config, overrides=tiny_overrides(policy, out, *extra)), progress=False).run()


@pytest.mark.parametrize("loss, extra", [
    ("gpo", ["score.aggregate=mean_logit", "train.hparams.beta=0.1", "train.hparams.clamp=10"]),
    ("tripo", []),
    ("mmpo", ["train.hparams.target=pref", "select.require_beats=0.5", "rounds=2"]),
])
def test_new_losses_train_on_a_pairwise_judge_through_ampo_run(tiny_policy, tmp_path, loss, extra):
    out = tmp_path / "run"
    results = run(tiny_policy, out, f"score.reward={JUDGE}", f"train.loss={loss}", *extra)
    how = "mean_logit" if loss == "gpo" else "win_rate"  # auto = win_rate for a pairwise judge
    for r, result in enumerate(results):
        rows = pq.read_table(out / f"round-{r}" / "rewards.parquet").to_pylist()
        for row in rows:
            S = np.array(row["pref_logits"])
            assert S.shape == (4, 4) and np.array_equal(S, -S.T)
            np.testing.assert_allclose(row["rewards"], aggregate(S, how))
        log = json.loads((out / f"round-{r}" / "train_log.json").read_text())
        assert all(np.isfinite(step["loss"]) for step in log if "loss" in step)
        assert 0 <= result["win_rate_ci"][0] <= result["win_rate"] <= result["win_rate_ci"][1] <= 1
        assert result["baseline_mean_reward"] == 0.5  # pairwise evaluation: win probability vs the baseline
    if loss == "mmpo":  # p = sigmoid(S_0j) from the collator's pref_logits (it raises without them)
        assert any("soft_target" in step for step in log)
        stages = json.loads((out / "manifest.json").read_text())["stages"]
        assert {"require_beats_prompts", "require_beats_removed"} <= stages["round-0/select"].keys()


def test_dno_recipe_with_gold_responses_and_margin_filter(tiny_policy, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    rows = [json.loads(line) for line in (ROOT / "examples" / "tiny_prompts.jsonl").read_text().splitlines()]
    prompts.write_text("".join(json.dumps({**r, "gold": f"A kind and helpful answer number {i}."}) + "\n"
                               for i, r in enumerate(rows)))
    out = tmp_path / "run"
    run(tiny_policy, out, f"data.prompts={prompts}", "data.gold_field=gold", "select.k=1",
        "select.min_margin=0.05", config=ROOT / "src" / "ampo" / "recipes" / "dno.yaml")
    c = load_config(out / "config.yaml")
    assert (c.score.aggregate, c.select.strategy, c.train.loss, c.train.reference) == \
        ("win_rate", "best_worst", "dpo", "round_start")
    pool = pq.read_table(out / "round-0" / "pool.parquet").to_pylist()
    split = json.loads((out / "split.json").read_text())
    for row, prompt in zip(pool, split["train"]):
        assert len(row["responses"]) == 5 and row["responses"][-1] == prompt["gold"]
        assert row["origin"] == ["policy"] * 4 + ["gold"] and row["finished"][-1]
    assert len(pq.read_table(out / "round-0" / "rewards.parquet").to_pylist()[0]["rewards"]) == 5
    selection = pq.read_table(out / "round-0" / "selection.parquet").to_pylist()
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    dropped = stages["round-0/select"]["min_margin_dropped"]
    assert dropped == sum(not s["selected"] for s in selection)
    refs = pq.read_table(out / "round-0" / "ref_logps.parquet").to_pylist()
    assert len(refs) == len(selection) - dropped  # dropped prompts are not trained on
    golds = {p["gold"] for p in split["train"] + split["heldout"]}
    for name in ("round-0/eval_samples.parquet", "baseline/samples.parquet"):
        for row in pq.read_table(out / name).to_pylist():
            assert len(row["responses"]) == 2 and not golds & set(row["responses"])  # the policy's own only


def test_curry_dpo_stages_train_the_groups_min_margin_keeps(tiny_policy, tmp_path):
    judge = f"pairwise:{Path(__file__).parent / 'judges.py'}:ties_on_weather_and_flights"
    out = tmp_path / "run"
    run(tiny_policy, out, f"score.reward={judge}", "select.min_margin=0.01", "train.curriculum=pairs",
        "train.loss=dpo", "select.strategy=bottomk")
    split = json.loads((out / "split.json").read_text())
    flat = sum("rainy" in str(p["prompt"]) or "flight" in str(p["prompt"]) for p in split["train"])
    assert 0 < flat < len(split["train"])  # the fixed split puts some tied prompts in training
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["round-0/select"]["min_margin_dropped"] == flat
    kept = len(split["train"]) - flat
    assert stages["round-0/train"]["pairs_per_stage"] == [kept, kept]  # k = 2: two stages of one pair each
    assert len(pq.read_table(out / "round-0" / "ref_logps.parquet").to_pylist()) == kept
