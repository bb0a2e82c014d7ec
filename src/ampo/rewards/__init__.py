"""Scoring responses: the built-in demo reward, local reward models, Python callables, pairwise
judges, and training a reward model on preference pairs (hard or margin-matching soft labels,
MMPO, arXiv 2410.03145).

Every reward is a `RewardFn`: `reward(prompts, responses) -> np.ndarray[float64]`, one finite
score per (prompt, response) pair, validated by `validate_rewards`. A reward that needs
prompt-side data (each prompt's `meta` object from the prompt file, e.g. the `ifeval` reward's
constraints) says so with `needs_meta = True` and is called as `reward(prompts, responses,
metas=...)`; `score_texts` makes that call for every caller.

Modules: `base` (the contracts and output checks), `builtin` (the demo reward), `reward_model`
(sequence-classification reward models), `callables` (Python callables and pairwise judges),
`registry` (spec -> scorer, scoring pool records), `training` (reward-model training).
"""

from .base import PairwiseScorer, RewardFn, is_pairwise, score_texts, validate_matrix, validate_rewards
from .builtin import (DENSITY_FULL, DENSITY_TOLERANCE, JUNK_FULL, JUNK_TOLERANCE, MAX_WORDS, MIN_WORDS,
                      REPEAT_FULL, REPEAT_TOLERANCE, BuiltinReward, degeneracy_terms)
from .callables import CallablePairwise, CallableReward
from .registry import PAIRWISE_KINDS, load_reward, resolve_aggregate, reward_kind, score_records
from .reward_model import HFRewardModel, encode_pairs, pair_logits
from .training import NEW_HEADS, RM_HEADS, preference_labels, train_reward_model

__all__ = [
    "DENSITY_FULL", "DENSITY_TOLERANCE", "JUNK_FULL", "JUNK_TOLERANCE", "MAX_WORDS", "MIN_WORDS", "NEW_HEADS",
    "PAIRWISE_KINDS", "REPEAT_FULL", "REPEAT_TOLERANCE", "RM_HEADS", "BuiltinReward", "CallablePairwise",
    "CallableReward", "HFRewardModel", "PairwiseScorer", "RewardFn", "degeneracy_terms", "encode_pairs",
    "is_pairwise", "load_reward", "pair_logits", "preference_labels", "resolve_aggregate", "reward_kind",
    "score_records", "score_texts", "train_reward_model", "validate_matrix", "validate_rewards",
]
