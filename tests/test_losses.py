"""Tests for ampo.losses against worked numbers computed by hand (independently of the code) from
each loss's formula in docs/losses.md, mostly on the toy prompt below (gpo, tripo, mmpo
target=pref and grpo's GSPO ratio included)."""

import math
from pathlib import Path

import pytest
import torch

from ampo.losses import (
    LOSSES,
    GroupBatch,
    check_hparams,
    compute,
    grpo_advantages,
    mrpo_clipped_reference,
    mrpo_virtual_reference,
    resolve_hparams,
    soft_bt_loss,
    soft_target,
)
from ampo.preferences import aggregate, scalar_to_logits

# The shared toy prompt of the worked numbers (docs/losses.md, "The table").
TOY_LP = [-40.0, -55.0, -60.0, -80.0]
TOY_REF = [-42.0, -54.0, -58.0, -75.0]
TOY_LEN = [40.0, 50.0, 40.0, 64.0]
TOY_R = [2.0, 1.0, -0.5, -1.5]
# A second reference for MRPO (ref_logps[1], MRPO's ref1); made up, any values work.
TOY_REF_EXTRA = [-44.0, -53.0, -61.0, -73.0]
# Preference logits of example P1 (docs/preferences.md): 0 -> 1 -> 2 -> 0 is a cycle, all beat 3.
TOY_PREF = [[0.0, 1.5, -1.0, 2.0], [-1.5, 0.0, 1.0, 2.0], [1.0, -1.0, 0.0, 2.0], [-2.0, -2.0, -2.0, 0.0]]

PAIRWISE = {"dpo", "ipo", "simpo", "mmpo", "mrpo"}
DEFAULT_DTYPE = torch.float64


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=DEFAULT_DTYPE)


def toy(slots=(0, 1, 2, 3), lp=TOY_LP) -> GroupBatch:
    """One group built from the given rows of the toy table (slot order as given); the sampling
    policy's log-probs (grpo) are ``lp`` itself, so every ratio starts at 1."""
    pick = lambda col: t([[col[i] for i in slots]])  # noqa: E731
    refs = torch.stack([pick(TOY_REF), pick(TOY_REF_EXTRA)])
    return GroupBatch(
        logps=pick(lp),
        lengths=pick(TOY_LEN),
        rewards=pick(TOY_R),
        mask=torch.ones(1, len(slots), dtype=torch.bool),
        ref_logps=refs,
        pref_logits=t([[[TOY_PREF[i][j] for j in slots] for i in slots]]),
        old_logps=pick(lp),
    )


def stack(batches: list[GroupBatch]) -> GroupBatch:
    """Concatenate same-K batches along B."""
    return GroupBatch(
        logps=torch.cat([b.logps for b in batches]),
        lengths=torch.cat([b.lengths for b in batches]),
        rewards=torch.cat([b.rewards for b in batches]),
        mask=torch.cat([b.mask for b in batches]),
        ref_logps=torch.cat([b.ref_logps for b in batches], dim=1),
        pref_logits=None if batches[0].pref_logits is None else torch.cat([b.pref_logits for b in batches]),
        old_logps=torch.cat([b.old_logps for b in batches]),
    )


def loss_of(name: str, batch: GroupBatch, **hparams) -> torch.Tensor:
    return LOSSES[name].fn(batch, **hparams)[0]


def close(value: torch.Tensor, expected: float, tol: float = 1e-5) -> bool:
    return abs(float(value) - expected) < tol


# ---------------------------------------------------------------------------------------------
# Worked numbers


@pytest.mark.parametrize(
    "beta, gamma, expected", [(2, 1, 1.027167), (2, 3, 1.853078), (10, 3, 0.862935)]
)
def test_ampo_toy(beta, gamma, expected):
    assert close(loss_of("ampo", toy(), beta=beta, gamma=gamma, alpha=0.0), expected)


def test_ampo_defaults_are_the_recommended_ones():
    assert LOSSES["ampo"].defaults == {"beta": 10.0, "gamma": 3.0, "alpha": 0.0, "eos_reg": "none",
                                       "eos_lambda": 1e-5}
    assert close(loss_of("ampo", toy()), 0.862935)


def test_ampo_alpha_centres_rewards_on_the_valid_group_mean():
    # With alpha != 0, s = beta*avg + alpha*(r - rbar); rbar = 0.25 over all four responses.
    beta, gamma, alpha = 2.0, 3.0, 0.5
    s = [beta * lp / n + alpha * (r - 0.25) for lp, n, r in zip(TOY_LP, TOY_LEN, TOY_R)]
    denom = math.exp(s[0]) + gamma * sum(math.exp(x) for x in s[1:])
    expected = -math.log(math.exp(s[0]) / denom)
    assert close(loss_of("ampo", toy(), beta=beta, gamma=gamma, alpha=alpha), expected, 1e-9)


@pytest.mark.parametrize(
    "alpha, dev_fn, expected",
    [(1.0, "signed", 0.053563), (1.0, "abs", 0.459965), (0.0, "signed", 0.513015)],
)
def test_swepo_toy(alpha, dev_fn, expected):
    loss, metrics = LOSSES["swepo"].fn(toy(), beta=0.1, alpha=alpha, dev_fn=dev_fn)
    assert close(loss, expected)
    assert float(metrics["positive_set_size"]) == 2  # Y+ = {0, 1}


def test_dpo_ipo_simpo_toy_pair():
    pair = toy(slots=(0, 3))
    assert close(loss_of("dpo", pair, beta=0.1), 0.403186)
    assert close(loss_of("dpo", pair, beta=0.01), 0.658760)
    assert close(loss_of("ipo", pair, beta=0.1), 4.0)
    assert close(loss_of("simpo", pair, beta=2.0, gamma=1.0), 0.974077)


@pytest.mark.parametrize(
    "gamma, beta, expected",
    [(0.3, 0.01, 0.676905), (0.3, 0.1, 0.584644), (2.2, 0.1, 0.403503)],
)
def test_mmpo_toy(gamma, beta, expected):
    loss, metrics = LOSSES["mmpo"].fn(toy(slots=(0, 3)), beta=beta, gamma=gamma)
    assert close(loss, expected)
    assert close(metrics["soft_target"], float(torch.sigmoid(torch.tensor(gamma * 3.5))))


def test_mmpo_soft_target_and_reward_model_loss_toy():
    p = soft_target(t(2.0), t(-1.5), gamma=0.3)
    assert close(p, 0.740775)
    assert close(soft_bt_loss(t(1.3), t(0.4), p), 0.574456)
    assert close(soft_bt_loss(t(1.3), t(0.4), 1.0), 0.341154)


MRPO_LP = [-40.0, -60.0]
MRPO_PRIMARY = [-42.0, -58.0]  # MRPO's ref2 (initial policy) -> ref_logps[0]
MRPO_EXTRA = [-44.0, -55.0]  # MRPO's ref1 (external model) -> ref_logps[1]


def mrpo_pair() -> GroupBatch:
    return GroupBatch(
        logps=t([MRPO_LP]),
        lengths=t([[10.0, 10.0]]),
        rewards=t([[1.0, 0.0]]),
        mask=torch.ones(1, 2, dtype=torch.bool),
        ref_logps=t([[MRPO_PRIMARY], [MRPO_EXTRA]]),
    )


def test_mrpo_virtual_reference_toy():
    (pw, pl), (ew, el) = t(MRPO_PRIMARY), t(MRPO_EXTRA)
    clipped_w, clipped_l, weight = mrpo_clipped_reference(pw, pl, ew, el, eta=0.1, alpha=-1.0)
    assert close(clipped_w, -43.815075) and close(clipped_l, -55.0)
    ref_w, ref_l = mrpo_virtual_reference(clipped_w, pw, weight), mrpo_virtual_reference(clipped_l, pl, weight)
    assert close(weight, 0.407407)
    assert close(ref_w, -43.397936)
    assert close(ref_l, -57.171974)


def test_mrpo_loss_toy():
    loss, metrics = LOSSES["mrpo"].fn(mrpo_pair(), beta=0.1, eta=0.1, alpha=-1.0)
    assert close(loss, 0.429539)
    assert close(metrics["alpha"], 0.407407)
    assert close(metrics["margin"], 0.622596)


@pytest.mark.parametrize(
    "alpha, eta, expected",
    [
        (1.0, 0.1, 0.513015),  # all weight on 1/pi_primary: DPO with ref2
        (0.0, 0.0, 0.513015),  # extra ref clipped onto the primary: DPO with ref2
        (0.0, -1.0, 0.341154),  # fixed rate 1 leaves the extra ref unclipped: DPO with ref1
    ],
)
def test_mrpo_limits_reduce_to_single_reference_dpo(alpha, eta, expected):
    assert close(loss_of("mrpo", mrpo_pair(), beta=0.1, eta=eta, alpha=alpha), expected)


def test_multi_dpo_baseline_toy():
    """The naive baseline: weight * DPO(ref = clipped ref1) + (1 - weight) * DPO(ref = ref2)."""
    loss, metrics = LOSSES["mrpo"].fn(mrpo_pair(), beta=0.1, eta=0.1, alpha=-1.0, naive=True)
    assert close(loss, 0.445190)
    assert close(metrics["alpha"], 0.407407)


@pytest.mark.parametrize("alpha, expected", [(0.0, 0.513015), (1.0, None)])
def test_multi_dpo_limits(alpha, expected):
    """Weight 0 is DPO with the primary reference; weight 1 is DPO with the clipped extra one."""
    got = loss_of("mrpo", mrpo_pair(), beta=0.1, eta=0.1, alpha=alpha, naive=True)
    if expected is None:  # by hand: z = 0.1 * ((-40 + 43.815075) - (-60 + 55))
        expected = math.log1p(math.exp(-0.1 * (3.815075 + 5.0)))
    assert close(got, expected)


def test_mrpo_with_three_references_averages_over_extra_references():
    batch = toy()
    third = t([[-41.0, -56.0, -57.0, -79.0]])
    three = GroupBatch(**{**batch.__dict__, "ref_logps": torch.cat([batch.ref_logps, third[None]])})
    only_third = GroupBatch(
        **{**batch.__dict__, "ref_logps": torch.stack([batch.ref_logps[0], third])}
    )
    expected = (loss_of("mrpo", batch) + loss_of("mrpo", only_third)) / 2
    assert torch.allclose(loss_of("mrpo", three), expected, atol=1e-12)


@pytest.mark.parametrize(
    "beta, gamma, alpha, expected",
    [
        (2.0, 2.0, 0.0, 0.728286),  # REFA-Dynamic
        (10.0, 4.0, 0.0, 0.230905),
        (2.0, 2.0, 1.0, 0.071918),  # W-REFA, additive
        (2.0, 2.0, 2.0 * 0.01, 0.700996),  # W-REFA, Eq. 22 form with a = 0.01: alpha = beta * a
    ],
)
def test_refa_toy(beta, gamma, alpha, expected):
    loss, metrics = LOSSES["refa"].fn(toy(), beta=beta, gamma=gamma, alpha=alpha)
    assert close(loss, expected)
    assert float(metrics["positive_set_size"]) == 2


P_EOS = [0.9, 0.7, 0.95, 0.6]


@pytest.mark.parametrize("name", ["ampo", "refa"])
@pytest.mark.parametrize("kind, expected", [("targeted", 5.42e-4), ("independent", 1.0242e-5)])
def test_eos_regularizer_toy(name, kind, expected):
    batch = toy()
    with_eos = GroupBatch(**{**batch.__dict__, "eos_logps": t([[math.log(p) for p in P_EOS]])})
    plain, _ = LOSSES[name].fn(batch)
    regularized, metrics = LOSSES[name].fn(with_eos, eos_reg=kind, eos_lambda=1e-5)
    assert close(regularized - plain, expected, tol=1e-8)
    assert close(metrics["eos_reg"], expected, tol=1e-8)


def test_eos_regularizer_needs_eos_logps_and_a_known_kind():
    with pytest.raises(ValueError, match="needs eos_logps"):
        LOSSES["ampo"].fn(toy(), eos_reg="targeted")
    with pytest.raises(ValueError, match="eos_reg must be one of none, targeted, independent"):
        LOSSES["refa"].fn(toy(), eos_reg="budget")


def test_infonca_nca_toy():
    assert close(loss_of("infonca", toy(), beta=0.1, temperature=1.0), 1.178396)
    assert close(loss_of("nca", toy(), beta=0.1, temperature=1.0), 1.281939)


def test_pro_toy():
    assert close(loss_of("pro", toy(), sft_weight=0.0), 2.945504)
    # Default weight 0.05 * (4-1)^2 = 0.45; the top response has avg = -40/40 = -1, NLL 1.0.
    assert close(loss_of("pro", toy()), 3.395504)
    assert close(loss_of("pro", toy(), sft_weight=0.45), 3.395504)


def test_pro_ranks_by_reward_not_by_slot():
    # Slots 1..3 listed in a scrambled order give the same Plackett-Luce loss.
    assert close(loss_of("pro", toy(slots=(0, 3, 1, 2)), sft_weight=0.0), 2.945504)


def pro_three() -> GroupBatch:
    """Rewards 1, 0.5, 0 with per-token log-probs -1, -2, -3 (slots scrambled)."""
    return GroupBatch(logps=t([[-20.0, -10.0, -30.0, 5.0]]), lengths=t([[10.0, 10.0, 10.0, 1.0]]),
                      rewards=t([[0.5, 1.0, 0.0, 9.0]]), mask=torch.tensor([[True, True, True, False]]))


def test_pro_dynamic_temperature_by_hand():
    # Step 0: gaps (0.5, 1.0), top multiplier 1.0: scores (-1, -1, -3) -> log(2 + e^-2) = 0.758624.
    # Step 1: gap 0.5, top 0.5: scores (-1, -1.5) -> log(1 + e^-0.5) = 0.474077.
    assert close(loss_of("pro", pro_three(), sft_weight=0.0, dynamic_temperature=True), 1.232701)


def test_pro_dynamic_temperature_ties_give_no_ranking_gradient():
    batch = pro_three()
    batch = GroupBatch(**{**batch.__dict__, "rewards": t([[1.0, 1.0, 1.0, 9.0]]),
                          "logps": batch.logps.clone().requires_grad_()})
    loss, _ = LOSSES["pro"].fn(batch, sft_weight=0.0, dynamic_temperature=True)
    loss.sum().backward()
    assert close(loss, math.log(3) + math.log(2))  # every score multiplied by a zero gap
    assert batch.logps.grad.abs().sum() == 0


@pytest.mark.parametrize("log_base, expected", [(2.0, 2.382675), (math.e, 3.437474)])
def test_lipo_toy(log_base, expected):
    assert close(loss_of("lipo", toy(), beta=0.1, log_base=log_base), expected)


# ---------------------------------------------------------------------------------------------
# Preference-based: mmpo target=pref (with DNO's and Curry-DPO's worked numbers), gpo, tripo


def with_rewards(batch: GroupBatch, rewards) -> GroupBatch:
    return GroupBatch(**{**batch.__dict__, "rewards": t([list(rewards)])})


def exact(value: torch.Tensor, expected: float) -> bool:
    """Equal to a worked number given to six decimals (or to 1e-6 relative for large ones)."""
    return abs(float(value) - expected) <= 1e-6 * max(1.0, abs(expected))


@pytest.mark.parametrize("j, expected", [(1, 0.609083), (2, 0.805439), (3, 0.486628)])
def test_mmpo_pref_target_p1(j, expected):
    loss, metrics = LOSSES["mmpo"].fn(toy(slots=(0, j)), beta=0.1, target="pref")
    assert exact(loss, expected)
    assert exact(metrics["soft_target"], float(torch.sigmoid(t(TOY_PREF[0][j]))))


def test_mmpo_pref_target_of_a_scalar_reward_is_the_reward_target():
    batch = toy()
    for gamma in (0.3, 2.2):
        scaled = GroupBatch(**{**batch.__dict__, "pref_logits": t(scalar_to_logits([gamma * r for r in TOY_R]))[None]})
        assert torch.allclose(loss_of("mmpo", scaled, target="pref"), loss_of("mmpo", batch, gamma=gamma), atol=1e-12)


def test_mmpo_pref_target_lets_a_cycle_pull_a_negative_up():
    # At h = 0 the gradient on h_j is beta * (p - 1/2) / n: response 2 beats the positive in P1
    # (p = 0.27), so its log-prob goes up, while the reward target pushes every negative down.
    grads = {}
    for target in ("pref", "reward"):
        batch = toy(lp=TOY_REF)
        batch.logps.requires_grad_(True)
        LOSSES["mmpo"].fn(batch, beta=0.1, gamma=1.0, target=target)[0].sum().backward()
        grads[target] = batch.logps.grad[0]
    assert grads["pref"][2] < 0 < grads["pref"][1] and grads["pref"][3] > 0
    assert (grads["reward"][1:] > 0).all()
    p02 = 1 / (1 + math.exp(1.0))
    assert close(grads["pref"][2], 0.1 * (p02 - 0.5) / 3, 1e-12)


def test_mmpo_pref_target_needs_pref_logits():
    batch = GroupBatch(**{**toy().__dict__, "pref_logits": None})
    with pytest.raises(ValueError, match="target='pref' needs pref_logits"):
        LOSSES["mmpo"].fn(batch, target="pref")
    bad = GroupBatch(**{**toy().__dict__, "pref_logits": torch.zeros(1, 4, 3, dtype=DEFAULT_DTYPE)})
    with pytest.raises(ValueError, match=r"pref_logits has shape \(1, 4, 3\), expected \[1, 4, 4\]"):
        LOSSES["mmpo"].fn(bad, target="pref")


def test_dno_d1_with_win_rate_rewards():
    # DNO (example D1): rewards = win_rate of P1; soft form = mmpo with gamma = 1, hard form (Prct) = dpo.
    win_rate = aggregate(TOY_PREF, "win_rate")
    assert exact(t(win_rate[0] - win_rate[3]), 0.536568)
    assert exact(loss_of("dpo", toy(slots=(0, 3)), beta=0.1), 0.403186)
    for j, p, expected in [(1, 0.514415, 0.700031), (2, 0.507209, 0.710132), (3, 0.631014, 0.661476)]:
        pair = with_rewards(toy(slots=(0, j)), win_rate[[0, j]])
        loss, metrics = LOSSES["mmpo"].fn(pair, beta=0.1, gamma=1.0)
        assert exact(metrics["soft_target"], p) and exact(loss, expected)


def test_curry_dpo_c1_stage_losses():
    # Curry-DPO (example C1): stage 1 trains (0, 3); with the stage-1 model as reference every pair starts at
    # log 2; later in stage 2, pair (0, 2) with lp [-38, -63] against reference [-39, -61].
    assert exact(loss_of("dpo", toy(slots=(0, 3)), beta=0.1), 0.403186)
    restart = GroupBatch(**{**toy().__dict__, "ref_logps": t([TOY_LP])[None]})
    assert torch.allclose(loss_of("dpo", restart, beta=0.1), t([math.log(2)]), atol=1e-12)
    later = GroupBatch(logps=t([[-38.0, -63.0]]), lengths=t([[40.0, 40.0]]), rewards=t([[2.0, -0.5]]),
                       mask=torch.ones(1, 2, dtype=torch.bool), ref_logps=t([[[-39.0, -61.0]]]))
    assert exact(loss_of("dpo", later, beta=0.1), 0.554355)


@pytest.mark.parametrize(
    "beta, form, expected",
    [
        (1.0, "pair", 2.28125), (1.0, "group", 4.15625),  # eta = 1
        (0.5, "pair", 0.625), (0.5, "group", 5.875),  # eta = 2
        (0.001, "pair", 5263764.5),  # GPO's beta: targets in the thousands
    ],
)
def test_gpo_spec_examples(beta, form, expected):
    batch = with_rewards(toy(), aggregate(TOY_PREF, "mean_logit"))  # s = [1.25, 0.75, 1.0, -3.0]
    assert exact(loss_of("gpo", batch, beta=beta, form=form), expected)


def test_gpo_sppo_variant():
    batch = with_rewards(toy(), aggregate(TOY_PREF, "win_rate_self"))
    assert exact(loss_of("gpo", batch, beta=1.0, center=0.5), 12.885962)


def test_gpo_clamp_by_hand():
    # eta = 1000: targets 1250 and -3000 clip to +-1000 -> 1/2 [(2 - 1000)^2 + (-5 + 1000)^2].
    batch = with_rewards(toy(), aggregate(TOY_PREF, "mean_logit"))
    assert exact(loss_of("gpo", batch, beta=0.001, clamp=1000.0), 993014.5)
    assert exact(loss_of("gpo", batch, beta=0.001, clamp=5000.0), 5263764.5)  # no target reaches it


def test_gpo_pair_uses_the_lowest_reward_negative_not_the_last_slot():
    scores = aggregate(TOY_PREF, "mean_logit")
    in_order = loss_of("gpo", with_rewards(toy(), scores), beta=1.0)
    scrambled = loss_of("gpo", with_rewards(toy(slots=(0, 3, 1, 2)), scores[[0, 3, 1, 2]]), beta=1.0)
    assert torch.allclose(in_order, scrambled, atol=1e-12)
    for form in ("pair", "group"):  # with K = 2 both forms are the same pair
        pair = with_rewards(toy(slots=(0, 3)), scores[[0, 3]])
        assert exact(loss_of("gpo", pair, beta=1.0, form=form), 2.28125)


def test_gpo_gradient_is_the_regression_residual():
    batch = with_rewards(toy(), aggregate(TOY_PREF, "mean_logit"))
    batch.logps.requires_grad_(True)
    loss_of("gpo", batch, beta=1.0, form="group").sum().backward()
    residual = t([2 - 1.25, -1 - 0.75, -2 - 1.0, -5 + 3.0])
    assert torch.allclose(batch.logps.grad[0], 2 * residual / 4, atol=1e-12)


@pytest.mark.parametrize("beta, alpha, expected, pair", [(0.1, 0.5, 0.578890, 0.078890), (0.2, 0.9, 0.906715, None)])
def test_tripo_spec_t1(beta, alpha, expected, pair):
    # gold = response 0 (NLL 40/40 = 1), chosen = response 1, rejected = response 3: z = 25 beta.
    loss, metrics = LOSSES["tripo"].fn(toy(), beta=beta, alpha=alpha)
    assert exact(loss, expected)
    assert exact(metrics["nll"], 1.0)
    if pair is not None:
        assert exact(metrics["pair_loss"], pair)


def test_tripo_picks_chosen_and_rejected_by_reward_not_slot():
    expected = loss_of("tripo", toy(), beta=0.1, alpha=0.5)
    for slots in [(0, 3, 2, 1), (0, 2, 1, 3), (0, 3, 1, 2)]:
        assert torch.allclose(loss_of("tripo", toy(slots=slots), beta=0.1, alpha=0.5), expected, atol=1e-12)


def test_tripo_length_norm_is_tpo_l_by_hand():
    # avg_w = -55/50, avg_l = -80/64: z = 0.1 * 0.15 - 0.5.
    z = 0.1 * (-55 / 50 + 80 / 64) - 0.5
    expected = math.log1p(math.exp(-z)) + 0.5 * 1.0
    assert close(loss_of("tripo", toy(), beta=0.1, alpha=0.5, length_norm=True), expected, 1e-12)
    # gamma only enters the length-normalised form
    assert torch.equal(loss_of("tripo", toy(), gamma=0.0), loss_of("tripo", toy(), gamma=3.0))


def test_tripo_ties_pick_distinct_chosen_and_rejected():
    # All negatives tie: chosen = first valid negative (slot 1), rejected = last (slot 3).
    batch = with_rewards(toy(), [2.0, 0.0, 0.0, 0.0])
    z = 0.1 * (TOY_LP[1] - TOY_LP[3])
    _, metrics = LOSSES["tripo"].fn(batch, beta=0.1)
    assert close(metrics["pair_loss"], math.log1p(math.exp(-z)), 1e-12)


def test_tripo_nll_is_per_prompt_not_pooled():
    # NLL per prompt vs pooled: golds (-40 over 40 tokens) and (-30 over 10): per-prompt mean 2.0, pooled 70/50 = 1.4.
    second = toy()
    second.logps[0, 0], second.lengths[0, 0] = -30.0, 10.0
    loss, metrics = compute("tripo", stack([toy(), second]), alpha=1.0)
    assert exact(metrics["nll"], 2.0)


def test_tripo_needs_two_negatives():
    with pytest.raises(ValueError, match="'tripo': some group has fewer than 2 valid negatives"):
        compute("tripo", toy(slots=(0, 1)))
    ragged = toy()
    ragged.mask[0, 2:] = False
    with pytest.raises(ValueError, match="needs >= 3 responses"):
        compute("tripo", ragged)


# ---------------------------------------------------------------------------------------------
# grpo: GRPO with GSPO's sequence-level ratio. Numbers derived by hand (and NumPy) from
# docs/losses.md: A = (r - mean r) / (std r + 1e-4), s = exp((lp - old) / L),
# obj = min(s A, clip(s, 1 - eps_low, 1 + eps_high) A), L = -mean obj + kl * mean k3.

GRPO_LP = [-10.0, -12.0, -15.0, -20.0]
GRPO_OLD = [-10.5, -12.0, -14.0, -20.2]
GRPO_REF = [-11.0, -12.5, -14.5, -19.0]
GRPO_LEN = [5.0, 6.0, 5.0, 10.0]
GRPO_R = [2.0, 1.0, -0.5, -1.5]
GRPO_A = [1.125646, 0.48242, -0.48242, -1.125646]
GRPO_S = [1.105171, 1.0, 0.818731, 1.020201]
GRPO_K3 = [0.018731, 0.003378, 0.005171, 0.005171]
WIDE = {"eps_low": 0.2, "eps_high": 0.2}  # no ratio of the toy is clipped


def grpo_toy(lp=GRPO_LP, old=GRPO_OLD, ref=GRPO_REF, lengths=GRPO_LEN, rewards=GRPO_R) -> GroupBatch:
    return GroupBatch(logps=t([lp]), lengths=t([lengths]), rewards=t([rewards]),
                      mask=torch.ones(1, len(lp), dtype=torch.bool), ref_logps=t([[ref]]), old_logps=t([old]))


def test_grpo_advantages_by_hand():
    mask = torch.ones(1, 4, dtype=torch.bool)
    advantages, flat = grpo_advantages(t([GRPO_R]), mask)
    assert torch.allclose(advantages, t([GRPO_A]), atol=1e-6) and not flat.any()
    centered, _ = grpo_advantages(t([GRPO_R]), mask, scale="none")  # Dr. GRPO
    assert torch.allclose(centered, t([[1.75, 0.75, -0.75, -1.75]]))
    mask[0, 3] = False
    advantages, _ = grpo_advantages(t([[2.0, 1.0, -0.5, math.nan]]), mask)
    assert torch.allclose(advantages, t([[0.927099, 0.132443, -1.059542, 0.0]]), atol=1e-6)


@pytest.mark.parametrize("hparams, expected", [
    ({}, 0.005536),  # GSPO's clip 3e-4 / 4e-4: the ratios of slots 0 and 2 are clipped
    (WIDE, -0.045773),
    ({**WIDE, "kl": 0.04}, -0.045449),
    ({**WIDE, "scale": "none"}, -0.071162),
])
def test_grpo_toy(hparams, expected):
    assert close(compute("grpo", grpo_toy(), **hparams)[0], expected)


def test_grpo_toy_ratios_and_clip_fraction():
    lp = t([GRPO_LP]).requires_grad_(True)
    batch = GroupBatch(**{**grpo_toy().__dict__, "logps": lp})
    loss, metrics = LOSSES["grpo"].fn(batch, **WIDE)
    (grad,) = torch.autograd.grad(loss.sum(), lp)
    # unclipped: d(-mean s_i A_i)/d lp_i = -s_i A_i / (L_i n), so s_i = -grad_i L_i n / A_i
    ratios = -grad[0] * t(GRPO_LEN) * 4 / t(GRPO_A)
    assert torch.allclose(ratios, t(GRPO_S), atol=1e-5)
    assert close(metrics["ratio"], sum(GRPO_S) / 4) and close(metrics["clip_fraction"], 0.0)
    _, metrics = LOSSES["grpo"].fn(grpo_toy())  # default clip: slot 0 (A > 0, s > 1 + 4e-4) and
    assert close(metrics["clip_fraction"], 0.5)  # slot 2 (A < 0, s < 1 - 3e-4) are clipped
    assert metrics["zero_signal_groups"] == 0 and "kl_k3" not in metrics


def test_grpo_k3_per_response_via_single_response_groups():
    # A single response has A = 0, so with kl = 1 each group's loss is exactly its k3.
    singles = GroupBatch(logps=t([GRPO_LP]).T, lengths=t([GRPO_LEN]).T, rewards=t([GRPO_R]).T,
                         mask=torch.ones(4, 1, dtype=torch.bool), ref_logps=t([GRPO_REF]).T[None],
                         old_logps=t([GRPO_OLD]).T)
    losses, metrics = LOSSES["grpo"].fn(singles, kl=1.0)
    assert torch.allclose(losses, t(GRPO_K3), atol=1e-6)
    assert close(metrics["kl_k3"], sum(GRPO_K3) / 4) and metrics["zero_signal_groups"] == 4
    assert "reward_accuracy" not in metrics  # no group has a negative to compare with


def test_grpo_with_the_last_response_masked():
    batch = grpo_toy()
    batch.mask[0, 3] = False
    for field in ("logps", "old_logps", "rewards", "lengths"):
        getattr(batch, field)[0, 3] = math.nan
    batch.ref_logps[0, 0, 3] = math.inf
    assert close(LOSSES["grpo"].fn(batch, **WIDE)[0], -0.096522)


@pytest.mark.parametrize("hparams", [{}, WIDE, {**WIDE, "kl": 0.04}, {"scale": "none", "kl": 0.5}])
def test_grpo_gradcheck(hparams):
    batch = grpo_toy()
    batch.mask[0, 3] = False  # a masked slot on the way

    def fn(lp):
        return LOSSES["grpo"].fn(GroupBatch(**{**batch.__dict__, "logps": lp}), **hparams)[0]

    assert torch.autograd.gradcheck(fn, (t([GRPO_LP]).requires_grad_(True),), eps=1e-7, atol=1e-6)


def test_grpo_gradient_at_ratio_one_is_reinforce_with_a_group_baseline():
    # With lp = old every s = 1, inside any clip, and d loss / d lp_i = -A_i / (L_i * n_valid): the
    # REINFORCE gradient of -(1/n) sum_i A_i * lp_i / L_i with the group-normalised advantage.
    batch = stack([grpo_toy(old=GRPO_LP), grpo_toy(old=GRPO_LP, rewards=[0.0, 3.0, 1.0, 5.0])])
    batch.mask[1, 2] = False
    batch.logps.requires_grad_(True)
    loss, metrics = LOSSES["grpo"].fn(batch)
    loss.sum().backward()
    advantages, _ = grpo_advantages(batch.rewards, batch.mask)
    expected = -advantages / (batch.lengths * batch.mask.sum(-1, keepdim=True))
    assert torch.allclose(batch.logps.grad, expected, atol=1e-12)
    assert torch.allclose(loss, torch.zeros(2, dtype=DEFAULT_DTYPE), atol=1e-12)  # mean_i A_i = 0
    assert close(metrics["ratio"], 1.0) and close(metrics["clip_fraction"], 0.0)


@pytest.mark.parametrize("scale", ["std", "none"])
def test_grpo_equal_rewards_give_zero_loss_and_zero_gradient(scale):
    # 0.1 three times: the float mean is not exactly 0.1, yet A must be exactly 0
    batch = stack([grpo_toy(rewards=[0.1, 0.1, 0.1, 0.1]), grpo_toy(rewards=[0.1, 0.1, 0.1, 7.0])])
    batch.mask[1, 3] = False
    batch.logps.requires_grad_(True)
    loss, metrics = LOSSES["grpo"].fn(batch, scale=scale, **WIDE)
    loss.sum().backward()
    assert (loss == 0).all() and (batch.logps.grad == 0).all()
    assert metrics["zero_signal_groups"] == 2


def test_grpo_single_response_groups_are_finite_zero():
    one = GroupBatch(logps=t([[-3.0]]).requires_grad_(True), lengths=t([[2.0]]), rewards=t([[1.0]]),
                     mask=torch.ones(1, 1, dtype=torch.bool), old_logps=t([[-4.0]]))
    loss, metrics = compute("grpo", one)
    loss.backward()
    assert loss == 0 and one.logps.grad == 0
    assert all(torch.isfinite(v) for v in metrics.values()) and metrics["zero_signal_groups"] == 1
    mixed = grpo_toy()  # a ragged batch: the second group keeps only its slot 0
    mixed = stack([mixed, GroupBatch(**{**mixed.__dict__, "mask": t([[1, 0, 0, 0]]).bool()})])
    losses, metrics = LOSSES["grpo"].fn(mixed)
    assert losses[1] == 0 and torch.isfinite(losses).all() and metrics["zero_signal_groups"] == 1


def test_grpo_needs_old_logps_and_references_only_with_kl():
    spec = LOSSES["grpo"]
    assert spec.old and spec.refs == 1 and spec.negatives == 0
    assert spec.needs_refs({}) == 0 and spec.needs_refs({"kl": 0.0}) == 0 and spec.needs_refs({"kl": 0.1}) == 1
    assert not spec.needs_eos({})
    no_old = GroupBatch(**{**grpo_toy().__dict__, "old_logps": None})
    with pytest.raises(ValueError, match="'grpo' needs the sampling policy's log-probs .*old_logps is None"):
        compute("grpo", no_old)
    with pytest.raises(ValueError, match="old_logps is None"):
        LOSSES["grpo"].fn(no_old)
    with pytest.raises(ValueError, match="old_logps has shape"):
        compute("grpo", GroupBatch(**{**grpo_toy().__dict__, "old_logps": t([[-1.0, -2.0]])}))
    no_ref = GroupBatch(**{**grpo_toy().__dict__, "ref_logps": None})
    assert torch.isfinite(compute("grpo", no_ref)[0])  # kl = 0 reads no reference


def test_declared_capabilities_of_every_loss():
    """What each loss needs is declared on its spec; callers ask it, not the loss's name."""
    for name, spec in LOSSES.items():
        assert spec.needs_refs() == (0 if name == "grpo" else spec.refs), name
        assert spec.needs_eos() is False, name
    assert {name for name, spec in LOSSES.items() if spec.needs_eos({"eos_reg": "targeted"})} == {"ampo", "refa"}
    assert LOSSES["ampo"].needs_eos({"eos_reg": "independent"}) and not LOSSES["refa"].needs_eos({"eos_reg": "none"})
    with pytest.raises(ValueError, match="needs eos_logps in the batch"):
        compute("refa", toy(), eos_reg="independent")


# ---------------------------------------------------------------------------------------------
# Masks, batching, gradients


def padded_with_garbage() -> tuple[GroupBatch, GroupBatch]:
    """The toy group minus response 2, compact (K=3) and padded to K=5 with garbage slots."""
    compact = toy(slots=(0, 1, 3))
    nan, inf = math.nan, math.inf
    order = [0, None, 1, 2, None]  # compact slot for each padded slot; None = empty

    def pad(x: torch.Tensor, garbage: float) -> torch.Tensor:
        cols = [x[..., i] if i is not None else torch.full_like(x[..., 0], garbage) for i in order]
        return torch.stack(cols, dim=-1)

    def pad_rows(x: torch.Tensor, garbage: float) -> torch.Tensor:  # [B, K, K] -> [B, 5, 5]
        rows = [x[:, i] if i is not None else torch.full_like(x[:, 0], garbage) for i in order]
        return pad(torch.stack(rows, dim=1), garbage)

    padded = GroupBatch(
        logps=pad(compact.logps, nan).index_put_((torch.tensor([0]), torch.tensor([4])), t(inf)),
        lengths=pad(compact.lengths, 0.0),
        rewards=pad(compact.rewards, inf),
        mask=t([[1, 0, 1, 1, 0]]).bool(),
        ref_logps=pad(compact.ref_logps, nan),
        pref_logits=pad_rows(compact.pref_logits, nan),
        old_logps=pad(compact.old_logps + t([[0.5, -0.3, 1.0]]), inf),  # ratios away from 1
    )
    compact.old_logps = compact.old_logps + t([[0.5, -0.3, 1.0]])
    return compact, padded


# every loss with its defaults, plus the options that take another code path
VARIANTS = [(name, {}) for name in sorted(LOSSES)] + [
    ("pro", {"dynamic_temperature": True}), ("mrpo", {"naive": True}), ("mmpo", {"target": "pref"}),
    ("gpo", {"form": "group"}), ("gpo", {"clamp": 1500.0}), ("tripo", {"length_norm": True}),
    ("grpo", {"scale": "none", "eps_low": 0.2, "eps_high": 0.2, "kl": 0.04}),
]
VARIANT_IDS = [name + "".join(f"-{k}" for k in hp) for name, hp in VARIANTS]


@pytest.mark.parametrize("name, hparams", VARIANTS, ids=VARIANT_IDS)
def test_masked_slots_change_nothing(name, hparams):
    compact, padded = padded_with_garbage()
    compact.logps.requires_grad_(True)
    padded.logps.requires_grad_(True)
    loss_c, metrics_c = LOSSES[name].fn(compact, **hparams)
    loss_p, metrics_p = LOSSES[name].fn(padded, **hparams)
    assert torch.isfinite(loss_p).all()
    assert torch.allclose(loss_c, loss_p, atol=1e-10)
    for key in metrics_c:
        assert torch.allclose(metrics_c[key], metrics_p[key], atol=1e-10), key
    loss_c.sum().backward()
    loss_p.sum().backward()
    grad_p = padded.logps.grad
    assert torch.isfinite(grad_p).all()
    assert (grad_p[0, [1, 4]] == 0).all()
    assert torch.allclose(compact.logps.grad[0], grad_p[0, [0, 2, 3]], atol=1e-10)


@pytest.mark.parametrize("name, hparams", VARIANTS, ids=VARIANT_IDS)
def test_batch_equals_stacked_single_prompts(name, hparams):
    groups = [toy(), toy(slots=(1, 0, 2, 3)), toy(slots=(0, 2, 1, 3), lp=[-41.0, -50, -61, -70])]
    groups[1].mask[0, 3] = False  # a ragged group
    batch = stack(groups)
    losses, _ = LOSSES[name].fn(batch, **hparams)
    singles = torch.cat([LOSSES[name].fn(g, **hparams)[0] for g in groups])
    assert losses.shape == (3,)
    assert torch.allclose(losses, singles, atol=1e-10)


@pytest.mark.parametrize("name", sorted(PAIRWISE))
def test_pairwise_losses_average_over_pairs(name):
    pairs = [LOSSES[name].fn(toy(slots=(0, j)))[0] for j in (1, 2, 3)]
    assert torch.allclose(LOSSES[name].fn(toy())[0], torch.stack(pairs).mean(0), atol=1e-10)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_push_positive_up_and_worst_down(name):
    # Start of training: the policy equals the (primary) reference, so h = 0 everywhere.
    batch = toy(lp=TOY_REF)
    batch.logps.requires_grad_(True)
    loss, _ = LOSSES[name].fn(batch)
    loss.sum().backward()
    grad = batch.logps.grad[0]
    assert torch.isfinite(grad).all()
    assert grad[0] < 0, "the positive's log-prob must go up"
    assert grad[3] > 0, "the lowest-reward response's log-prob must go down"
    if LOSSES[name].pairwise or name == "ampo":
        assert (grad[1:] > 0).all(), "every negative's log-prob must go down"


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_gradient_step_lowers_the_loss(name):
    batch = toy(lp=TOY_REF)
    batch.logps.requires_grad_(True)
    loss = LOSSES[name].fn(batch)[0].sum()
    (grad,) = torch.autograd.grad(loss, batch.logps)
    stepped = GroupBatch(**{**batch.__dict__, "logps": batch.logps.detach() - 1e-3 * grad})
    assert LOSSES[name].fn(stepped)[0].sum() < loss


def test_k2_ampo_with_gamma_1_is_simpo_without_margin():
    pairs = stack([toy(slots=(0, j)) for j in (1, 2, 3)])
    for beta in (0.5, 2.0, 10.0):
        ampo = loss_of("ampo", pairs, beta=beta, gamma=1.0, alpha=0.0)
        simpo = loss_of("simpo", pairs, beta=beta, gamma=0.0)
        assert torch.allclose(ampo, simpo, atol=1e-12)


def test_k2_infonca_with_hard_labels_is_dpo():
    pairs = stack([toy(slots=(0, j)) for j in (1, 2, 3)])
    for beta in (0.01, 0.1, 1.0):
        infonca = loss_of("infonca", pairs, beta=beta, temperature=1e-6)
        assert torch.allclose(infonca, loss_of("dpo", pairs, beta=beta), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Metrics, table, validation


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_metrics_are_detached_scalars(name):
    batch = toy()
    batch.logps.requires_grad_(True)
    _, metrics = LOSSES[name].fn(batch)
    assert {"reward_accuracy", "margin"} <= set(metrics)
    for key, value in metrics.items():
        assert value.dim() == 0 and not value.requires_grad and torch.isfinite(value), key


def test_reward_accuracy_and_margin_use_the_implicit_scores():
    # DPO scores 0.1*h = [0.2, -0.1, -0.2, -0.5]: every negative is below the positive.
    _, metrics = LOSSES["dpo"].fn(toy())
    assert close(metrics["reward_accuracy"], 1.0)
    assert close(metrics["margin"], (0.3 + 0.4 + 0.7) / 3)
    # Slot order (1, 0, ...) makes response 1 the positive: h = -1 is below h = 2 and -2 only.
    _, metrics = LOSSES["dpo"].fn(toy(slots=(1, 0, 2, 3)))
    assert close(metrics["reward_accuracy"], 2 / 3)


def test_table_flags_follow_the_contract():
    assert {name for name, spec in LOSSES.items() if spec.pairwise} == PAIRWISE
    assert {name: spec.refs for name, spec in LOSSES.items() if spec.refs != 1} == {
        "ampo": 0,
        "refa": 0,
        "simpo": 0,
        "pro": 0,
        "mrpo": 2,
        "tripo": 0,
    }
    assert {n for n, s in LOSSES.items() if s.length_normalized} == {"ampo", "refa", "simpo", "pro", "grpo"}
    assert {name: spec.negatives for name, spec in LOSSES.items() if spec.negatives != 1} == {"tripo": 2, "grpo": 0}
    assert {name for name, spec in LOSSES.items() if spec.old} == {"grpo"}
    assert all(spec.description for spec in LOSSES.values())


def test_compute_merges_defaults_and_averages_over_prompts():
    batch = stack([toy(), toy(slots=(0, 2, 1, 3))])
    loss, metrics = compute("ampo", batch, beta=2.0)
    per_prompt, _ = LOSSES["ampo"].fn(batch, beta=2.0, gamma=3.0, alpha=0.0)
    assert loss.dim() == 0 and torch.allclose(loss, per_prompt.mean())
    assert "reward_accuracy" in metrics


def test_unknown_hyperparameter_is_refused_with_the_allowed_names():
    with pytest.raises(ValueError, match=r"'bta'.*'ampo'.*allowed: alpha, beta, eos_lambda, eos_reg, gamma"):
        compute("ampo", toy(), bta=1.0)
    with pytest.raises(ValueError, match="'tau'"):
        resolve_hparams("ipo", {"tau": 0.1})


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="unknown loss 'dpoo'"):
        compute("dpoo", toy())


REF_CASES = [(n, {}) for n, s in sorted(LOSSES.items()) if s.needs_refs()] + [("grpo", {"kl": 0.04})]


@pytest.mark.parametrize("name, hparams", REF_CASES)
def test_missing_references_are_refused(name, hparams):
    batch = GroupBatch(**{**toy().__dict__, "ref_logps": None})
    with pytest.raises(ValueError, match=f"'{name}' needs .*reference"):
        compute(name, batch, **hparams)
    with pytest.raises(ValueError, match="reference"):
        LOSSES[name].fn(batch, **hparams)


def test_mrpo_refuses_a_single_reference():
    batch = toy()
    one = GroupBatch(**{**batch.__dict__, "ref_logps": batch.ref_logps[:1]})
    with pytest.raises(ValueError, match=r"'mrpo' needs ref_logps of shape \[R>=2"):
        compute("mrpo", one)


def test_reference_free_losses_ignore_missing_references():
    batch = GroupBatch(**{**toy().__dict__, "ref_logps": None})
    for name in ("ampo", "simpo", "pro", "tripo", "grpo"):  # grpo: kl = 0 by default
        assert torch.isfinite(compute(name, batch)[0])


def test_bad_groups_are_refused():
    masked_positive = toy()
    masked_positive.mask[0, 0] = False
    with pytest.raises(ValueError, match="slot 0"):
        compute("ampo", masked_positive)
    lonely = toy()
    lonely.mask[0, 1:] = False
    with pytest.raises(ValueError, match="no valid negative"):
        compute("dpo", lonely)


@pytest.mark.parametrize(
    "name, hparams, message",
    [
        ("ampo", {"gamma": 0.0}, "gamma must be > 0"),
        ("swepo", {"dev_fn": "cubic"}, "dev_fn must be one of signed, abs, square"),
        ("ipo", {"beta": 0.0}, "beta must be > 0"),
        ("infonca", {"temperature": -1.0}, "temperature must be > 0"),
        ("lipo", {"log_base": 1.0}, "log_base must be > 1"),
        ("mrpo", {"alpha": 1.5}, "alpha must be < 0"),
        ("pro", {"sft_weight": -0.1}, "sft_weight must be >= 0"),
        ("mmpo", {"target": "judge"}, "target must be one of reward, pref"),
        ("gpo", {"beta": 0.0}, "beta must be > 0"),
        ("gpo", {"form": "triple"}, "form must be one of pair, group"),
        ("gpo", {"clamp": 0.0}, "clamp must be > 0"),
        ("tripo", {"alpha": -0.5}, "alpha must be >= 0"),
        ("grpo", {"scale": "mad"}, "scale must be one of std, none"),
        ("grpo", {"eps_low": -0.1}, "eps_low and eps_high must be >= 0"),
        ("grpo", {"kl": -1.0}, "kl must be >= 0"),
    ],
)
def test_bad_hyperparameter_values_are_refused(name, hparams, message):
    with pytest.raises(ValueError, match=message):
        compute(name, toy(), **hparams)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_check_hparams_accepts_every_default(name):
    check_hparams(name, {})


def test_check_hparams_refuses_values_without_a_batch():
    # options that need optional batch fields pass: the probe batch has them all
    check_hparams("ampo", {"eos_reg": "targeted"})
    check_hparams("mmpo", {"target": "pref"})
    check_hparams("grpo", {"kl": 0.1})  # the probe has references and old log-probs
    with pytest.raises(ValueError, match="scale must be one of std, none"):
        check_hparams("grpo", {"scale": "rank"})
    with pytest.raises(ValueError, match="clamp must be > 0, got -1"):
        check_hparams("gpo", {"clamp": -1.0})
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        check_hparams("tripo", {"margin": 1.0})


def test_low_precision_inputs_are_computed_in_float32():
    batch = toy()
    half = GroupBatch(
        logps=batch.logps.bfloat16(),
        lengths=batch.lengths.int(),
        rewards=batch.rewards.float(),
        mask=batch.mask,
        ref_logps=batch.ref_logps.bfloat16(),
    )
    loss, _ = LOSSES["ampo"].fn(half)
    assert loss.dtype == torch.float32
    assert close(loss, 0.862935, 1e-4)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_extreme_log_probs_stay_finite(name):
    # Log-ratios in the thousands saturate every sigmoid and softmax; nothing may overflow.
    for lp in ([-1.0, -9000.0, -8000.0, -7000.0], [-9000.0, -1.0, -2.0, -3.0]):
        batch = GroupBatch(**{**toy().__dict__, "logps": t([lp]).float().requires_grad_(True)})
        loss, metrics = LOSSES[name].fn(batch)
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(batch.logps.grad).all()
        assert all(torch.isfinite(v) for v in metrics.values())


def test_the_docs_loss_table_matches_the_registry():
    """docs/losses.md's columns refs, rewards, len-norm and pairwise say what `LOSSES` declares."""
    docs = Path(__file__).resolve().parents[1] / "docs" / "losses.md"
    table = {}
    for line in docs.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| `") and cells[0].strip("`") in LOSSES:
            table[cells[0].strip("`")] = cells[-6:-2]
    assert set(table) == set(LOSSES)
    for name, spec in LOSSES.items():
        refs, rewards, normalized, pairwise = table[name]
        yes = {"yes": True, "no": False}
        assert (int(refs), yes[rewards], yes[normalized], yes[pairwise.split()[0]]) == (
            spec.refs, spec.uses_rewards, spec.length_normalized, spec.pairwise), name
