"""Pairwise preferences through the pipeline's pieces: pairwise scorers, `score.aggregate`,
`select.require_beats` / `select.min_margin`, the collator's `pref_logits`, gold responses, and
config validation (docs/preferences.md; the preference cycle of example P1, DNO's example D1)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ampo.config import ConfigError, load_config
from ampo.data import PoolError, PoolRecord, add_gold, read_prompt_rows
from ampo.evaluation import pairwise_vs_base, summarize
from ampo.preferences import aggregate
from ampo.rewards import (CallablePairwise, is_pairwise, load_reward, resolve_aggregate, reward_kind,
                          score_records)
from ampo.preference_filters import select_groups
from ampo.trainer import GroupCollator, build_groups

JUDGES = Path(__file__).parent / "judges.py"
P1 = np.array([[0, 1.5, -1, 2], [-1.5, 0, 1, 2], [1, -1, 0, 2], [-2, -2, -2, 0]], dtype=float)


def judge_p1(prompt, responses):
    return P1[: len(responses), : len(responses)]


def test_pairwise_spec_loads_a_judge_and_scores_matrices():
    assert reward_kind(f"pairwise:{JUDGES}:cyclic") == "pairwise"
    scorer = load_reward(f"pairwise:{JUDGES}:cyclic")
    assert is_pairwise(scorer) and not is_pairwise(load_reward("builtin"))
    (S,) = scorer.matrices(["p"], [["a", "a b", "a b c", "a b c d"]])
    # classes 1, 2, 0, 1 (word count mod 3): 1 beats 2, 2 beats 0, 0 beats 1; within class 1 the longer wins
    assert S[0, 1] == 2 and S[1, 2] == 2 and S[2, 0] == 2 and S[3, 0] == pytest.approx(0.3)
    np.testing.assert_array_equal(S, -S.T)
    with pytest.raises(ValueError, match="not of the form 'pairwise:module:function'"):
        reward_kind("pairwise:nothing")


def test_a_position_biased_judge_is_symmetrised_and_bad_matrices_are_named():
    (S,) = load_reward(f"pairwise:{JUDGES}:position_biased").matrices(["p"], [["aa", "aaaa"]])
    assert S[1, 0] == pytest.approx(0.1) and S[0, 1] == pytest.approx(-0.1)  # the +1 bias averaged away
    with pytest.raises(ValueError, match=r"returned shape \(2, 3\) for 2 responses"):
        load_reward(f"pairwise:{JUDGES}:wrong_shape").matrices(["p"], [["a", "b"]])
    nan = CallablePairwise(lambda p, rs: np.array([[0, np.nan], [0, 0]]))
    with pytest.raises(ValueError, match=r"returned nan at \[0, 1\]"):
        nan.matrices(["p"], [["a", "b"]])


def test_score_records_keeps_the_matrix_beside_the_aggregate():
    pool = [PoolRecord(prompt="p", responses=["w", "x", "y", "z"], id="a")]
    (row,) = score_records(CallablePairwise(judge_p1), pool, "win_rate")
    np.testing.assert_allclose(row["rewards"], [0.655771, 0.598094, 0.626932, 0.119203], atol=1e-6)
    np.testing.assert_array_equal(row["pref_logits"], P1)
    with pytest.raises(ValueError, match="a pairwise scorer has no scalar reward"):
        score_records(CallablePairwise(judge_p1), pool, "reward")


def test_a_scalar_reward_is_the_special_case_s_ij_equals_r_i_minus_r_j():
    pool = [PoolRecord(prompt="p", responses=["a", "b", "c", "d"], id="toy")]
    r = [2.0, 1.0, -0.5, -1.5]
    reward = lambda prompts, responses: r
    assert score_records(reward, pool, "reward") == [{"rewards": r}]  # today's behaviour: no matrix
    (row,) = score_records(reward, pool, "mean_logit")
    np.testing.assert_allclose(row["rewards"], [3.5, 1.5, -1.5, -3.5])  # Bradley-Terry check: 2 (r - mean r)
    np.testing.assert_allclose(row["pref_logits"], np.subtract.outer(r, r))
    assert resolve_aggregate("auto", "folder") == "reward" and resolve_aggregate("auto", "pairwise") == "win_rate"
    assert resolve_aggregate("copeland", "gpm") == "copeland"


def test_require_beats_keeps_only_negatives_the_positive_beats_p1():
    rewards = aggregate(P1, "win_rate")
    emb = np.eye(4)
    plain = select_groups("bottomk", [rewards], [emb], 3)
    assert plain.indices[0].tolist() == [0, 3, 1, 2] and plain.counts == {}  # 2 beats the positive 0
    sel = select_groups("bottomk", [rewards], [emb], 2, prefs=[P1], require_beats=0.5)
    assert sel.indices[0].tolist() == [0, 3, 1]  # P1 with require_beats: group [0, 3, 1]
    assert sel.counts == {"require_beats_prompts": 1, "require_beats_removed": 1}
    assert select_groups("optselect", [rewards], [emb], 3, prefs=[P1], require_beats=0.5).indices[0].tolist() \
        == [0, 3, 1]  # k = 3 asks for more than is left: a short group without 2
    short = select_groups("bottomk", [rewards], [emb], 2, prefs=[P1], require_beats=0.85)
    assert short.indices[0].tolist() == [0, 3] and short.short[0]  # only 3 is beaten with p >= 0.85 (sigma(2) = 0.88)
    scalar = select_groups("bottomk", [np.array([2.0, 1.0, -0.5])], None, 2, require_beats=0.5)
    assert scalar.indices[0].tolist() == [0, 2, 1]  # S = r_i - r_j: the positive beats everyone


def test_min_margin_drops_prompts_with_a_small_best_worst_gap_d1():
    rewards = aggregate(P1, "win_rate")
    gap = rewards[0] - rewards[3]
    assert gap == pytest.approx(0.536568, abs=1e-6)
    kept = select_groups("best_worst", [rewards, rewards], None, 1, min_margin=0.5)
    assert [i.tolist() for i in kept.indices] == [[0, 3], [0, 3]] and kept.counts == {"min_margin_dropped": 0}
    dropped = select_groups("best_worst", [rewards, np.array([1.0, 0.0])], None, 1, min_margin=0.6)
    assert [i.tolist() for i in dropped.indices] == [[], [0, 1]] and dropped.counts == {"min_margin_dropped": 1}


def test_collator_carries_the_selected_groups_pref_logits(tiny_tokenizer):
    rec = PoolRecord(prompt="p", responses=["w", "x", "y", "z"], rewards=aggregate(P1, "win_rate").tolist(),
                     id="a", selected=[0, 3, 1], extra={"pref_logits": P1})
    scalar = PoolRecord(prompt="q", responses=["u", "v"], rewards=[1.0, -0.5], id="b", selected=[0, 1])
    batch = GroupCollator(tiny_tokenizer.pad_token_id)(build_groups(tiny_tokenizer, [rec, scalar]))
    assert batch["pref_logits"].shape == (2, 3, 3)
    np.testing.assert_array_equal(batch["pref_logits"][0].numpy(), P1[np.ix_([0, 3, 1], [0, 3, 1])])
    expected = torch.tensor([[0, 1.5, 0], [-1.5, 0, 0], [0, 0, 0]], dtype=torch.float64)
    assert torch.equal(batch["pref_logits"][1], expected)  # r_i - r_j, the empty slot 0


def test_evaluation_with_a_pairwise_scorer_is_the_win_probability_against_the_baseline():
    scorer = CallablePairwise(lambda p, rs: np.subtract.outer([len(r) for r in rs], [len(r) for r in rs]) * 1.0)
    rows = [{"prompt": "p", "responses": ["aaa", "a"]}]
    base = [{"prompt": "p", "responses": ["aa", "aa"], "rewards": [0.5, 0.5], "n_tokens": [1, 1], "finished": [1, 1]}]
    vs = pairwise_vs_base(scorer, rows, base)
    sig = 1 / (1 + np.exp(-1.0))
    np.testing.assert_allclose(vs, [[sig, 1 - sig]])
    rows[0].update(rewards=vs[0].tolist(), n_tokens=[1, 1], finished=[True, True])
    m = summarize(rows, base, 100, 0, pairwise=True)
    assert m["win_rate"] == pytest.approx(0.5) and m["baseline_mean_reward"] == 0.5


def test_gold_column_is_read_and_appended_as_an_off_policy_response(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "prompt": "hi", "gold": "Hello!"}\n{"id": "b", "prompt": "yo", "gold": ""}\n')
    with pytest.raises(PoolError, match=r"p.jsonl: row 2: field 'gold': must be a non-empty string"):
        read_prompt_rows(path, "gold")
    path.write_text('{"id": "a", "prompt": "hi", "gold": "Hello!"}\n')
    assert read_prompt_rows(path, "gold") == [{"id": "a", "prompt": "hi", "gold": "Hello!"}]
    with pytest.raises(PoolError, match="field 'answer': missing"):
        read_prompt_rows(path, "answer")
    row = add_gold({"id": "a", "responses": ["x", "y"], "finished": [False, True], "n_tokens": [5, 3]}, "Hello!", 4)
    assert row["responses"] == ["x", "y", "Hello!"] and row["finished"] == [False, True, True]
    assert row["n_tokens"] == [5, 3, 4] and row["origin"] == ["policy", "policy", "gold"]


@pytest.mark.parametrize("override, message", [
    ("score.aggregate=median", "config 'score.aggregate': must be one of auto, reward, mean_logit"),
    (f"score.reward=pairwise:{JUDGES}:cyclic score.aggregate=reward", "has no scalar reward"),
    ("score.reward=pairwise:nomodule", "config 'score.reward': reward 'pairwise:nomodule' is not of the form"),
    ("select.require_beats=1.5", r"config 'select.require_beats': must be in \[0, 1\], got 1.5"),
    ("select.min_margin=-0.1", "config 'select.min_margin': must be >= 0, got -0.1"),
    ("data.gold_field=prompt", "config 'data.gold_field': 'prompt' is not a response column"),
])
def test_config_refuses_bad_preference_options_in_one_line(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=override.split())


def test_config_accepts_the_preference_options():
    c = load_config(overrides=[f"score.reward=pairwise:{JUDGES}:cyclic", "select.require_beats=0.5",
                               "select.min_margin=0.1", "score.aggregate=mean_logit", "data.gold_field=gold"])
    assert (c.select.require_beats, c.select.min_margin, c.score.aggregate) == (0.5, 0.1, "mean_logit")


def test_unset_preference_options_leave_the_stage_keys_of_existing_runs_alone():
    from ampo.config import config_key
    from ampo.stage_keys import score_key, select_key

    c = load_config()
    select = {k: v for k, v in dataclasses.asdict(c.select).items() if k not in ("require_beats", "min_margin")}
    assert score_key("gen", "builtin", "reward") == config_key("score", "gen", "builtin")
    assert select_key("sc", "emb", dataclasses.asdict(c.select), 0) == config_key("select", "sc", "emb", select, 0)
    assert score_key("gen", "builtin", "win_rate") == config_key("score", "gen", "builtin", "win_rate")
    c.select.min_margin = 0.1
    assert (select_key("sc", "emb", dataclasses.asdict(c.select), 0)
            == config_key("select", "sc", "emb", {**select, "min_margin": 0.1}, 0))


def test_score_cli_with_a_judge_writes_the_matrix_and_names_a_bad_one(tmp_path, capsys):
    from ampo.cli import main

    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"id": "a", "prompt": "p", "responses": ["a", "a b", "a b c"]}\n')
    out = tmp_path / "scored.jsonl"
    assert main(["score", "--input", str(pool), "--output", str(out), "--reward", f"pairwise:{JUDGES}:cyclic",
                 "--aggregate", "copeland"]) == 0
    row = json.loads(out.read_text())
    np.testing.assert_allclose(row["rewards"], [0, 0, 0])  # a perfect 3-cycle: one win, one loss each
    assert np.array(row["pref_logits"]).shape == (3, 3)
    bad = tmp_path / "bad.jsonl"
    assert main(["score", "--input", str(pool), "--output", str(bad), "--reward", f"pairwise:{JUDGES}:wrong_shape"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and r"returned shape (3, 4) for 3 responses" in err and not bad.exists()


def test_ampo_train_reads_a_scored_pools_matrix_and_refuses_the_run_only_filters(tiny_policy, tmp_path, capsys):
    from ampo.cli import main

    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"id": "a", "prompt": "p", "responses": ["a", "a b", "a b c", "a b c d"]}\n'
                    '{"id": "b", "prompt": "q", "responses": ["x y", "x", "x y z w v", "x y z"]}\n')
    scored = tmp_path / "scored.jsonl"
    assert main(["-q", "score", "--input", str(pool), "--output", str(scored), "--reward", f"pairwise:{JUDGES}:cyclic"]) == 0
    out = tmp_path / "out"
    common = ["-q", "train", "--input", str(scored), "--policy", str(tiny_policy), "--no-lora", "--loss", "mmpo",
              "--strategy", "bottomk", "--k", "2"]
    assert main([*common, "--output", str(out), "train.hparams.target=pref", "train.save_steps=1000"]) == 0
    (step,) = [s for s in json.loads((out / "train_log.json").read_text()) if "soft_target" in s]
    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    groups = [r["selected"] for r in pq.read_table(out / "selection.parquet").to_pylist()]
    judge = np.mean([np.mean(1 / (1 + np.exp(-np.array(r["pref_logits"])[g[0], g[1:]]))) for r, g in zip(rows, groups)])
    assert step["soft_target"] == pytest.approx(judge, abs=1e-5)  # the judge's matrix, not r_i - r_j (> 0.5)
    assert main([*common, "--output", str(tmp_path / "refused"), "select.min_margin=0.1"]) == 2
    assert "config 'select.min_margin' runs in `ampo run` only" in capsys.readouterr().err
