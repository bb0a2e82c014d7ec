"""Evaluation maths: win rate with ties and its bootstrap interval, distinct-n, diversity."""

import numpy as np
import pytest

from ampo.evaluation import distinct_n, embedding_diversity, summarize, win_rate


def test_win_rate_counts_ties_half():
    new = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 0.0]])
    base = np.array([[0.0, 0.0], [0.5, 1.0], [1.0, 1.0]])
    # prompt 0: win + tie = 0.75; prompt 1: tie + loss = 0.25; prompt 2: two losses = 0
    wr, (lo, hi) = win_rate(new, base, bootstrap=2000, seed=0)
    assert wr == pytest.approx((0.75 + 0.25 + 0.0) / 3)
    assert 0 <= lo <= wr <= hi <= 0.75


def test_win_rate_interval_excludes_half_when_clearly_better():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(60, 2))
    wr, (lo, hi) = win_rate(base + 1.0, base, bootstrap=500)
    assert wr == 1.0 and lo == 1.0
    wr, (lo, hi) = win_rate(base, base + rng.normal(size=(60, 2)), bootstrap=500)
    assert lo < 0.5 < hi  # no difference: the interval covers one half


def test_distinct_n():
    assert distinct_n(["a b a b"], 1) == 0.5
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n([""], 2) == 0.0


def test_embedding_diversity_is_mean_pairwise_distance():
    emb = {"x": [1.0, 0.0], "y": [0.0, 1.0], "z": [1.0, 0.0]}
    rows = [{"responses": ["x", "y"]}, {"responses": ["x", "z"]}]
    embedder = lambda texts: np.array([emb[t] for t in texts])
    assert embedding_diversity(embedder, rows) == pytest.approx((np.sqrt(2) + 0) / 2)
    assert embedding_diversity(embedder, [{"responses": ["x"]}]) is None


def test_summarize_keys_and_gain():
    rows = [{"rewards": [1.0, 0.0], "responses": ["a b", "c"], "n_tokens": [3, 2], "finished": [True, False]}]
    base = [{"rewards": [0.0, 0.0], "responses": ["a", "a"], "n_tokens": [1, 1], "finished": [True, True]}]
    s = summarize(rows, base, bootstrap=100, seed=0)
    assert s["mean_reward"] == 0.5 and s["reward_gain"] == 0.5
    assert s["win_rate"] == 0.75 and s["finished_rate"] == 0.5 and s["mean_length"] == 2.5
