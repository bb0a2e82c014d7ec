"""`train.loss=grpo` through `ampo run` and `ampo train` on a tiny in-process policy: the sampling
policy's log-probs (`old`) are computed once per round, after selection, for the selected responses
(their own stage, or the first reference column when the reference is the same policy), the first
step's ratio is 1, several epochs move it and the loss, `select.min_margin` drops the groups with no
reward spread, and the keys and config checks that go with it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import ampo.pipeline
import ampo.pooltrain
import ampo.stages
from ampo.cli import main
from ampo.config import ConfigError, load_config
from ampo.dry_run import stage_keys as planned_keys
from ampo.pipeline import Pipeline
from ampo.recipes import HERE as RECIPES
from ampo.stage_keys import RunKeys, lora_seed, train_key, train_options
from helpers import ROOT, tiny_overrides

EXAMPLES = ROOT / "examples"
TIES = f"pairwise:{Path(__file__).parent / 'judges.py'}:ties_on_weather_and_flights"
GRPO = ["train.loss=grpo", "select.strategy=all", "train.epochs=3", "train.prompts_per_step=1",
        "train.hparams.eps_low=0.2", "train.hparams.eps_high=0.2"]


def log_of(folder: Path) -> list[dict]:
    return [e for e in json.loads((folder / "train_log.json").read_text()) if "loss" in e]


def assert_trained_from_ratio_one(log: list[dict]) -> None:
    """The first step's ratio is 1 (old = the policy at its start); later epochs move it and the loss."""
    assert len(log) >= 4
    assert log[0]["ratio"] == pytest.approx(1.0, abs=1e-4)
    assert max(abs(e["ratio"] - 1.0) for e in log[1:]) > 1e-3
    assert len({round(e["loss"], 7) for e in log}) > 1
    assert all(np.isfinite(e["loss"]) for e in log)


def count_passes(monkeypatch) -> list[int]:
    """Count the no-gradient log-prob passes of the selected responses (one per policy column)."""
    calls = []
    real = ampo.stages.selected_logprobs

    def counted(policy, pool, *args, **kwargs):
        calls.append(len(pool))
        return real(policy, pool, *args, **kwargs)

    monkeypatch.setattr(ampo.stages, "selected_logprobs", counted)
    monkeypatch.setattr(ampo.pipeline, "selected_logprobs", counted)
    monkeypatch.setattr(ampo.pooltrain, "selected_logprobs", counted)  # bound at import, by whichever test came first
    return calls


def test_grpo_round_computes_old_logprobs_trains_and_drops_flat_groups(tiny_policy, tmp_path, monkeypatch):
    """kl = 0: no reference pass; one old pass (the round-start policy) over the groups selection
    kept; `select.min_margin` drops exactly the prompts whose rewards are all tied."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ampo.layouts import response_logprobs

    calls = count_passes(monkeypatch)
    out = tmp_path / "run"
    c = load_config(overrides=tiny_overrides(tiny_policy, out, *GRPO, f"score.reward={TIES}",
                                             "select.min_margin=1e-6"))
    Pipeline(c, progress=False).run()
    rd = out / "round-0"
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert "round-0/refs" not in stages and not (rd / "ref_logps.parquet").exists()
    assert stages["round-0/old"]["status"] == "done"

    split = json.loads((out / "split.json").read_text())
    flat = sum("rainy" in str(p["prompt"]) or "flight" in str(p["prompt"]) for p in split["train"])
    assert 0 < flat < len(split["train"])
    assert stages["round-0/select"]["min_margin_dropped"] == flat
    with Pipeline(load_config(out / "config.yaml"), progress=False) as pipe:
        pool = pipe.training_pool(0)
    assert len(pool) == len(split["train"]) - flat
    assert all(len(rec.selected) == 4 for rec in pool)  # strategy all: the whole group
    assert calls == [len(pool)]  # one pass, the kept groups only

    old = [row["old_logps"] for row in pq.read_table(rd / "old_logps.parquet").to_pylist()]
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_policy), AutoTokenizer.from_pretrained(tiny_policy)
    own, _ = response_logprobs(model, tok, [rec.prompt for rec in pool],
                               [[rec.responses[i] for i in rec.selected] for rec in pool],
                               [[rec.finished[i] for i in rec.selected] for rec in pool], shared_prefix=True)
    for got, want in zip(old, own, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4)  # the policy's own log-probs (another row layout)

    log = log_of(rd)
    assert_trained_from_ratio_one(log)
    assert all(e["zero_signal_groups"] == 0 for e in log)  # the filter left no group without a gradient
    assert len(log) == 3 * len(pool)  # epochs 3, one prompt per step


def test_grpo_with_kl_and_round_start_reference_reuses_the_reference_column(tiny_policy, tmp_path, monkeypatch):
    """kl > 0 with the round-start policy as reference: the refs stage's column is `old` too,
    computed once; no old stage."""
    calls = count_passes(monkeypatch)
    out = tmp_path / "run"
    Pipeline(load_config(overrides=tiny_overrides(tiny_policy, out, *GRPO, "train.hparams.kl=0.04",
                                                  "train.reference=round_start")), progress=False).run()
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["round-0/refs"]["status"] == "done" and "round-0/old" not in stages
    assert not (out / "round-0" / "old_logps.parquet").exists()
    assert calls == [len(json.loads((out / "split.json").read_text())["train"])]  # one column, every prompt
    log = log_of(out / "round-0")
    assert_trained_from_ratio_one(log)
    assert log[0]["kl_k3"] == pytest.approx(0.0, abs=1e-6)  # ref = old = the policy at step 0
    assert max(e["kl_k3"] for e in log) > 1e-6


def grpo_keys(*extra: str) -> RunKeys:
    return RunKeys(load_config(RECIPES / "demo.yaml", ["train.loss=grpo", "rounds=2", *extra]))


def test_old_stage_keys_follow_the_reference_policy(tmp_path, monkeypatch):
    """kl = 0: no refs, an old stage every round; kl > 0 against the initial policy: round 0's
    reference is the round-start policy (one column), round 1 has both; round_start: never an old
    stage. The dry run lists the old stages, and the train key depends on the old key."""
    monkeypatch.chdir(tmp_path)
    plain = grpo_keys()
    assert [plain.refs(r) for r in (0, 1)] == [None, None] and all(plain.old(r) for r in (0, 1))
    names = [name for name, _ in planned_keys(plain)]
    assert names.index("round-0/select") < names.index("round-0/old") < names.index("round-0/train")
    assert "round-0/refs" not in names

    initial = grpo_keys("train.hparams.kl=0.04", "train.reference=initial")
    assert initial.old(0) is None and initial.old_in_refs(0) and initial.refs(0)
    assert initial.old(1) and initial.refs(1) and not initial.old_in_refs(1)
    assert [name for name, _ in planned_keys(initial) if name.endswith("/old")] == ["round-1/old"]
    assert not any(grpo_keys("train.hparams.kl=0.04", "train.reference=round_start").old(r) for r in (0, 1))

    c = plain.c
    parts = (plain.policy(0), plain.select(0), None, train_options(c), dataclasses.asdict(c.model), c.seed,
             lora_seed(c, 0))
    assert plain.train(0) == train_key(*parts, plain.old(0)) != train_key(*parts)  # the old key is in the train key
    assert plain.old(0) != plain.old(1) and plain.old(0) != grpo_keys("seed=1").old(0)


def test_losses_without_old_keep_their_keys_and_have_no_old_stage():
    for loss in ("dpo", "ampo"):
        keys = RunKeys(load_config(RECIPES / "demo.yaml", [f"train.loss={loss}"]))
        assert keys.old(0) is None and not keys.old_in_refs(0)
        assert not any(name.endswith("/old") for name, _ in planned_keys(keys))


def test_grpo_reference_need_follows_kl_and_curriculum_pairs_is_refused(tmp_path):
    from ampo.stage_keys import n_refs

    assert n_refs(load_config(RECIPES / "demo.yaml", ["train.loss=grpo"])) == 0
    assert n_refs(load_config(RECIPES / "demo.yaml", ["train.loss=grpo", "train.hparams.kl=0.1"])) == 1
    with pytest.raises(ConfigError) as e:
        load_config(RECIPES / "demo.yaml", ["train.loss=grpo", "train.curriculum=pairs", "select.k=3"])
    assert str(e.value).startswith("config 'train.curriculum': 'pairs' trains one pair per stage; loss 'grpo' "
                                   "is a group loss") and "\n" not in str(e.value)


def test_ampo_train_grpo_on_a_scored_pool(tiny_policy, tmp_path, monkeypatch):
    """`ampo train --loss grpo`: the old pass under the model being trained, at its start (kl = 0),
    or the reference column it equals (kl > 0); ratio 1 at the first step, moving after."""
    flags = ["-q", "train", "--input", str(EXAMPLES / "ampo_published.jsonl"), "--policy", str(tiny_policy),
             "--no-lora", "--loss", "grpo", "--strategy", "all", "--epochs", "3"]
    options = ["train.learning_rate=0.01", "train.prompts_per_step=2", "train.save_steps=1000",
               "train.hparams.eps_low=0.2", "train.hparams.eps_high=0.2"]
    calls = count_passes(monkeypatch)
    assert main([*flags, "--output", str(tmp_path / "plain"), *options]) == 0
    stages = json.loads((tmp_path / "plain" / "manifest.json").read_text())["stages"]
    assert stages["old"]["status"] == "done" and "refs" not in stages
    old = pq.read_table(tmp_path / "plain" / "old_logps.parquet").to_pylist()
    sel = pq.read_table(tmp_path / "plain" / "selection.parquet").to_pylist()
    assert [len(o["old_logps"]) for o in old] == [len(s["selected"]) for s in sel] and len(old) == 6
    assert_trained_from_ratio_one(log_of(tmp_path / "plain"))

    assert main([*flags, "--output", str(tmp_path / "kl"), *options, "train.hparams.kl=0.04"]) == 0
    stages = json.loads((tmp_path / "kl" / "manifest.json").read_text())["stages"]
    assert stages["refs"]["status"] == "done" and "old" not in stages
    assert calls == [6, 6]  # one pass per run: the reference column is the old one
    log = log_of(tmp_path / "kl")
    assert_trained_from_ratio_one(log)
    assert log[0]["kl_k3"] == pytest.approx(0.0, abs=1e-6)


def test_ampo_train_grpo_refuses_a_group_of_one(tmp_path, capsys):
    pool = tmp_path / "pool.jsonl"
    rows = [{"prompt": "a", "responses": ["x", "y"], "rewards": [1, 0]}, {"prompt": "b", "responses": ["x"], "rewards": [1]}]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["-q", "train", "--input", str(pool), "--output", str(tmp_path / "o"), "--loss", "grpo"]) == 2
    assert capsys.readouterr().err == (f"ampo: error: {pool}: row 2: field 'responses': 1 usable response(s); "
                                       "a training group needs at least 2\n")
