"""Listwise objectives over the reward ranking of the group (PRO, LiPO-lambda) and the regression
of log-ratios onto preference scores (GPO / SPPO). Formulas: docs/losses.md."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .batch import (GPO_FORMS, GroupBatch, Metrics, _at, _extreme_negatives, _list_diff, _masked_fill, _masked_mean,
                    _metrics, _positive, _prepare)


def pro_loss(
    batch: GroupBatch, sft_weight: float | None = None, dynamic_temperature: bool = False
) -> tuple[Tensor, Metrics]:
    """PRO (arXiv 2306.17492): Plackett-Luce over the valid responses sorted by reward, plus SFT.

    ``L_rank = -sum_k log( e^{avg_k} / sum_{i>=k} e^{avg_i} )`` over the reward order (descending,
    ties keep slot order), ``L = L_rank + sft_weight * NLL(top)`` with the per-token NLL
    ``-avg(top)``. ``sft_weight=None`` means ``0.05 * (n - 1)^2`` for a group of n responses.
    ``dynamic_temperature=True`` divides each score by PRO's temperature from reward gaps: in the
    step for rank k, ``avg_i`` by ``T_k^i = 1/(r_k - r_i)`` and ``avg_k`` by ``T_k^k = min_i T_k^i``.
    """
    if sft_weight is not None and sft_weight < 0:
        raise ValueError(f"hyperparameter sft_weight must be >= 0 or None, got {sft_weight}")
    g = _prepare(batch, "pro")
    avg = g.avg
    by_reward = g.rewards.masked_fill(~g.mask, -math.inf)
    order = torch.sort(by_reward, dim=-1, descending=True, stable=True).indices
    ranked = avg.gather(-1, order)
    valid = g.mask.gather(-1, order)  # valid slots come first
    if dynamic_temperature:
        rank_loss = _pro_dynamic_rank_loss(ranked, g.rewards.gather(-1, order), valid)
    else:
        suffix_lse = torch.logcumsumexp(_masked_fill(ranked, valid).flip(-1), dim=-1).flip(-1)
        # The last valid position contributes log(1) = 0, so summing over all valid ones is exact.
        rank_loss = -torch.where(valid, ranked - suffix_lse, 0.0).sum(-1)
    nll = -ranked[:, 0]
    n = g.mask.sum(-1).to(avg.dtype)
    weight = 0.05 * (n - 1) ** 2 if sft_weight is None else torch.full_like(n, float(sft_weight))
    loss = rank_loss + weight * nll
    return loss, _metrics(g, _list_diff(avg), rank_loss=rank_loss, sft_loss=nll)


def _pro_dynamic_rank_loss(ranked: Tensor, rewards: Tensor, valid: Tensor) -> Tensor:
    """PRO's ranking loss with reward-gap temperatures, for scores and rewards sorted by reward.

    Step k scores ``avg_i * (r_k - r_i)`` for i > k and ``avg_k * max_i (r_k - r_i)``; its loss is
    the log-sum-exp of those minus the top one's. Returns the sum over steps ``[B]``.
    """
    n = ranked.shape[-1]
    later = torch.ones(n, n, dtype=torch.bool, device=ranked.device).triu(1) & valid[:, None, :]  # [B, k, i]
    gap = (rewards[:, :, None] - rewards[:, None, :]).masked_fill(~later, 0.0)
    top = gap.max(-1).values  # [B, k]; 0 when no later valid response
    scores = (ranked[:, None, :] * gap).masked_fill(~later, -math.inf)
    top_score = ranked * top
    step = torch.logsumexp(torch.cat([top_score[..., None], scores], dim=-1), dim=-1) - top_score
    has_later = later.any(-1) & valid
    return torch.where(has_later, step, 0.0).sum(-1)


def _descending_ranks(score: Tensor) -> Tensor:
    """1-based rank of each entry when sorted by ``score`` descending (ties keep slot order)."""
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    return torch.argsort(order, dim=-1) + 1


def lipo_loss(
    batch: GroupBatch, beta: float = 0.1, log_base: float = 2.0
) -> tuple[Tensor, Metrics]:
    """LiPO-lambda (arXiv 2402.01878); reference ``ref_logps[0]``, labels ``psi = rewards``.

    ``s = beta*h``; ``L = -sum_{psi_i > psi_j} Delta_ij log sigma(s_i - s_j)`` with
    ``Delta_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|``, ``G = 2^psi - 1``,
    ``D(tau) = log_{log_base}(1 + tau)`` and ``tau`` the rank by the current ``s`` (no gradient).
    """
    if not log_base > 1:
        raise ValueError(f"hyperparameter log_base must be > 1, got {log_base}")
    g = _prepare(batch, "lipo", refs=1)
    s = beta * (g.logps - g.refs[0])
    with torch.no_grad():
        ranks = _descending_ranks(_masked_fill(s, g.mask)).to(s.dtype)
        inv_discount = math.log(log_base) / torch.log1p(ranks)
        gain = torch.pow(2.0, g.rewards) - 1
        delta = (gain[:, :, None] - gain[:, None, :]).abs() * (
            inv_discount[:, :, None] - inv_discount[:, None, :]
        ).abs()
        both_valid = g.mask[:, :, None] & g.mask[:, None, :]
        better = both_valid & (g.rewards[:, :, None] > g.rewards[:, None, :])
    pair_loss = -F.logsigmoid(s[:, :, None] - s[:, None, :])
    loss = torch.where(better, delta * pair_loss, 0.0).sum((-2, -1))
    return loss, _metrics(g, _list_diff(s))


# ---------------------------------------------------------------------------------------------
# Regression onto preference scores


def gpo_loss(
    batch: GroupBatch, beta: float = 0.001, center: float = 0.0, form: str = "pair",
    clamp: float | None = None,
) -> tuple[Tensor, Metrics]:
    """GPO / SPPO-style regression (arXiv 2410.02197, 2405.00675); reference ``ref_logps[0]``, scores ``s = rewards``.

    The log-ratio ``h = lp - ref`` regresses onto ``t = (s - center)/beta``, clipped to
    ``[-clamp, clamp]`` when ``clamp`` is set. ``form="pair"``:
    ``(1/2)[(h_0 - t_0)^2 + (h_l - t_l)^2]`` with ``l`` the lowest-reward valid negative (GPO's
    chosen and rejected); ``form="group"``: the mean of ``(h_i - t_i)^2`` over every valid slot.
    ``rewards`` should hold the ``mean_logit`` aggregate (center 0, GPO) or ``win_rate_self``
    (center 0.5, SPPO).
    """
    _positive("beta", beta)
    if form not in GPO_FORMS:
        raise ValueError(f"form must be one of {', '.join(GPO_FORMS)}, got {form!r}")
    if clamp is not None:
        _positive("clamp", clamp)
    g = _prepare(batch, "gpo", refs=1)
    h = g.logps - g.refs[0]
    target = (g.rewards - center) / beta
    if clamp is not None:
        target = target.clamp(-clamp, clamp)
    error = (h - target).square()
    if form == "pair":
        _, lowest = _extreme_negatives(g)
        loss = 0.5 * (error[:, 0] + _at(error, lowest))
    else:
        loss = _masked_mean(error, g.mask)
    return loss, _metrics(g, _list_diff(h))
