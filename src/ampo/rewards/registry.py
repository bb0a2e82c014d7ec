"""From a reward spec to a scorer (`reward_kind`, `load_reward`), and scoring pool records with
either kind of scorer (`score_records`, `resolve_aggregate`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import PairwiseScorer, RewardFn, is_pairwise, score_texts
from .builtin import BuiltinReward
from .callables import CallablePairwise, CallableReward
from .reward_model import HFRewardModel


def _pool_texts(pool: Sequence[Any]) -> tuple[list[str], list[list[str]], list[Any]]:
    """Prompt texts, response lists and metas of pool records."""
    from ..data import prompt_text

    return [prompt_text(rec.prompt) for rec in pool], [list(rec.responses) for rec in pool], [rec.meta for rec in pool]


def score_records(scorer: Any, pool: Sequence[Any], aggregate: str = "reward",
                  unfinished_reward: float | None = None) -> list[dict[str, Any]]:
    """Score pool records: per record `{"rewards": [N]}`, plus `"pref_logits": [N][N]` whenever a
    preference matrix exists.

    `unfinished_reward` (scalar scorers): the reward of every response that did not end (`finished`
    False: it hit the token limit), whatever the scorer says (open-instruct's non-stop penalty), set
    before any aggregate is taken.

    A pairwise scorer gives the matrix; a scalar reward gives it as `S_ij = r_i - r_j` when
    `aggregate` is not "reward". `rewards` is then the matrix's `aggregate`
    (`ampo.preferences.aggregate`), so every selector, loss and evaluation reads one scalar per
    response; with "reward" (scalar scorers only) it is the reward itself, as before.
    """
    from ..preferences import AGGREGATES, aggregate as aggregate_matrix, scalar_to_logits

    prompts, pools, metas = _pool_texts(pool)
    if is_pairwise(scorer):
        if aggregate == "reward":
            raise ValueError(f"a pairwise scorer has no scalar reward: choose an aggregate "
                             f"({', '.join(AGGREGATES)})")
        matrices = scorer.matrices(prompts, pools)
    else:
        flat = score_texts(scorer, [p for p, rs in zip(prompts, pools) for _ in rs], [r for rs in pools for r in rs],
                           [m for m, rs in zip(metas, pools) for _ in rs])
        flat = np.asarray(flat, dtype=np.float64)
        if unfinished_reward is not None:
            flat[~_finished_flags(pool)] = unfinished_reward
        rewards = np.split(flat, np.cumsum([len(rs) for rs in pools])[:-1])
        if aggregate == "reward":
            return [{"rewards": r.tolist()} for r in rewards]
        matrices = [scalar_to_logits(r) for r in rewards]
    for rec, S in zip(pool, matrices):
        if len(S) < 2:
            raise ValueError(f"prompt {rec.id!r}: a preference aggregate needs >= 2 responses, got {len(S)}")
    return [{"rewards": aggregate_matrix(S, aggregate).tolist(), "pref_logits": S.tolist()} for S in matrices]


def _finished_flags(pool: Sequence[Any]) -> np.ndarray:
    """Every response's `finished` flag, flat; a record without them is refused (one line)."""
    flags = []
    for rec in pool:
        if rec.finished is None or len(rec.finished) != len(rec.responses):
            raise ValueError(f"prompt {rec.id!r}: score.unfinished_reward needs each response's 'finished' flag "
                             f"(ended or cut at the token limit), and this pool has none")
        flags += [bool(f) for f in rec.finished]
    return np.asarray(flags, dtype=bool)


PAIRWISE_KINDS = ("pairwise", "gpm")


def resolve_aggregate(aggregate: str, kind: str) -> str:
    """`score.aggregate` with "auto" resolved: "win_rate" for a pairwise scorer (bounded, so
    opt-select's weights stay moderate; docs/preferences.md), "reward" (today's behaviour) for a scalar one."""
    if aggregate != "auto":
        return aggregate
    return "win_rate" if kind in PAIRWISE_KINDS else "reward"


def reward_kind(spec: str) -> str:
    """What a reward spec names: "builtin", "ifeval" (`ifeval[:loose=W,degeneracy=W]`, its options
    checked here), "gpm" (a GPM reward-model folder: it holds `gpm.json`), "folder" (a one-logit
    reward model), "pairwise" ("pairwise:module:function", a judge returning one prompt's
    preference matrix) or "callable" ("module:function" / "file.py:function"). Cheap, so configs
    are checked before anything loads."""
    from .gpm import GPM_FILE

    if spec == "builtin":
        return "builtin"
    if spec.split(":", 1)[0] == "ifeval":
        from .ifeval import parse_spec

        parse_spec(spec)
        return "ifeval"
    if Path(spec).is_dir():
        return "gpm" if (Path(spec) / GPM_FILE).is_file() else "folder"
    if spec.startswith("pairwise:"):
        if ":" not in spec[len("pairwise:"):]:
            raise ValueError(f"reward {spec!r} is not of the form 'pairwise:module:function'")
        return "pairwise"
    if ":" in spec:
        return "callable"
    raise ValueError(
        f"unknown reward {spec!r}: expected 'builtin', 'ifeval', 'module:function', "
        "'pairwise:module:function' or a local reward-model folder"
    )


def load_reward(spec: str, **kwargs: Any) -> RewardFn | PairwiseScorer:
    """A reward from a spec (see `reward_kind`; `ifeval[:...]` is `ampo.rewards.ifeval.IFEvalReward`,
    a GPM folder is `ampo.rewards.gpm.GPMScorer`). `kwargs` go to `BuiltinReward`, `HFRewardModel` or
    `GPMScorer`."""
    kind = reward_kind(spec)
    if kind == "builtin":
        return BuiltinReward(**kwargs)
    if kind == "folder":
        return HFRewardModel(spec, **kwargs)
    if kind == "gpm":
        from .gpm import GPMScorer

        return GPMScorer(spec, **kwargs)
    if kwargs:
        raise ValueError(f"reward {spec!r} is a {kind} and takes no options {sorted(kwargs)}")
    if kind == "ifeval":
        from .ifeval import IFEvalReward

        return IFEvalReward.from_spec(spec)
    if kind == "pairwise":
        return CallablePairwise(spec[len("pairwise:"):])
    return CallableReward(spec)
