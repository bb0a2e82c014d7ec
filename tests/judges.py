"""Pairwise judges for the tests (given to `score.reward` as `pairwise:tests/judges.py:NAME`).

Not collected by pytest (no `test_` prefix): plain functions `judge(prompt, responses) -> [N, N]`.
"""

import numpy as np


def cyclic(prompt, responses):
    """An intransitive judge: a response's class is its word count mod 3, and class c beats class
    c + 1 (mod 3) with logit 2, so three classes form a cycle; within a class the longer text wins
    a little. Not skew-symmetric on the diagonal's purpose: the pipeline symmetrises it."""
    words = np.array([len(r.split()) for r in responses])
    c = words % 3
    S = np.where((c[None, :] - c[:, None]) % 3 == 1, 2.0, 0.0)
    S = S - S.T + 0.1 * (words[:, None] - words[None, :]) * (c[:, None] == c[None, :])
    return S


def position_biased(prompt, responses):
    """A judge with a position bias (the first-listed response gets +1 on top of a length
    preference): not skew-symmetric, so the pipeline averages both presentation orders."""
    lengths = np.array([len(r) for r in responses], dtype=float)
    return 0.05 * (lengths[:, None] - lengths[None, :]) + 1.0


def wrong_shape(prompt, responses):
    return np.zeros((len(responses), len(responses) + 1))


def ties_on_weather_and_flights(prompt, responses):
    """All ties for the prompts about rain or flights (a zero win-rate margin, so `select.min_margin`
    drops them); longer wins otherwise."""
    if "rainy" in prompt or "flight" in prompt:
        return np.zeros((len(responses), len(responses)))
    lengths = np.array([len(r) for r in responses], dtype=float)
    return 0.2 * (lengths[:, None] - lengths[None, :])
