"""Group objectives: the positive (or the above-mean responses) against the whole group at once
(AMPO, REFA, SWEPO, InfoNCA, NCA) and REFA's EOS regulariser. Formulas: `spec/algorithms.md`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .batch import (EOS_REGULARIZERS, SWEPO_DEVIATIONS, GroupBatch, Metrics, _Group, _list_diff, _masked_lse,
                    _masked_mean, _masked_softmax, _metrics, _positive, _prepare)


def eos_regularizer(g: _Group, kind: str, lam: float, name: str) -> Tensor:
    """REFA's EOS regulariser per prompt ``[B]``, summed over the group's valid responses.

    ``targeted`` (Eq. 7): ``lam * sum P_EOS(y) * max(0, T - |y|)`` with ``T`` the group's longest
    response, penalising early ends; ``independent`` (Eq. 9): ``-lam * sum log P_EOS(y)``.
    """
    if kind not in EOS_REGULARIZERS:
        raise ValueError(f"eos_reg must be one of {', '.join(EOS_REGULARIZERS)}, got {kind!r}")
    if kind == "none":
        return torch.zeros_like(g.logps[:, 0])
    if g.eos is None:
        raise ValueError(f"loss {name!r}: eos_reg={kind!r} needs eos_logps in the batch")
    if kind == "targeted":
        longest = g.lengths.masked_fill(~g.mask, 0.0).max(-1, keepdim=True).values
        shortfall = (longest - g.lengths).clamp_min(0.0)
        return lam * torch.where(g.mask, g.eos.exp() * shortfall, 0.0).sum(-1)
    return -lam * torch.where(g.mask, g.eos, 0.0).sum(-1)


def ampo_loss(
    batch: GroupBatch, beta: float = 10.0, gamma: float = 3.0, alpha: float = 0.0,
    eos_reg: str = "none", eos_lambda: float = 1e-5,
) -> tuple[Tensor, Metrics]:
    """AMPO, the recommended implementation of spec 1.3(c) (REFA-1vsK on the selected group).

    ``s = beta*avg + alpha*(r - mean_valid(r))``;
    ``L = -log( e^{s+} / (e^{s+} + gamma * sum_neg e^{s}) )``. Reference-free. The mean for the
    alpha term runs over every valid response of the group, the positive included. ``eos_reg``
    adds REFA's EOS regulariser (`eos_regularizer`) with weight ``eos_lambda``.
    """
    _positive("gamma", gamma)
    g = _prepare(batch, "ampo")
    policy = beta * g.avg
    rbar = _masked_mean(g.rewards, g.mask)[:, None]
    s = policy + alpha * (g.rewards - rbar)
    weighted = torch.where(g.neg, s + math.log(gamma), s)
    regularizer = eos_regularizer(g, eos_reg, eos_lambda, "ampo")
    loss = _masked_lse(weighted, g.mask) - s[:, 0] + regularizer
    extra = {"eos_reg": regularizer} if eos_reg != "none" else {}
    return loss, _metrics(g, _list_diff(policy), **extra)


def refa_loss(
    batch: GroupBatch, beta: float = 10.0, gamma: float = 4.0, alpha: float = 0.0,
    eos_reg: str = "none", eos_lambda: float = 1e-5,
) -> tuple[Tensor, Metrics]:
    """REFA-Dynamic, spec 1.3(b) (REFA Eq. 6), with W-REFA's additive reward term.

    ``s = beta*avg + alpha*(r - rbar)``; ``L = -log( sum_{Y+} e^s / (sum_{Y+} e^s + gamma *
    sum_{Y-} e^s) )`` with ``Y+ = {r > rbar}`` over the valid responses (slot 0 always in Y+) and
    ``Y-`` the other valid ones. Reference-free. REFA's appendix form ``beta*(avg + a*(r - rbar))``
    is ``alpha = beta * a``. ``eos_reg`` adds REFA's EOS regulariser (`eos_regularizer`).
    """
    _positive("gamma", gamma)
    g = _prepare(batch, "refa")
    policy = beta * g.avg
    centered = g.rewards - _masked_mean(g.rewards, g.mask)[:, None]
    s = policy + alpha * centered
    pos = g.mask & (centered > 0)
    pos[:, 0] = True
    weighted = torch.where(pos, s, s + math.log(gamma))
    regularizer = eos_regularizer(g, eos_reg, eos_lambda, "refa")
    loss = _masked_lse(weighted, g.mask) - _masked_lse(s, pos) + regularizer
    extra = {"eos_reg": regularizer} if eos_reg != "none" else {}
    return loss, _metrics(g, _list_diff(policy), positive_set_size=pos.sum(-1), **extra)


def swepo_loss(
    batch: GroupBatch, beta: float = 0.1, alpha: float = 1.0, dev_fn: str = "signed"
) -> tuple[Tensor, Metrics]:
    """SWEPO / MPO, spec 1.3(a) (REFA Eq. 5); reference ``ref_logps[0]``.

    ``x = beta*h + alpha*dev(r - rbar)`` with ``dev`` signed, abs or square;
    ``L = -log( sum_{Y+} e^x / sum_{Y+ ∪ Y-} e^x )``, ``Y+ = {r > rbar}`` over the valid responses
    (slot 0 always counted in Y+, so a group of equal rewards still has a positive).
    """
    if dev_fn not in SWEPO_DEVIATIONS:
        raise ValueError(f"dev_fn must be one of {', '.join(SWEPO_DEVIATIONS)}, got {dev_fn!r}")
    g = _prepare(batch, "swepo", refs=1)
    score = beta * (g.logps - g.refs[0])
    centered = g.rewards - _masked_mean(g.rewards, g.mask)[:, None]
    deviation = {"signed": centered, "abs": centered.abs(), "square": centered.square()}[dev_fn]
    x = score + alpha * deviation
    pos = g.mask & (centered > 0)
    pos[:, 0] = True
    loss = _masked_lse(x, g.mask) - _masked_lse(x, pos)
    return loss, _metrics(g, _list_diff(score), positive_set_size=pos.sum(-1))


def infonca_loss(
    batch: GroupBatch, beta: float = 0.01, temperature: float = 1e-4
) -> tuple[Tensor, Metrics]:
    """InfoNCA, spec 4; reference ``ref_logps[0]``.

    ``m = beta*h``, soft labels ``t = softmax(r / temperature)`` over the valid responses,
    ``L = -sum_i t_i log softmax(m)_i``. Defaults follow the shipped thu-ml QLoRA yaml.
    """
    _positive("temperature", temperature)
    g = _prepare(batch, "infonca", refs=1)
    m = beta * (g.logps - g.refs[0])
    targets = _masked_softmax(g.rewards / temperature, g.mask)
    log_probs = m - _masked_lse(m, g.mask)[:, None]
    loss = -torch.where(g.mask, targets * log_probs, 0.0).sum(-1)
    return loss, _metrics(g, _list_diff(m), target_positive=targets[:, 0])


def nca_loss(
    batch: GroupBatch, beta: float = 0.01, temperature: float = 1e-4
) -> tuple[Tensor, Metrics]:
    """NCA, spec 4; reference ``ref_logps[0]``.

    ``m = beta*h``, ``t = softmax(r / temperature)``,
    ``L = -(1/K) sum_i log sigma(-m_i) - sum_i t_i log sigma(m_i)`` with K the valid count.
    """
    _positive("temperature", temperature)
    g = _prepare(batch, "nca", refs=1)
    m = beta * (g.logps - g.refs[0])
    targets = _masked_softmax(g.rewards / temperature, g.mask)
    push_down = -_masked_mean(F.logsigmoid(-m), g.mask)
    pull_up = -torch.where(g.mask, targets * F.logsigmoid(m), 0.0).sum(-1)
    return push_down + pull_up, _metrics(g, _list_diff(m), target_positive=targets[:, 0])
