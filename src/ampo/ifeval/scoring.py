"""Scoring as the official IFEval code does: strict and loose checks per instruction, then
prompt-level and instruction-level accuracy, per-instruction-type accuracy, and a bootstrap
interval over prompts for the average of prompt- and instruction-level accuracy.

Strict: the checker accepts the response as it is. Loose: the checker accepts any of 8 variants
(the response; without its first line, last line, or both; each of these also without `*`).
An empty (whitespace-only) response or variant never passes. Instruction types in `skip` are not
checked: their entry is None and they count in no accuracy.

Two deliberate differences, both so that the same response always gets the same score:

- a checker whose arguments are incomplete or invalid draws the missing ones at random in the
  official code (IFEval keys 1122 and 1129 ask for the "letter" '#' and '!', so the
  letter-frequency checker picks a random letter on every run). ampo seeds that draw from the
  instruction and its arguments.
- the checks that tokenise with NLTK (`NLTK_CHECKS`: sentence and word counts and positions) take
  seconds per megabyte, and NLTK stops each of its matches after 5 s of wall-clock time, so on a
  very long answer the official code passes, fails or raises depending on how busy the machine is
  (and one raise loses the whole evaluation). ampo runs them without that limit, and scores them
  "not followed" without running them on an answer longer than `MAX_CHECKED_CHARS` characters
  (no benchmark budget comes near it); `aggregate` lists those prompts under `too_long_to_check`.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from .bench import Item
from .offline import no_wall_clock_limit

MODEL_CARD_METRIC = "avg_prompt_inst_strict_acc"

# The instruction types whose checks tokenise the answer with NLTK (Punkt sentences, word_tokenize,
# RegexpTokenizer), found by running every IFEval and IFBench checker (tests/test_ifeval_scoring.py).
NLTK_CHECKS = frozenset({
    "change_case:capital_word_frequency", "length_constraints:number_sentences", "length_constraints:number_words",
    "count:word_count_range", "format:title_case", "ratio:stop_words", "words:keywords_specific_position",
    "words:start_verb", "words:words_position",
})
# Longer answers are not given to them: about 0.5 s per check and loose variant at this size; 30x a
# 1280-token answer.
MAX_CHECKED_CHARS = 100_000


@dataclass
class PromptResult:
    """One prompt's checks, in the order of its `instruction_id_list` (None = not scored)."""

    key: int | str
    instruction_id_list: tuple[str, ...]
    strict: list[bool | None]
    loose: list[bool | None]
    too_long: tuple[str, ...] = ()  # instruction types scored "not followed" unchecked (`too_long_to_check`)


def too_long_to_check(instruction_id: str, response: str) -> bool:
    """Whether `instruction_id` is scored "not followed" on `response` without running its check:
    an NLTK check on an answer of more than `MAX_CHECKED_CHARS` characters."""
    return instruction_id in NLTK_CHECKS and len(response) > MAX_CHECKED_CHARS


def loose_variants(response: str) -> list[str]:
    """The 8 texts the loose check tries, in the official order."""
    lines = response.split("\n")
    first = "\n".join(lines[1:]).strip()
    last = "\n".join(lines[:-1]).strip()
    both = "\n".join(lines[1:-1]).strip()
    return [response, response.replace("*", ""), first, last, both,
            first.replace("*", ""), last.replace("*", ""), both.replace("*", "")]


def build_checker(registry: dict[str, Any], instruction_id: str, kwargs: dict[str, Any], prompt: str):
    """The instruction's checker with its arguments (and the prompt, for checks that need it)."""
    if instruction_id not in registry:
        raise ValueError(f"unknown instruction type {instruction_id!r}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    state = random.getstate()
    random.seed(json.dumps([instruction_id, kwargs], sort_keys=True, default=str))
    try:
        checker = registry[instruction_id](instruction_id)
        checker.build_description(**kwargs)
        args = checker.get_instruction_args()
        if args and "prompt" in args:
            checker.build_description(prompt=prompt)
    finally:
        random.setstate(state)
    return checker


def follow_instructions(registry: dict[str, Any], instruction_ids: Sequence[str], kwargs: Sequence[dict],
                        prompt: str, response: str, skip: frozenset = frozenset()) -> tuple[list, list]:
    """(strict, loose): one bool per instruction (None for the types in `skip`; False for an NLTK
    check on an answer too long to check, `too_long_to_check`)."""
    variants = [v for v in loose_variants(response) if v.strip()]
    strict, loose = [], []
    for instruction_id, kw in zip(instruction_ids, kwargs, strict=True):
        if instruction_id in skip:
            strict.append(None)
            loose.append(None)
            continue
        if too_long_to_check(instruction_id, response):
            strict.append(False)
            loose.append(False)
            continue
        checker = build_checker(registry, instruction_id, kw, prompt)
        with no_wall_clock_limit():
            strict.append(bool(response.strip()) and bool(checker.check_following(response)))
            loose.append(any(checker.check_following(v) for v in variants))
    return strict, loose


def score_item(registry: dict[str, Any], item: Item, response: str, skip: frozenset = frozenset()) -> PromptResult:
    strict, loose = follow_instructions(registry, item.instruction_id_list, item.kwargs, item.prompt, response, skip)
    too_long = tuple(i for i in item.instruction_id_list if i not in skip and too_long_to_check(i, response))
    return PromptResult(item.key, item.instruction_id_list, strict, loose, too_long)


def _counts(results: Iterable[PromptResult], mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per prompt with at least one scored instruction: (all followed, # followed, # scored)."""
    all_ok, followed, scored = [], [], []
    for r in results:
        flags = [f for f in getattr(r, mode) if f is not None]
        if flags:
            all_ok.append(all(flags))
            followed.append(sum(flags))
            scored.append(len(flags))
    return np.array(all_ok, dtype=float), np.array(followed, dtype=float), np.array(scored, dtype=float)


def bootstrap_average_ci(all_ok: np.ndarray, followed: np.ndarray, scored: np.ndarray,
                         n_boot: int = 1000, seed: int = 0) -> list[float]:
    """95% percentile interval of (prompt-level + instruction-level accuracy) / 2 when the prompts
    are resampled with replacement `n_boot` times."""
    idx = np.random.default_rng(seed).integers(0, len(all_ok), size=(n_boot, len(all_ok)))
    boots = (all_ok[idx].mean(axis=1) + followed[idx].sum(axis=1) / scored[idx].sum(axis=1)) / 2
    return [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]


def aggregate(results: Sequence[PromptResult], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The metrics of a set of prompt results (accuracies are fractions in [0, 1]).

    `avg_prompt_inst_strict_acc` = (prompt_level_strict_acc + inst_level_strict_acc) / 2 is the
    figure the SmolLM2 model cards report as "IFEval (Average prompt/inst)" (docs/ifeval.md).
    """
    out: dict[str, Any] = {}
    for mode in ("strict", "loose"):
        all_ok, followed, scored = _counts(results, mode)
        if not len(all_ok):
            raise ValueError("no scored instructions: nothing to aggregate")
        out[f"prompt_level_{mode}_acc"] = float(all_ok.mean())
        out[f"inst_level_{mode}_acc"] = float(followed.sum() / scored.sum())
        out[f"avg_prompt_inst_{mode}_acc"] = (out[f"prompt_level_{mode}_acc"] + out[f"inst_level_{mode}_acc"]) / 2
        out[f"avg_prompt_inst_{mode}_acc_ci"] = bootstrap_average_ci(all_ok, followed, scored, n_boot, seed)
    per_type: dict[str, dict[str, float]] = defaultdict(lambda: {"n": 0, "strict_followed": 0, "loose_followed": 0})
    unscored: dict[str, int] = defaultdict(int)
    for r in results:
        for instruction_id, s, lo in zip(r.instruction_id_list, r.strict, r.loose):
            if s is None:
                unscored[instruction_id] += 1
                continue
            t = per_type[instruction_id]
            t["n"] += 1
            t["strict_followed"] += s
            t["loose_followed"] += lo
    out["per_instruction_type"] = {
        k: {"n": t["n"], "strict_acc": t["strict_followed"] / t["n"], "loose_acc": t["loose_followed"] / t["n"]}
        for k, t in sorted(per_type.items())
    }
    out["model_card_metric"] = MODEL_CARD_METRIC
    out["n_prompts"] = int(len(_counts(results, "strict")[0]))
    out["n_instructions"] = int(sum(t["n"] for t in per_type.values()))
    out["unscored_instructions"] = dict(sorted(unscored.items()))
    out["too_long_to_check"] = {"max_chars": MAX_CHECKED_CHARS, "instruction_types": sorted(NLTK_CHECKS),
                                "keys": [r.key for r in results if r.too_long]}
    out["bootstrap"] = {"samples": n_boot, "seed": seed, "level": 0.95, "over": "prompts"}
    return out
