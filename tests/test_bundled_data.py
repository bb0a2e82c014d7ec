"""Validity of the data that ships with ampo: the demo prompts and the example pools."""

import json
import re
from pathlib import Path

import pytest

import ampo

PROMPTS = Path(ampo.__file__).parent / "recipes" / "prompts.jsonl"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MAX_WORDS = 25


def read_jsonl(path: Path) -> list[dict]:
    """Parse a JSON-lines file, failing on blank lines or non-object rows."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        row = json.loads(line)
        assert isinstance(row, dict), f"{path.name}:{number} is not a JSON object"
        rows.append(row)
    return rows


def normalise(text: str) -> str:
    """Lower-case and collapse whitespace, so trivial variants count as duplicates."""
    return re.sub(r"\s+", " ", text).strip().lower()


def plain_prompt(prompt: str | list[dict]) -> str:
    """The prompt text: the string itself or the last user message of a chat list."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    assert users, "chat prompt has no user message"
    return users[-1]


def test_demo_prompts_are_320_distinct_short_prompts():
    rows = read_jsonl(PROMPTS)
    assert len(rows) == 320
    assert all(set(row) == {"id", "prompt"} for row in rows)
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"p\d{4}", i) for i in ids)
    prompts = [row["prompt"] for row in rows]
    assert all(isinstance(p, str) and p.strip() for p in prompts)
    assert len({normalise(p) for p in prompts}) == len(prompts)
    too_long = [p for p in prompts if len(p.split()) > MAX_WORDS]
    assert not too_long, f"prompts over {MAX_WORDS} words: {too_long}"


def test_tiny_pool_has_six_prompts_with_six_scored_responses():
    rows = read_jsonl(EXAMPLES / "tiny_pool.jsonl")
    assert len(rows) == 6
    assert any(isinstance(row["prompt"], list) for row in rows), "needs one chat-form prompt"
    for row in rows:
        assert set(row) == {"id", "prompt", "responses", "rewards"}
        assert plain_prompt(row["prompt"]).strip()
        assert len(row["responses"]) == len(row["rewards"]) == 6
        assert all(isinstance(r, str) for r in row["responses"])
        assert all(-1.0 <= w <= 1.0 for w in row["rewards"])


def test_tiny_pool_rewards_rank_degenerate_responses_low():
    """Hand rewards follow the demo reward's spirit: empty or one-word-spam is never best."""
    for row in read_jsonl(EXAMPLES / "tiny_pool.jsonl"):
        best = max(row["rewards"])
        for text, reward in zip(row["responses"], row["rewards"]):
            words = text.lower().replace(".", " ").split()
            if not words or len(set(words)) == 1:
                assert reward < 0 < best, (row["id"], text)


def test_tiny_prompts_match_tiny_pool():
    pool = read_jsonl(EXAMPLES / "tiny_pool.jsonl")
    prompts = read_jsonl(EXAMPLES / "tiny_prompts.jsonl")
    assert [{"id": r["id"], "prompt": r["prompt"]} for r in pool] == prompts


@pytest.mark.parametrize(
    ("name", "keys", "lists"),
    [
        ("ultrafeedback_style.jsonl", {"prompt", "completions"}, []),
        ("trl_pairs.jsonl", {"prompt", "chosen", "rejected"}, []),
        (
            "multi_response.jsonl",
            {"prompt", "all_generated_responses", "all_reward_scores"},
            ["all_generated_responses", "all_reward_scores"],
        ),
    ],
)
def test_external_layout_examples(name: str, keys: set[str], lists: list[str]):
    rows = read_jsonl(EXAMPLES / name)
    assert len(rows) == 3
    for row in rows:
        assert set(row) == keys
        assert isinstance(row["prompt"], str) and row["prompt"].strip()
        assert len({len(row[k]) for k in lists}) <= 1, f"{name}: list lengths differ"
        if name == "ultrafeedback_style.jsonl":
            assert len(row["completions"]) >= 2
            for completion in row["completions"]:
                assert set(completion) == {"response", "overall_score"}
                assert isinstance(completion["overall_score"], (int, float))
        if name == "trl_pairs.jsonl":
            assert row["chosen"] != row["rejected"]
