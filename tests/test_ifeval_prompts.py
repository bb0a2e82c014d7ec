"""Training prompts for the ifeval reward: seeded, reproducible, conflict-free, checkable from
their metadata, and never a benchmark prompt."""

import pytest

from ampo.cli import main
from ampo.data import read_prompt_rows
from ampo.ifeval.bench import load_items
from ampo.ifeval.prompts import NEEDS_PROMPT_TEXT, build_prompts, conflict_table
from ampo.ifeval.offline import registry
from ampo.ifeval.scoring import build_checker
from ampo.recipes import BUILTIN_PROMPTS, BUILTIN_PROMPT_SETS

SHIPPED = BUILTIN_PROMPT_SETS["builtin-ifeval"]


@pytest.fixture(scope="module")
def shipped():
    return read_prompt_rows(SHIPPED)


def test_seeded_and_reproducible():
    base = read_prompt_rows(BUILTIN_PROMPTS)[:20]
    assert build_prompts(base, 50, seed=3) == build_prompts(base, 50, seed=3)
    assert build_prompts(base, 50, seed=3) != build_prompts(base, 50, seed=4)


def test_the_shipped_file_is_what_the_command_makes(tmp_path, shipped):
    out = tmp_path / "p.jsonl"
    assert main(["make-prompts", "--task", "ifeval", "--output", str(out), "--n", str(len(shipped)),
                 "--seed", "0"]) == 0
    assert out.read_bytes() == SHIPPED.read_bytes()


def test_constraints_are_valid_and_do_not_conflict(shipped):
    conflicts = conflict_table()
    checks = registry("ifeval")
    for row in shipped:
        ids, kwargs = row["meta"]["instruction_id_list"], row["meta"]["kwargs"]
        assert 1 <= len(ids) <= 3 and len(ids) == len(set(ids)) == len(kwargs)
        assert not NEEDS_PROMPT_TEXT & set(ids)
        assert not any(b in conflicts[a] for a in ids for b in ids if a != b), row["id"]
        for i, kw in zip(ids, kwargs):
            build_checker(checks, i, kw, row["prompt"])  # the metadata rebuilds each check
            assert kw.get("nth_paragraph", 0) <= kw.get("num_paragraphs", 99)
    base_ids = {r["meta"]["base_id"] for r in shipped}
    assert len(base_ids) == len(read_prompt_rows(BUILTIN_PROMPTS))  # every base prompt is used


def test_no_training_prompt_is_or_contains_a_benchmark_prompt(shipped):
    bench = [it.prompt.strip() for name in ("ifeval", "ifbench") for it in load_items(name)]
    for row in shipped:
        text = row["prompt"]
        assert not any(b == text or b in text for b in bench), row["id"]
