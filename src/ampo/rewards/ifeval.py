"""The `ifeval` training reward: how many of its prompt's verifiable instructions a response follows.

    reward = strict + loose * loose_fraction - degeneracy * repetition

`strict` is the fraction of the prompt's instructions that the response follows under the strict
IFEval check (in [0, 1]); `loose_fraction` the same under the loose check (first/last line and
`*` forgiven). `repetition` is the built-in reward's repetition term (share of repeated word
bigrams: 0 up to 10%, rising to 1 at 50%), which stops a policy from looping text to satisfy a
word-count or keyword-frequency constraint. The weights `loose` and `degeneracy` default to 0, so
plain `ifeval` is the strict fraction. The constraints come from each prompt's `meta`
(`instruction_id_list`, `kwargs`), as `ampo make-prompts --task ifeval` writes them.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ..ifeval.offline import registry
from ..ifeval.scoring import follow_instructions

OPTIONS = ("loose", "degeneracy")


def check_meta(meta: Mapping[str, Any]) -> tuple[list[str], list[dict]]:
    """The (instruction ids, kwargs) of a prompt's meta, or ValueError naming the field."""
    ids, kwargs = meta.get("instruction_id_list"), meta.get("kwargs")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise ValueError("ifeval reward: meta 'instruction_id_list' must be a non-empty list of strings")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
        raise ValueError("ifeval reward: meta 'kwargs' must be a list of objects, one per instruction")
    return ids, kwargs


def check_weights(**weights: float) -> None:
    """Refuse a weight that is negative or not a finite number, naming it."""
    for name, value in weights.items():
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"ifeval reward: {name} must be a finite number >= 0, got {value}")


def parse_spec(spec: str) -> dict[str, float]:
    """The weights of a reward spec `ifeval` or `ifeval:loose=0.5,degeneracy=0.1`, checked (no
    checker is loaded: configs call this before anything runs)."""
    from ampo.errors import short

    name, _, options = spec.partition(":")
    if name != "ifeval":
        raise ValueError(f"reward {short(spec)} is not an ifeval reward spec")
    kwargs = {}
    for item in filter(None, (o.strip() for o in options.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in OPTIONS:
            raise ValueError(f"reward {short(spec)}: options are {', '.join(o + '=NUMBER' for o in OPTIONS)}")
        try:
            kwargs[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"reward {short(spec)}: {key.strip()} must be a number, got {short(value)}") from None
    check_weights(**kwargs)
    return kwargs


class IFEvalReward:
    """See the module docstring. Deterministic; a few ms per response."""

    name = "ifeval"
    needs_meta = True

    def __init__(self, loose: float = 0.0, degeneracy: float = 0.0):
        check_weights(loose=loose, degeneracy=degeneracy)
        self.loose, self.degeneracy = float(loose), float(degeneracy)
        self._checks = registry("ifeval")

    @classmethod
    def from_spec(cls, spec: str) -> "IFEvalReward":
        """`ifeval` or `ifeval:loose=0.5,degeneracy=0.1`."""
        return cls(**parse_spec(spec))

    def breakdown(self, prompt: str, response: str, meta: Mapping[str, Any]) -> dict[str, float]:
        """The strict and loose fractions, the repetition term and the reward of one response."""
        from .builtin import degeneracy_terms

        ids, kwargs = check_meta(meta)
        strict, loose = follow_instructions(self._checks, ids, kwargs, prompt, response)
        parts = {"strict": float(np.mean(strict)), "loose_fraction": float(np.mean(loose)),
                 "repetition": degeneracy_terms(response, 0.0)["repetition"]}
        parts["reward"] = parts["strict"] + self.loose * parts["loose_fraction"] - self.degeneracy * parts["repetition"]
        return parts

    def __call__(self, prompts: list[str], responses: list[str],
                 metas: Sequence[Mapping[str, Any]] = ()) -> np.ndarray:
        from .base import validate_rewards

        if not (len(prompts) == len(responses) == len(metas)):
            raise ValueError(f"reward 'ifeval': {len(prompts)} prompts, {len(responses)} responses, "
                             f"{len(metas)} metas")
        scores = [self.breakdown(p, r, m)["reward"] for p, r, m in zip(prompts, responses, metas)]
        return validate_rewards(self.name, scores, len(responses))
