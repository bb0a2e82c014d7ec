"""Training prompts for the `ifeval` reward: base prompts with 1-3 random verifiable constraints.

Each prompt is a base prompt's text (by default ampo's bundled prompts, never a benchmark's; of a
chat prompt, its last user message) followed by
the descriptions of 1 to `max_constraints` instructions drawn from the IFEval registry, each with
random arguments from its own `build_description()`. Instruction types are drawn without conflicts
(IFEval's conflict table, made symmetric) and without the types that need the prompt's own text
(`combination:repeat_prompt`). The constraints travel as the row's `meta`
(`instruction_id_list`, `kwargs`), which the `ifeval` reward checks. Seeded: the same arguments give
the same file.
"""

from __future__ import annotations

import copy
import random
from typing import Any

from ampo.data import prompt_text

from .offline import registry

NEEDS_PROMPT_TEXT = frozenset({"combination:repeat_prompt"})


def conflict_table() -> dict[str, set[str]]:
    """IFEval's instruction conflicts, symmetric (if A conflicts with B, B conflicts with A)."""
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS, conflict_make

    return conflict_make(copy.deepcopy(INSTRUCTION_CONFLICTS))


def draw_types(rng: random.Random, allowed: list[str], conflicts: dict[str, set[str]], k: int) -> list[str]:
    """Up to `k` instruction types, none conflicting with another."""
    chosen: list[str] = []
    for _ in range(k):
        candidates = [t for t in allowed if t not in chosen and not any(t in conflicts[c] for c in chosen)]
        if not candidates:
            break
        chosen.append(rng.choice(candidates))
    return chosen


def satisfiable(args: dict[str, Any]) -> bool:
    """False for argument draws no response can follow: the registry draws "paragraph n must
    start with ..." independently of the number of paragraphs."""
    return args.get("nth_paragraph", 0) <= args.get("num_paragraphs", float("inf"))


def describe(instruction_id: str, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """(description, arguments) of one instruction with random, satisfiable arguments. The global
    `random` state, which the registry draws from, is seeded from `rng` and restored after."""
    state = random.getstate()
    try:
        while True:
            random.seed(rng.randrange(2**31))
            checker = registry("ifeval")[instruction_id](instruction_id)
            text = checker.build_description()
            args = {k: v for k, v in (checker.get_instruction_args() or {}).items() if v is not None}
            if satisfiable(args):
                return text, args
    finally:
        random.setstate(state)


def build_prompts(base: list[dict], n: int, seed: int = 0, max_constraints: int = 3) -> list[dict]:
    """`n` rows `{"id", "prompt", "meta"}`; base prompts are used in seeded rounds (each one once
    per round), so every base prompt gets about n / len(base) different constraint sets."""
    if n < 1 or not base or not 1 <= max_constraints <= 3:
        raise ValueError("make-prompts needs n >= 1, base prompts, and 1 <= max_constraints <= 3")
    rng = random.Random(seed)
    conflicts = conflict_table()
    allowed = sorted(t for t in registry("ifeval") if t not in NEEDS_PROMPT_TEXT)
    rows, order = [], []
    for i in range(n):
        if not order:
            order = rng.sample(range(len(base)), len(base))
        b = base[order.pop()]
        types = draw_types(rng, allowed, conflicts, rng.randint(1, max_constraints))
        described = [describe(t, rng) for t in types]
        prompt = " ".join([prompt_text(b["prompt"]).strip(), *(text for text, _ in described)])
        rows.append({"id": f"if{i:05d}", "prompt": prompt,
                     "meta": {"instruction_id_list": types, "kwargs": [args for _, args in described],
                              "base_id": b["id"]}})
    return rows
