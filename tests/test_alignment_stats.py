"""benchmarks/alignment_stats.py on synthetic results and pools, against hand-derived values."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import alignment_stats as st  # noqa: E402


def rows(flags_per_prompt, mode="strict"):
    return [{"key": 1000 + i, f"follow_instruction_list_{mode}": f} for i, f in enumerate(flags_per_prompt)]


def counts(flags_per_prompt):
    return st.prompt_counts(rows(flags_per_prompt))


def test_prompt_counts_drop_unscored_like_the_official_aggregate():
    got = st.prompt_counts(rows([[True, False], [None], [True, None]]))
    assert got == {1000: (0.0, 1.0, 2.0), 1002: (1.0, 1.0, 1.0)}
    # prompt level 1/2, instruction level 2/3
    assert st.average(np.array(list(got.values()))) == pytest.approx((0.5 + 2 / 3) / 2)


def test_paired_difference_of_a_dominating_arm_is_never_negative():
    a = counts([[True], [True], [False], [False]])  # average (0.5 + 0.5) / 2 = 0.5
    b = counts([[True], [False], [False], [False]])  # 0.25
    d = st.paired_difference([a], [b], n_boot=500, seed=1)
    assert d["per_seed"] == [pytest.approx(0.25)] and d["mean"] == pytest.approx(0.25)
    lo, hi = d["per_seed_ci"][0]
    assert 0.0 <= lo <= 0.25 <= hi <= 1.0  # paired: a >= b on every prompt, so every resample too
    assert d["signs"] == {"positive": 1, "negative": 0, "zero": 0} and d["n_prompts"] == 4


def test_paired_difference_identical_arms_and_several_seeds():
    a = counts([[True, False], [True], [False, False, True]])
    d = st.paired_difference([a, a], [a, a], n_boot=200)
    assert d["per_seed"] == [0.0, 0.0] and d["per_seed_ci"] == [[0.0, 0.0], [0.0, 0.0]]
    assert d["signs"]["zero"] == 2
    b = counts([[False, False], [True], [False, False, True]])  # a is better on prompt 0 only
    d = st.paired_difference([a, b], [b, a], n_boot=300)  # +x in seed 0, -x in seed 1
    assert d["per_seed"][0] == pytest.approx(-d["per_seed"][1]) and d["mean"] == pytest.approx(0.0)
    assert d["signs"] == {"positive": 1, "negative": 1, "zero": 0}


def test_paired_difference_refuses_mismatched_inputs():
    a = counts([[True], [False]])
    with pytest.raises(ValueError, match="one pair of results per seed"):
        st.paired_difference([a], [a, a])
    with pytest.raises(ValueError, match="different prompts"):
        st.paired_difference([a, counts([[True]])], [a, counts([[True]])])


def test_over_seeds_and_sign_count():
    mean, sd = st.over_seeds([0.2, 0.4])
    assert mean == pytest.approx(0.3) and sd == pytest.approx(np.sqrt(0.02))
    assert st.over_seeds([0.5]) == (0.5, None)
    assert st.sign_count([0.1, -0.2, 0.0, 0.3]) == {"positive": 2, "negative": 1, "zero": 1}


def test_failure_modes_and_distinct_count():
    modes = st.failure_modes([[True, True], [False, True], [False, True], [False, False]], ["a", "b"])
    assert modes == [frozenset(), {"a"}, {"a"}, {"a", "b"}]
    assert st.distinct_failures(modes) == 2  # {a} and {a, b}; all-followed is not a failure


def test_nn_agreement_separated_crossed_and_degenerate():
    e = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert st.nn_agreement(e, ["x", "x", "y", "y"]) == pytest.approx((1.0, 1 / 3))
    assert st.nn_agreement(e, ["x", "y", "x", "y"]) == pytest.approx((0.0, 1 / 3))
    assert st.nn_agreement(e, ["x"] * 4) is None


def test_modes_covered_and_jaccard():
    modes = [frozenset(), frozenset({"x"}), frozenset({"x"}), frozenset({"y"})]
    assert st.modes_covered(modes, 0, [1, 2]) == 0.5
    assert st.modes_covered(modes, 0, [1, 3]) == 1.0
    assert st.modes_covered([frozenset()] * 3, 0, [1]) is None
    assert st.jaccard([1, 2], [2, 3]) == pytest.approx(1 / 3) and st.jaccard([], []) == 1.0


def test_pool_statistics_and_tables():
    e = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    modes = [frozenset(), frozenset({"x"}), frozenset({"y"}), frozenset({"y"})]
    pools = [{"rewards": [1.0, 0.5, 0.0, 0.0], "modes": modes, "minilm": e, "policy": e[::-1]}]
    selections = {"bottomk": [[0, 2, 3]], "coreset": [[0, 1, 2]]}
    stats = st.pool_statistics(pools, selections, ["minilm", "policy"])
    assert stats["distinct_failure_modes_mean"] == 2 and stats["pools_with_2plus_failure_modes"] == 1.0
    assert stats["selectors"]["bottomk"]["modes_covered"] == 0.5
    assert stats["selectors"]["coreset"]["modes_covered"] == 1.0
    assert stats["selectors"]["coreset"]["negative_reward_mean"] == pytest.approx(0.25)
    assert stats["jaccard"]["bottomk/coreset"] == pytest.approx(1 / 3)
    assert stats["minilm_nn_same_mode"] == pytest.approx(0.5)  # 0<->1 differ, 2<->3 agree
    table = st.pool_table({"seed0": stats})
    assert "| distinct failure modes per pool" in table and "Jaccard overlap of negatives, bottomk/coreset" in table
    # a seed whose policy-embedding and coreset arms have not run yet: its cells show –, nothing breaks
    partial = st.pool_statistics(pools, {"bottomk": [[0, 2, 3]]}, ["minilm"])
    table = st.pool_table({"seed0": stats, "seed1": partial})
    assert "| policy embedding: nearest neighbour has the same failure mode | 0.500 | – |" in table
    assert "| coreset: mean reward of its negatives | 0.250 | – |" in table
    metrics = {f: 0.3 for f in st.FIGURES}
    arms = st.arm_table({"dpo": [metrics, {**metrics, "avg_prompt_inst_strict_acc": 0.5}]}, metrics, "IFEval")
    assert "| dpo | 40.0 ± 14.1 |" in arms and "| initial policy | 30.0 |" in arms
    d = st.paired_difference([counts([[True]])], [counts([[False]])], n_boot=10)
    assert "| ampo | +100.0 [+100.0, +100.0] |" in st.difference_table({"ampo": d}, "random", "IFEval")
    contrast = st.contrast_table([{"arm": "ampo", "against": "random", "measures": "the loss", **d}], "IFEval")
    assert "| ampo − random | the loss | +100.0 [+100.0, +100.0] | +100.0 [+100.0, +100.0] | 1/0/0 |" in contrast


def test_answer_table():
    arm = [{"mean_new_tokens": 20.0, "finished_rate": 0.5}, {"mean_new_tokens": 30.0, "finished_rate": 0.25}]
    table = st.answer_table({"arm": arm}, {"mean_new_tokens": 12.0, "finished_rate": 0.75}, "ifeval")
    assert "| initial policy | 12.0 | 75.0 | – | 100 | 100 | – |" in table
    assert f"| arm | 25.0 ± {np.sqrt(50):.1f} | 37.5 ± {100 * np.sqrt(0.03125):.1f} | – | – | – | 2 |" in table
    moved = [{**m, "identical_to_initial": 0.5, "prefix_kept": 0.75, "short_answers": 0.1} for m in arm]
    table = st.answer_table({"arm": moved}, None, "ifeval")
    assert "| 10.0 ± 0.0 | 50.0 ± 0.0 | 75.0 ± 0.0 | 2 |" in table and "initial policy" not in table


def test_drift_from_the_initial_answers():
    initial = {1: "abcd", 2: "abcd", 3: "", 4: "xy"}
    answers = {1: "abcd", 2: "abzz", 3: "", 4: "q", 5: "an extra prompt is ignored"}
    d = st.drift(initial, answers)
    assert d["identical_to_initial"] == 0.5  # prompts 1 and 3
    assert d["prefix_kept"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert st.drift(initial, {**answers, 3: "now says something"})["prefix_kept"] == pytest.approx(2.5 / 4 - 1 / 4)
    assert st.drift({1: "abc"}, {1: "ab"})["prefix_kept"] == pytest.approx(2 / 3)  # cut short
    with pytest.raises(ValueError, match="lack 1"):
        st.drift(initial, {1: "a", 2: "b", 3: "c"})


def test_drift_correlation():
    initial = {st.FIGURES[0]: 0.2}
    arms = {"a": [{st.FIGURES[0]: 0.1, "identical_to_initial": 0.05},
                  {st.FIGURES[0]: 0.15, "identical_to_initial": 0.1}],
            "b": [{st.FIGURES[0]: 0.19, "identical_to_initial": 0.2}], "c": [{st.FIGURES[0]: 0.3}]}
    c = st.drift_correlation(arms, initial)
    assert c["points"] == 3 and c["spearman"] == pytest.approx(1.0)
    assert st.drift_correlation({"a": arms["a"]}, initial) is None


def test_looping_statistics_and_their_table():
    c = counts([[True, True], [False, True], [False]])  # keys 1000, 1001, 1002
    # "a b a b a": 2 distinct of 4 bigrams, half repeated: the repetition term's full weight
    answers = {1000: "a b a b a", 1001: "the cat sat on the mat", 1002: "a b c a b c", 1003: "unscored"}
    loops = st.looping_statistics(c, answers)
    assert loops["looping"] == 0.25
    assert loops["average_looping"] == pytest.approx(1.0)  # the loop follows both instructions
    assert loops["average_fluent"] == pytest.approx((0 + 1 / 3) / 2)
    assert st.looping_statistics(c, {**answers, 1000: "no loop"})["average_looping"] is None
    initial = {"looping": 0.1, "average_looping": 0.5, "average_fluent": 0.25}
    arm = [{**loops, "looping": 1 / 3}, {"looping": 0.0, "average_looping": None, "average_fluent": 0.5}]
    table = st.looping_table({"arm": arm}, initial, "ifeval")
    assert "| initial policy | 10.0 | 50.0 | 25.0 | – |" in table
    assert "| arm | 16.7 ± 23.6 | – | 33.3 ± 23.6 | 2 |" in table


def test_seed_table():
    f = st.FIGURES[0]
    arms = {"arm": [{f: 0.25, "seed": 0}, {f: 0.15, "seed": 2}]}
    table = st.seed_table(arms, {f: 0.2}, "ifeval", [0, 1, 2])
    assert "| ifeval: arm | seed 0 | seed 1 | seed 2 | mean ± sd |" in table
    assert "| initial policy | 20.0 | 20.0 | 20.0 | |" in table
    assert f"| arm | 25.0 (+5.0) | – | 15.0 (-5.0) | 20.0 ± {100 * np.sqrt(0.005):.1f} |" in table
    assert "| arm | 25.0 | – | 15.0 |" in st.seed_table(arms, None, "ifeval", [0, 1, 2])


def test_side_by_side_shows_the_first_prompts_where_the_scores_differ():
    prompts = {3: "third", 1: "first", 2: "second | piped"}
    answers = {"initial policy": {1: "a", 2: "b\nc", 3: "d"}, "arm": {1: "a2", 2: "x" * 10, 3: "d"}}
    counts = {"initial policy": {1: (1.0, 1.0, 1.0), 2: (0.0, 0.0, 1.0), 3: (0.0, 1.0, 2.0)},
              "arm": {1: (1.0, 1.0, 1.0), 2: (1.0, 1.0, 1.0), 3: (1.0, 2.0, 2.0)}}
    # prompt 1's answers differ but not their scores: not shown; prompts 2 and 3 in key order
    text = st.side_by_side(prompts, answers, counts, shown=3, width=20)
    assert "Prompt 1" not in text and text.index("Prompt 2: second \\| piped") < text.index("Prompt 3: third")
    assert "| initial policy | 0 of 1 | b ⏎ c |" in text and "| arm | 2 of 2 | d |" in text
    cut = st.side_by_side(prompts, answers, counts, shown=1, width=4)
    assert "Prompt 3" not in cut and "| arm | 1 of 1 | xxxx … |" in cut
    same = {name: {k: counts["arm"][k] for k in prompts} for name in answers}
    assert st.side_by_side(prompts, answers, same) == ""


def test_summary_table():
    f = st.FIGURES[0]
    diff = {"mean": -0.012, "mean_ci": [-0.033, 0.009], "signs": {"positive": 1, "negative": 2, "zero": 0}}
    benchmarks = {
        "ifeval": {"initial": {f: 0.223}, "arms": {"arm": [{f: 0.2}, {f: 0.22}, {f: 0.24}], "base": [{f: 0.25}]},
                   "differences": {"base": {"arm": diff}}},
        "ifbench": {"initial": {f: 0.107}, "arms": {"arm": [{f: 0.1}]}, "differences": {}},
    }
    table = st.summary_table(benchmarks, ["base"])
    assert "| arm | seeds | ifeval: average | ifeval: − base | ifbench: average | ifbench: − base |" in table
    assert "| initial policy | – | 22.3 |  | 10.7 |  |" in table
    assert "| arm | 3 | 22.0 ± 2.0 | -1.2 [-3.3, +0.9] 1/2/0 | 10.0 (1 seed) |  |" in table
    assert "| base | 1 | 25.0 (1 seed) |  | – |  |" in table


def test_arm_ranks_on_the_seeds_every_arm_finished():
    f = st.FIGURES[0]
    figures = {"a": [{f: 0.3, "seed": 0}, {f: 0.2, "seed": 1}, {f: 0.9, "seed": 2}],
               "b": [{f: 0.2, "seed": 0}, {f: 0.1, "seed": 1}],
               "c": [{f: 0.1, "seed": 0}, {f: 0.1, "seed": 1}]}
    r = st.arm_ranks(figures)
    assert r["seeds"] == [0, 1]  # seed 2 is left out: b and c have not finished it
    assert r["mean_rank"] == {"a": 1.0, "b": 2.25, "c": 2.75}  # seed 1: b and c tie for 2.5
    assert 0 < r["p_value"] < 1
    assert st.arm_ranks({k: v[:1] for k, v in figures.items()}) is None  # one common seed
    assert st.arm_ranks({"a": figures["a"], "b": figures["b"]}) is None  # two arms
    # an arm with one seed so far (a later addition) is left out instead of leaving one common seed
    r = st.arm_ranks({**figures, "d": [{f: 0.5, "seed": 2}]})
    assert r["seeds"] == [0, 1] and set(r["mean_rank"]) == {"a", "b", "c"}


def test_the_gaming_audit_counts_looping_and_filler_answers_among_the_passing():
    counts = {1: (1.0, 1.0, 1.0), 2: (1.0, 2.0, 2.0), 3: (0.0, 0.0, 1.0), 4: (1.0, 1.0, 1.0)}
    answers = {1: "ok", 2: "the cat sat on the mat " * 20, 3: "the cat sat on the mat " * 20,
               4: "A real answer with several distinct words in it."}
    assert st.gaming_statistics(counts, answers) == {"passing": 3, "passing_looping": 1, "passing_filler": 1,
                                                     "gaming_share": 2 / 3}
    answers[1] = "yes yes yes"  # looping and filler at once: one gaming answer, not two
    assert st.gaming_statistics(counts, answers) == {"passing": 3, "passing_looping": 2, "passing_filler": 1,
                                                     "gaming_share": 2 / 3}
    assert st.gaming_statistics({3: (0.0, 0.0, 1.0)}, answers)["gaming_share"] == 0.0  # none passes
    table = st.gaming_table({"arm": [{"passing": 3, "passing_looping": 2, "passing_filler": 1, "gaming_share": 2 / 3}]},
                            {"passing": 4, "passing_looping": 1, "passing_filler": 0, "gaming_share": 0.25}, "IFEval")
    assert "| initial policy | 4 | 1 | 0 | 25.0 | – |" in table
    assert "| arm | 3.0 (1 seed) | 2.0 (1 seed) | 1.0 (1 seed) | 66.7 (1 seed) | 1 |" in table


def test_a_short_answer_has_fewer_than_twenty_words():
    answers = {1: "P.S.", 2: " ".join(["word"] * 19), 3: " ".join(["word"] * 20), 4: ""}
    assert st.short_answers(answers) == 3 / 4 and st.short_answers({}) == 0.0
