"""Tests for ampo.preferences against worked numbers computed by hand from the formulas of
docs/preferences.md (aggregates, require_beats, GPM)."""

import itertools
import math

import numpy as np
import pytest
import torch

from ampo.losses import soft_bt_loss
from ampo.preferences import (
    aggregate,
    beaten_by,
    check_logits,
    gpm_gates,
    gpm_loss,
    gpm_score,
    gpm_scores,
    scalar_to_logits,
)
from ampo.selection import select

# Example P1: 0 -> 1 -> 2 -> 0 is a cycle, all beat 3.
P1 = np.array([[0, 1.5, -1, 2], [-1.5, 0, 1, 2], [1, -1, 0, 2], [-2, -2, -2, 0]], dtype=float)
TOY_R = [2.0, 1.0, -0.5, -1.5]
# Example G1: two GPM embeddings with k = 2.
V_A = [0.6, -0.2, 0.3, 0.5]
V_B = [0.1, 0.4, -0.3, 0.2]
TOL = 1e-6


def sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, dtype=float)))


def vec(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# Aggregates


def test_p1_aggregates():
    assert np.allclose(sigmoid(P1[0]), [0.5, 0.817574, 0.268941, 0.880797], atol=TOL)
    assert np.allclose(aggregate(P1, "mean_logit"), [1.25, 0.75, 1.0, -3.0], atol=TOL)
    assert np.allclose(aggregate(P1, "win_rate"), [0.655771, 0.598094, 0.626932, 0.119203], atol=TOL)
    assert np.allclose(aggregate(P1, "win_rate_self"), [0.616828, 0.573570, 0.595199, 0.214402], atol=TOL)
    assert np.allclose(aggregate(P1, "copeland"), [1 / 3, 1 / 3, 1 / 3, -1], atol=1e-15)


def test_copeland_ties_while_the_other_aggregates_pick_response_0():
    # The positive is the argmax, ties to the lowest index: 0 under every aggregate here.
    for how in ("mean_logit", "win_rate", "win_rate_self", "copeland"):
        assert int(np.argmax(aggregate(P1, how))) == 0
    copeland = aggregate(P1, "copeland")
    assert copeland[0] == copeland[1] == copeland[2]


def test_copeland_counts_a_zero_logit_as_neither_win_nor_loss():
    S = check_logits([[0, 0, 3], [0, 0, -1], [-3, 1, 0]])
    assert np.allclose(aggregate(S, "copeland"), [0.5, -0.5, 0.0], atol=1e-15)


def test_bradley_terry_mean_logit_is_twice_the_centred_reward():
    assert np.allclose(aggregate(scalar_to_logits(TOY_R), "mean_logit"), [3.5, 1.5, -1.5, -3.5], atol=1e-12)


def test_win_rate_self_counts_self_as_a_tie():
    n = 4
    assert np.allclose(aggregate(P1, "win_rate_self"), ((n - 1) * aggregate(P1, "win_rate") + 0.5) / n)


@pytest.mark.parametrize("how", ["mean_logit", "win_rate", "win_rate_self", "copeland"])
def test_the_diagonal_is_never_read(how):
    noisy = P1 + np.diag([5.0, -7.0, 0.3, 100.0])
    assert np.array_equal(aggregate(noisy, how), aggregate(P1, how))


@pytest.mark.parametrize("how", ["mean_logit", "win_rate", "win_rate_self", "copeland"])
def test_aggregate_is_batched_over_leading_axes(how):
    rng = np.random.default_rng(0)
    batch = check_logits(rng.normal(size=(2, 3, 5, 5)))
    expected = np.array([[aggregate(S, how) for S in row] for row in batch])
    assert aggregate(batch, how).shape == (2, 3, 5)
    assert np.allclose(aggregate(batch, how), expected, atol=1e-15)


def test_aggregate_refuses_bad_input():
    with pytest.raises(ValueError, match="unknown aggregate 'borda'"):
        aggregate(P1, "borda")
    with pytest.raises(ValueError, match=r"must be \[..., N, N\]"):
        aggregate(np.zeros((3, 4)), "win_rate")
    with pytest.raises(ValueError, match="N >= 2"):
        aggregate(np.zeros((1, 1)), "win_rate")
    with pytest.raises(ValueError, match="finite"):
        aggregate(np.where(np.eye(4) > 0, 0.0, np.nan), "mean_logit")


def test_check_logits_averages_both_presentation_orders():
    # A judge with position bias +0.4 for whichever response is shown first.
    biased = P1 + 0.4 * (1 - np.eye(4))
    assert np.allclose(check_logits(biased), P1, atol=1e-15)
    assert np.array_equal(check_logits(P1), P1)
    S = check_logits(np.arange(9.0).reshape(3, 3))
    assert np.array_equal(S, -S.T) and np.array_equal(np.diag(S), np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        check_logits([[0, np.inf], [-np.inf, 0]])


def test_scalar_to_logits():
    S = scalar_to_logits(TOY_R)
    assert S[0, 3] == 3.5 and S[3, 0] == -3.5 and np.array_equal(np.diag(S), np.zeros(4))
    batched = scalar_to_logits([TOY_R, [0.9, 0.8, 0.1, 0.0]])
    assert batched.shape == (2, 4, 4) and np.array_equal(batched[0], S)


# ---------------------------------------------------------------------------------------------
# require_beats


def test_beaten_by_p1_and_the_selected_group():
    # Response 2 beats the positive (sigma(S_02) = 0.27), so require_beats = 0.5 drops it.
    keep = beaten_by(P1, positive=0, threshold=0.5)
    assert keep.tolist() == [False, True, False, True]
    pool = np.concatenate([[0], np.flatnonzero(keep)])
    chosen = select("bottomk", aggregate(P1, "win_rate")[pool], None, k=2)
    assert pool[chosen].tolist() == [0, 3, 1]


def test_beaten_by_keeps_ties_at_one_half_and_never_the_positive():
    S = scalar_to_logits([1.0, 1.0, 0.0])
    assert beaten_by(S, 0, 0.5).tolist() == [False, True, True]
    assert beaten_by(S, 0, 0.6).tolist() == [False, False, True]
    assert beaten_by(S, 0, 0.0).tolist() == [False, True, True]
    with pytest.raises(ValueError, match="not a response index"):
        beaten_by(S, 3, 0.5)


# ---------------------------------------------------------------------------------------------
# GPM (arXiv 2410.02197)


def test_gpm_g1_raw_and_normalised():
    a, b = vec(V_A), vec(V_B)
    assert abs(float(gpm_score(a, b, normalize=False)) - 0.47) < 1e-15
    assert abs(float(gpm_score(b, a, normalize=False)) + 0.47) < 1e-15
    assert abs(float(gpm_score(a, b)) - 0.997519) < TOL
    S = gpm_scores([V_A, V_B], tau=0.1)
    assert abs(sigmoid(S[0, 1]) - 0.999953) < TOL
    assert abs(sigmoid(gpm_scores([V_A, V_B], tau=1.0)[0, 1]) - 0.730571) < TOL


@pytest.mark.parametrize(
    "tau, margin, expected, tol",
    [(0.1, 0.0, 4.653910e-05, 1e-11), (1.0, 0.0, 0.313929, TOL), (0.1, 0.5, 0.006883, TOL)],
)
def test_gpm_g1_loss(tau, margin, expected, tol):
    assert abs(float(gpm_loss(vec(V_A), vec(V_B), tau=tau, margin=margin)) - expected) < tol


def test_gpm_g2_gates():
    a, b = vec(V_A), vec(V_B)
    u = vec([0.3, -0.5])
    lam = gpm_gates(u, "softmax")
    assert torch.allclose(lam, vec([0.689974, 0.310026]), atol=TOL)
    assert abs(float(gpm_score(a, b, lam)) - 0.518920) < TOL
    assert abs(float(gpm_loss(a, b, gates=lam, tau=0.1)) - 0.005561) < TOL
    lam = gpm_gates(u, "k_softmax_sqrtH", hidden_size=4)
    assert torch.allclose(lam, vec([1.197375, 0.802625]), atol=TOL)
    assert abs(float(gpm_score(a, b, lam)) - 1.018465) < TOL
    assert abs(float(gpm_loss(a, b, gates=lam, tau=0.1)) - 3.774467e-05) < 1e-11
    # the batched scorer applies the same gates
    assert abs(gpm_scores([V_A, V_B], gates=lam.numpy(), tau=1.0)[0, 1] - 1.018465) < TOL


def test_gpm_gates_refuse_bad_input():
    with pytest.raises(ValueError, match="unknown GPM gate 'relu'"):
        gpm_gates(vec([0.0, 1.0]), "relu")
    with pytest.raises(ValueError, match="needs the backbone's hidden_size"):
        gpm_gates(vec([0.0, 1.0]), "k_softmax_sqrtH")


def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_gpm_g3_expresses_a_cycle_that_no_scalar_reward_can():
    S = gpm_scores([unit(0), unit(120), unit(240)], tau=0.1)
    cycle = [(0, 1), (1, 2), (2, 0)]
    for i, j in cycle:
        assert abs(S[i, j] * 0.1 - 0.866025) < TOL
        assert abs(sigmoid(S[i, j]) - 0.999827) < TOL
    assert np.allclose(aggregate(S, "win_rate"), aggregate(S, "win_rate")[0])  # nobody is best
    # Any scalar reward orders at most 2 of the 3 cyclic pairs the cycle's way (ties fewer).
    agree = []
    for order in itertools.permutations(range(3)):
        r = np.empty(3)
        r[list(order)] = [3.0, 2.0, 1.0]
        agree.append(sum(scalar_to_logits(r)[i, j] > 0 for i, j in cycle))
    assert max(agree) == 2


def test_gpm_with_unnormalised_1_minus_r_embeddings_is_bradley_terry():
    V = np.stack([np.ones(4), -np.array(TOY_R)], axis=-1)
    assert np.allclose(gpm_scores(V, tau=1.0, normalize=False), scalar_to_logits(TOY_R), atol=1e-15)


def test_gpm_scores_are_skew_symmetric_and_batched():
    rng = np.random.default_rng(1)
    V = rng.normal(size=(3, 5, 6))
    gates = rng.uniform(size=(3, 3))
    S = gpm_scores(V, gates=gates)
    assert S.shape == (3, 5, 5)
    assert np.array_equal(S, -np.swapaxes(S, -1, -2))
    assert np.array_equal(np.diagonal(S, axis1=-2, axis2=-1), np.zeros((3, 5)))
    assert np.allclose(S[1], gpm_scores(V[1], gates=gates[1]), atol=1e-15)


def test_gpm_refuses_odd_sizes_and_bad_tau():
    with pytest.raises(ValueError, match="even size 2k"):
        gpm_scores(np.ones((3, 5)))
    with pytest.raises(ValueError, match="tau must be > 0"):
        gpm_scores(np.ones((3, 4)), tau=0.0)
    with pytest.raises(ValueError, match="tau must be > 0"):
        gpm_loss(vec(V_A), vec(V_B), tau=-1.0)


def test_gpm_loss_takes_soft_labels_like_the_scalar_reward_model():
    a, b = vec([V_A, V_B]), vec([V_B, V_A])
    p = vec([0.8, 0.3])
    logit = gpm_score(a, b) / 0.1
    assert torch.allclose(gpm_loss(a, b, p), soft_bt_loss(logit, torch.zeros(2, dtype=torch.float64), p), atol=1e-15)
    # p = 1/2 on a pair scored as a tie has zero gradient
    same = vec(V_A).requires_grad_(True)
    gpm_loss(same, vec(V_A), 0.5).backward()
    assert torch.allclose(same.grad, torch.zeros(4, dtype=torch.float64), atol=1e-15)


def fit_pairs(scores_of, params, pairs, steps=300) -> torch.Tensor:
    """Adam on -log sigma(score(w) - score(l)) over the given pairs; returns the fitted scores."""
    optim = torch.optim.Adam(params, lr=0.05)
    for _ in range(steps):
        optim.zero_grad()
        scores_of(pairs).sum().backward()
        optim.step()
    return scores_of(pairs).detach()


def test_a_gpm_head_learns_a_3_cycle_that_a_scalar_head_cannot():
    torch.manual_seed(0)
    cycle = torch.tensor([[0, 1], [1, 2], [2, 0]])
    v = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    gpm_losses = fit_pairs(lambda p: gpm_loss(v[p[:, 0]], v[p[:, 1]], tau=0.1), [v], cycle)
    assert (gpm_score(v[cycle[:, 0]], v[cycle[:, 1]]) > 0).all()  # all three pairs right
    assert (gpm_losses < 0.05).all()
    r = torch.randn(3, dtype=torch.float64, requires_grad=True)
    bt_losses = fit_pairs(lambda p: soft_bt_loss(r[p[:, 0]], r[p[:, 1]], 1.0), [r], cycle)
    assert int((r[cycle[:, 0]] > r[cycle[:, 1]]).sum()) <= 2
    assert float(bt_losses.sum()) > 3 * math.log(2) - 1e-6  # BT's best is all ties: 3 log 2


def test_gpm_loss_gradient_step_lowers_the_loss():
    a, b = vec(V_A).requires_grad_(True), vec(V_B).requires_grad_(True)
    gates = gpm_gates(vec([0.3, -0.5]))
    loss = gpm_loss(a, b, 0.7, gates=gates, tau=1.0)
    ga, gb = torch.autograd.grad(loss, (a, b))
    assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
    stepped = gpm_loss(a.detach() - 1e-2 * ga, b.detach() - 1e-2 * gb, 0.7, gates=gates, tau=1.0)
    assert stepped < loss
