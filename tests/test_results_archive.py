"""The committed results of the IFEval alignment benchmark (results/alignment_ifeval, written by
`bench_alignment.py --task ifeval --archive`) are whole and what they claim: every archived
evaluation has its four files, its answers and scores cover the same prompts, its metrics are the
average of its per-prompt scores, and the official checks, rerun on a sample of its answers, give
its scores. Skipped where no archive is committed."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import alignment_ifeval as ai  # noqa: E402
import alignment_stats as stats  # noqa: E402

ARCHIVE = Path(__file__).parents[1] / "results" / "alignment_ifeval"
EVALUATIONS = sorted(p.parent for p in ARCHIVE.glob("**/done.json")) if ARCHIVE.is_dir() else []
pytestmark = pytest.mark.skipif(not EVALUATIONS, reason="no committed archive")
SAMPLE = 12  # answers rescored per evaluation


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_archive_has_no_partial_copies_and_records_its_sizes():
    assert not list(ARCHIVE.glob("**/*.partial"))
    assert set(json.loads((ARCHIVE / "sizes.json").read_text())) >= {"n", "k", "train_prompts", "eval_tokens"}


@pytest.mark.parametrize("folder", EVALUATIONS, ids=lambda p: str(p.relative_to(ARCHIVE)))
def test_each_evaluation_is_whole_and_its_metrics_are_its_scores(folder):
    assert folder.name in ai.BENCHMARKS and all((folder / name).is_file() for name in ai.BENCH_FILES)
    rows, answers = read_rows(folder / "results.jsonl"), read_rows(folder / "responses.jsonl")
    assert [r["key"] for r in rows] == [a["key"] for a in answers]
    metrics = json.loads((folder / "metrics.json").read_text())
    counts = stats.prompt_counts(rows)
    assert len(counts) == metrics["n_prompts"]
    assert stats.average(np.array(list(counts.values()))) == pytest.approx(metrics["avg_prompt_inst_strict_acc"], abs=1e-12)


@pytest.mark.parametrize("folder", EVALUATIONS, ids=lambda p: str(p.relative_to(ARCHIVE)))
def test_the_official_checks_give_the_archived_scores(folder):
    from ampo.ifeval.bench import load_items
    from ampo.ifeval.evaluate import SKIP
    from ampo.ifeval.offline import registry
    from ampo.ifeval.scoring import score_item

    rows = {r["key"]: r for r in read_rows(folder / "results.jsonl")}
    answers = read_rows(folder / "responses.jsonl")
    items, checks = {item.key: item for item in load_items(folder.name)}, registry(folder.name)
    for a in answers[:: max(1, len(answers) // SAMPLE)][:SAMPLE]:
        r = score_item(checks, items[a["key"]], a["response"], SKIP[folder.name])
        assert r.strict == rows[r.key]["follow_instruction_list_strict"], r.key
        assert r.loose == rows[r.key]["follow_instruction_list_loose"], r.key
