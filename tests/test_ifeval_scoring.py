"""IFEval scoring: each instruction type on hand-written responses (followed / not followed),
strict vs loose, the aggregate metrics and their bootstrap interval, against if-verifiable's own
loop on benchmark prompts."""

import numpy as np
import pytest

from ampo.ifeval.bench import load_items
from ampo.ifeval.offline import registry
from ampo.ifeval.scoring import PromptResult, aggregate, follow_instructions, loose_variants

LOREM = "The garden was quiet in the morning and the birds sang softly over the old stone wall"

# (instruction id, kwargs, a response that follows it, one that does not)
CASES = [
    ("keywords:existence", {"keywords": ["garden", "birds"]}, LOREM, "Nothing relevant here."),
    ("keywords:frequency", {"keyword": "tea", "frequency": 3, "relation": "at least"},
     "Tea first. Then tea again. Always tea.", "Tea once."),
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "A good day.", "A bad day."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"},
     "Zebras zigzag.", "No such letter."),
    ("language:response_language", {"language": "en"},
     "This answer is written entirely in the English language, as requested by the user.",
     "Esta respuesta está escrita completamente en español, como pidió el usuario."),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"},
     "One sentence only.", "One. Two. Three."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2},
     "First part.\n***\nSecond part.", "Only one part."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "Very short.", LOREM),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "First we wait.\n\nThen we go.", "First we wait.\n\nAfter that we go."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address].", "Dear you."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hello.\nP.S. See you.", "Hello."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", "* one"),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Perhaps."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and *two*", "*one* only"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nfirst\nSection 2\nsecond", "Section 1\nfirst"),
    ("detectable_format:json_format", {}, '{"a": 1}', "a: 1"),
    ("detectable_format:title", {}, "<<My Title>>\nText.", "My Title\nText."),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", "Just one answer."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "Say hi. Hi!", "Hi!"),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?", "Done."),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "THIS is VERY important.", "This is important."),
    ("change_case:english_capital", {}, "THIS IS ALL IN CAPITAL LETTERS AND IN ENGLISH.",
     "This is not all in capitals."),
    ("change_case:english_lowercase", {}, "this is all in lowercase letters and in english.",
     "This is Not all lowercase."),
    ("punctuation:no_comma", {}, "No commas here.", "Commas, here."),
    ("startend:quotation", {}, '"Wrapped in quotes."', "Not wrapped."),
]


def test_every_ifeval_instruction_type_has_a_case():
    assert {c[0] for c in CASES} == set(registry("ifeval"))


@pytest.mark.parametrize("instruction_id,kwargs,good,bad", CASES, ids=[c[0] for c in CASES])
def test_followed_and_not_followed(instruction_id, kwargs, good, bad):
    checks = registry("ifeval")
    assert follow_instructions(checks, [instruction_id], [kwargs], "Say hi.", good) == ([True], [True])
    strict, loose = follow_instructions(checks, [instruction_id], [kwargs], "Say hi.", bad)
    assert strict == [False]


def test_loose_forgives_a_first_line_and_asterisks_strict_does_not():
    checks = registry("ifeval")
    preface = "Sure, here is the JSON:\n" + '{"a": 1}'
    assert follow_instructions(checks, ["detectable_format:json_format"], [{}], "", preface) == ([False], [True])
    starred = '**"Quoted answer."**'
    assert follow_instructions(checks, ["startend:quotation"], [{}], "", starred) == ([False], [True])
    trailer = "all lowercase text here.\nHope This Helps!"
    assert follow_instructions(checks, ["change_case:english_lowercase"], [{}], "", trailer) == ([False], [True])


def test_loose_variants_are_the_official_eight():
    v = loose_variants("*a*\nb\n*c*")
    assert v == ["*a*\nb\n*c*", "a\nb\nc", "b\n*c*", "*a*\nb", "b", "b\nc", "a\nb", "b"]


def test_empty_response_follows_nothing():
    checks = registry("ifeval")
    ids = ["punctuation:no_comma", "keywords:forbidden_words"]
    assert follow_instructions(checks, ids, [{}, {"forbidden_words": ["x"]}], "", "  \n ") == (
        [False, False], [False, False])


def test_skipped_types_are_none_and_count_nowhere():
    results = [PromptResult("a", ("t1", "t2"), [True, None], [True, None]),
               PromptResult("b", ("t2",), [None], [None]),
               PromptResult("c", ("t1", "t1"), [True, False], [True, True])]
    m = aggregate(results, n_boot=50)
    assert m["n_prompts"] == 2 and m["n_instructions"] == 3
    assert m["prompt_level_strict_acc"] == 0.5 and m["inst_level_strict_acc"] == pytest.approx(2 / 3)
    assert m["prompt_level_loose_acc"] == 1.0 and m["unscored_instructions"] == {"t2": 2}


def test_aggregate_matches_hand_computed_numbers():
    # the worked example of the IFEval metric definitions: 3 prompts, 7 instructions
    results = [PromptResult(1, ("a", "b"), [True, True], [True, True]),
               PromptResult(2, ("a", "b", "c", "d"), [True, False, True, True], [True, False, True, True]),
               PromptResult(3, ("c",), [False], [True])]
    m = aggregate(results, n_boot=200, seed=1)
    assert m["prompt_level_strict_acc"] == pytest.approx(1 / 3)
    assert m["prompt_level_loose_acc"] == pytest.approx(2 / 3)
    assert m["inst_level_strict_acc"] == pytest.approx(5 / 7)
    assert m["inst_level_loose_acc"] == pytest.approx(6 / 7)
    assert m["avg_prompt_inst_strict_acc"] == pytest.approx((1 / 3 + 5 / 7) / 2)
    assert m["per_instruction_type"]["c"] == {"n": 2, "strict_acc": 0.5, "loose_acc": 1.0}
    lo, hi = m["avg_prompt_inst_strict_acc_ci"]
    assert lo <= m["avg_prompt_inst_strict_acc"] <= hi
    assert aggregate(results, n_boot=200, seed=1) == m  # seeded


def test_bootstrap_interval_narrows_with_more_prompts():
    rng = np.random.default_rng(0)
    make = lambda n: [PromptResult(i, ("a",), [bool(f)], [bool(f)]) for i, f in enumerate(rng.random(n) < 0.3)]
    width = lambda m: m["avg_prompt_inst_strict_acc_ci"][1] - m["avg_prompt_inst_strict_acc_ci"][0]
    assert width(aggregate(make(800))) < width(aggregate(make(50)))


def test_invalid_letter_argument_gets_the_same_score_every_time():
    # keys 1122 and 1129 ask for the letter '#' / '!': the official checker draws a random letter
    checks = registry("ifeval")
    args = {"letter": "#", "let_frequency": 4, "let_relation": "at least"}
    text = "aaaa bbbb cccc dddd eeee ffff gggg hhhh iiii jjjj kkkk llll mmmm"
    first = follow_instructions(checks, ["keywords:letter_frequency"], [args], "", text)
    assert all(follow_instructions(checks, ["keywords:letter_frequency"], [args], "", text) == first for _ in range(5))


def test_same_answers_as_if_verifiable_on_the_benchmark():
    from if_verifiable.common import evaluate_instructions

    checks = registry("ifeval")
    items = [it for it in load_items("ifeval")[:120] if it.key not in (1122, 1129)]
    for it in items:
        response = "**Title**\n" + it.prompt.lower() + "\nP.S. done"
        ref, _ = evaluate_instructions(response, list(it.instruction_id_list), list(it.kwargs), it.prompt, checks)
        strict, loose = follow_instructions(checks, it.instruction_id_list, it.kwargs, it.prompt, response)
        assert strict == [r.strict_pass for r in ref] and loose == [r.loose_pass for r in ref], it.key


def test_nltk_checks_are_the_ones_that_tokenise_with_nltk():
    """`NLTK_CHECKS` (capped on huge answers) is exactly the set of instruction types whose checks
    run NLTK's time-limited matches: every IFEval and IFBench checker is run with them recorded
    (IFBench's two types that need NLTK data no package ships cannot run, and are NLTK checks)."""
    from nltk import redos

    from ampo.ifeval.evaluate import SKIP
    from ampo.ifeval.scoring import NLTK_CHECKS, build_checker

    calls = []
    resolve = redos.TimedPattern._resolve
    text = "\n\n".join(["The Garden was quiet. Mr. Smith sang softly, e.g. over the wall! Why not? * a point\n"] * 30)
    found = set()
    for bench in ("ifeval", "ifbench"):
        checks, uses = registry(bench), {}
        for item in load_items(bench):
            for instruction_id, kwargs in zip(item.instruction_id_list, item.kwargs):
                uses.setdefault(instruction_id, []).append((kwargs, item.prompt))
        for instruction_id, cases in uses.items():
            for kwargs, prompt in cases[:3] if instruction_id not in SKIP[bench] else []:
                checker = build_checker(checks, instruction_id, kwargs, prompt)
                calls.clear()
                redos.TimedPattern._resolve = lambda self, timeout: calls.append(1) or resolve(self, timeout)
                try:
                    checker.check_following(text)
                finally:
                    redos.TimedPattern._resolve = resolve
                if calls:
                    found.add(instruction_id)
    assert found == NLTK_CHECKS - SKIP["ifbench"] and SKIP["ifbench"] <= NLTK_CHECKS


def test_a_huge_answer_loses_only_its_own_nltk_checks(tmp_path):
    """A 10 MB answer to a sentence-count prompt once lost the whole evaluation (NLTK gave up
    after 5 s with an error naming nothing): now its NLTK check is scored "not followed" without
    running, the prompt is listed in metrics.json, and every other answer is scored (issue 29)."""
    import json

    from ampo.cli import main
    from ampo.ifeval.scoring import MAX_CHECKED_CHARS

    huge = "A sentence. " * 900_000  # 10.8 MB; key 179 asks for at least 50 sentences
    assert len(huge) > MAX_CHECKED_CHARS
    rows = [{"key": 179, "response": huge}, {"key": 1268, "response": "One sentence. Two sentences."},
            {"key": 1174, "response": "o " * 50_001 + "*a* *b*"}]  # letter count, sentences, highlights
    (tmp_path / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["-q", "evaluate", "--benchmark", "ifeval", "--responses", str(tmp_path / "responses.jsonl"),
                 "--output", str(tmp_path / "out"), "--bootstrap", "10"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["too_long_to_check"]["keys"] == [1174, 179]  # in benchmark order
    assert metrics["too_long_to_check"]["max_chars"] == MAX_CHECKED_CHARS
    results = {r["key"]: r for r in map(json.loads, (tmp_path / "out" / "results.jsonl").read_text().splitlines())}
    assert results[179]["follow_instruction_list_strict"] == results[179]["follow_instruction_list_loose"] == [False]
    assert results[1268]["follow_instruction_list_strict"] == [True]
    assert results[1174]["follow_instruction_list_strict"] == [False, False, True]  # only the middle one unchecked


def test_checks_do_not_depend_on_how_busy_the_machine_is(monkeypatch):
    """NLTK stops a match after `redos.DEFAULT_TIMEOUT` seconds of wall-clock time; a machine busy
    enough to make every match that slow (here: a limit of a microsecond) changes no score."""
    from nltk import redos

    checks = registry("ifeval")
    text = "One. Two. Three. " * 3000  # 9000 sentences, 51,000 characters
    kwargs = [{"num_sentences": 9000, "relation": "at least"}, {"num_words": 9001, "relation": "less than"}]
    ids = ["length_constraints:number_sentences", "length_constraints:number_words"]
    expected = follow_instructions(checks, ids, kwargs, "", text)
    monkeypatch.setattr(redos, "DEFAULT_TIMEOUT", 1e-6)
    assert follow_instructions(checks, ids, kwargs, "", text) == expected == ([True, True], [True, True])
    assert redos.DEFAULT_TIMEOUT == 1e-6  # the limit is lifted only while the checks run
