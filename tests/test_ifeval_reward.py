"""The ifeval reward: what it pays, its options, and prompt metadata travelling from the prompt
file through pool files to the reward."""

import numpy as np
import pytest

from ampo.cli import main
from ampo.data import PoolRecord, read_pool, write_pool
from ampo.rewards.ifeval import IFEvalReward
from ampo.rewards import load_reward, score_records, score_texts

META = {"instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"], "kwargs": [{}, {}]}


def test_strict_fraction_of_instructions_followed():
    r = IFEvalReward()
    scores = r(["p"] * 3, ["all lowercase and no commas", "All Upper, with commas", "lowercase, with a comma"],
               metas=[META] * 3)
    assert scores.tolist() == [1.0, 0.0, 0.5]


def test_loose_and_degeneracy_options():
    r = load_reward("ifeval:loose=0.5,degeneracy=0.1")
    assert (r.loose, r.degeneracy) == (0.5, 0.1)
    meta = {"instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}
    # strict fails (the last line has capitals); loose passes without it
    assert r(["p"], ["all lowercase here\nThe End"], metas=[meta])[0] == pytest.approx(0.5)
    spam = " ".join(["the cat"] * 20)
    parts = r.breakdown("p", spam, meta)
    assert parts["repetition"] == 1.0 and parts["reward"] == pytest.approx(1 + 0.5 - 0.1)


@pytest.mark.parametrize("spec,needle", [("ifeval:strict=1", "options are"), ("ifeval:loose=x", "must be a number"),
                                         ("ifeval:loose=-1", ">= 0")])
def test_bad_specs_are_refused(spec, needle):
    with pytest.raises(ValueError, match=needle):
        load_reward(spec)


def test_a_prompt_without_meta_is_refused():
    with pytest.raises(ValueError, match="needs each prompt's 'meta'"):
        score_texts(IFEvalReward(), ["p"], ["r"], [None])


def test_prompt_free_rewards_are_called_as_before():
    calls = []
    fn = lambda prompts, responses: calls.append(len(responses)) or np.zeros(len(responses))
    assert score_texts(fn, ["p"], ["r"], [META]).tolist() == [0.0] and calls == [1]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_meta_travels_through_pool_files_to_the_reward(tmp_path, suffix):
    other = {"instruction_id_list": ["keywords:existence"], "kwargs": [{"keywords": ["cat"], "extra": None}]}
    pool = [PoolRecord(prompt="p1", responses=["there are no commas in this lowercase sentence", "there is a comma, in this lowercase sentence"],
                       id="a", meta=META),
            PoolRecord(prompt=[{"role": "user", "content": "p2"}], responses=["a cat", "a dog"], id="b", meta=other)]
    path = tmp_path / f"pool{suffix}"
    write_pool(path, pool)
    back, _ = read_pool(path)
    assert [r.meta for r in back] == [META, other]
    assert [row["rewards"] for row in score_records(IFEvalReward(), back)] == [[1.0, 0.5], [1.0, 0.0]]
    out = tmp_path / f"scored{suffix}"
    assert main(["-q", "score", "--input", str(path), "--output", str(out), "--reward", "ifeval"]) == 0
    assert [r.rewards for r in read_pool(out)[0]] == [[1.0, 0.5], [1.0, 0.0]]


def test_a_bad_meta_field_names_the_row(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"prompt": "p", "responses": ["r"], "meta": [1, 2]}\n')
    with pytest.raises(ValueError, match="row 1: field 'meta': must be a JSON object"):
        read_pool(path)


def test_an_unfinished_response_gets_the_non_stop_reward(tmp_path):
    """score.unfinished_reward: a response cut at the token limit gets that reward, whatever it
    satisfies (open-instruct's non-stop penalty); unset, it is scored like any other."""
    pool = [PoolRecord(prompt="p1", responses=["there are no commas in this lowercase sentence",
                                                "there is a comma, in this lowercase sentence",
                                                "there are no commas in this lowercase sentence either"], id="a",
                       meta=META, finished=[True, True, False])]
    assert score_records(IFEvalReward(), pool)[0]["rewards"] == [1.0, 0.5, 1.0]
    assert score_records(IFEvalReward(), pool, unfinished_reward=-0.5)[0]["rewards"] == [1.0, 0.5, -0.5]
    matrix = score_records(IFEvalReward(), pool, "win_rate", unfinished_reward=-0.5)[0]["pref_logits"]
    assert matrix[0][2] == 1.5  # the aggregates see the replaced reward
    path, out = tmp_path / "pool.jsonl", tmp_path / "scored.jsonl"
    write_pool(path, pool)
    assert main(["-q", "score", "--input", str(path), "--output", str(out), "--reward", "ifeval",
                 "--unfinished-reward", "0"]) == 0
    assert read_pool(out)[0][0].rewards == [1.0, 0.5, 0.0]
    pool[0].finished = None
    with pytest.raises(ValueError, match="prompt 'a': score.unfinished_reward needs each response's 'finished'"):
        score_records(IFEvalReward(), pool, unfinished_reward=0.0)


def test_unfinished_reward_is_keyed_only_when_set_and_refused_for_pairwise_scorers():
    from ampo.config import ConfigError, load_config
    from ampo.stage_keys import RunKeys

    base = ["out=/nonexistent", "score.reward=ifeval", "data.prompts=builtin-ifeval"]
    plain, penal = RunKeys(load_config(overrides=base)), RunKeys(load_config(overrides=[*base, "score.unfinished_reward=0"]))
    assert plain.generate(0) == penal.generate(0) and plain.score(0) != penal.score(0)
    with pytest.raises(ConfigError, match="score.unfinished_reward"):
        load_config(overrides=["out=/x", "score.reward=pairwise:tests.helpers:counting_pairs", "score.unfinished_reward=0"])
