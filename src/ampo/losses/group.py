"""Group objectives: the positive (or the above-mean responses) against the whole group at once
(AMPO, REFA, SWEPO, InfoNCA, NCA), REFA's EOS regulariser, and GRPO with GSPO's sequence-level
ratio (each response against the group's mean reward). Formulas: docs/losses.md."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .batch import (EOS_REGULARIZERS, GRPO_SCALES, SWEPO_DEVIATIONS, GroupBatch, Metrics, _Group, _list_diff,
                    _masked_lse, _masked_mean, _masked_softmax, _metrics, _positive, _prepare)


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
    """AMPO (arXiv 2502.18293), implemented as REFA-1vsK on the selected group.

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
    """REFA-Dynamic (arXiv 2412.16378, Eq. 6), with W-REFA's additive reward term.

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
    """SWEPO / MPO (arXiv 2412.04628; REFA Eq. 5); reference ``ref_logps[0]``.

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
    """InfoNCA (arXiv 2402.05369); reference ``ref_logps[0]``.

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
    """NCA (arXiv 2402.05369); reference ``ref_logps[0]``.

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


GRPO_STD_EPS = 1e-4  # added to the group's reward std (scale="std")


def grpo_advantages(rewards: Tensor, mask: Tensor, scale: str = "std") -> tuple[Tensor, Tensor]:
    """GRPO's group-relative advantages ``[B, K]`` and which groups have no reward spread ``[B]``.

    ``A = (r - mean(r)) / (std(r) + 1e-4)`` (``scale="std"``, Bessel-corrected std) or
    ``A = r - mean(r)`` (``scale="none"``, Dr. GRPO), over each group's valid slots; 0 in masked
    slots. A group whose valid rewards are all equal (a single response included) gets exactly
    ``A = 0``, so it adds neither loss nor gradient through the policy term.
    """
    if scale not in GRPO_SCALES:
        raise ValueError(f"scale must be one of {', '.join(GRPO_SCALES)}, got {scale!r}")
    rewards = torch.where(mask, rewards, 0.0)
    centered = torch.where(mask, rewards - _masked_mean(rewards, mask)[:, None], 0.0)
    high = rewards.masked_fill(~mask, -math.inf).max(-1).values
    low = rewards.masked_fill(~mask, math.inf).min(-1).values
    flat = high == low
    if scale == "std":
        count = mask.sum(-1, keepdim=True).to(rewards.dtype)
        std = (centered.square().sum(-1, keepdim=True) / (count - 1).clamp_min(1.0)).sqrt()
        centered = centered / (std + GRPO_STD_EPS)
    return torch.where(flat[:, None], 0.0, centered), flat


def grpo_loss(
    batch: GroupBatch, scale: str = "std", eps_low: float = 3e-4, eps_high: float = 4e-4, kl: float = 0.0
) -> tuple[Tensor, Metrics]:
    """GRPO with GSPO's sequence-level ratio; ``old_logps`` are the sampling policy's log-probs.

    Per valid response ``i`` of a group: ``A_i`` from `grpo_advantages`,
    ``s_i = exp((lp_i - old_i) / |y_i|)``,
    ``obj_i = min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i)``, and
    ``L = -mean_i obj_i + kl * mean_i k3_i`` with ``k3 = e^d - d - 1``, ``d = (ref_i - lp_i) / |y_i|``
    (``ref = ref_logps[0]``, read only when ``kl > 0``). Defaults: GSPO's clip (arXiv 2507.18071),
    no KL. A group needs only its slot 0; metrics add ``ratio`` (mean s), ``clip_fraction`` (the
    share of valid responses whose clipped branch is active), ``kl_k3`` (when ``kl > 0``) and
    ``zero_signal_groups`` (a count: groups whose valid rewards are all equal).
    """
    if not eps_low >= 0 or not eps_high >= 0:
        raise ValueError(f"eps_low and eps_high must be >= 0, got {eps_low} and {eps_high}")
    if not kl >= 0:
        raise ValueError(f"hyperparameter kl must be >= 0, got {kl}")
    if scale not in GRPO_SCALES:
        raise ValueError(f"scale must be one of {', '.join(GRPO_SCALES)}, got {scale!r}")
    g = _prepare(batch, "grpo", refs=1 if kl > 0 else 0, negatives=0, old=True)
    advantages, flat = grpo_advantages(g.rewards, g.mask, scale)
    ratio = torch.exp((g.logps - g.old) / g.lengths)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * advantages
    loss = -_masked_mean(torch.minimum(unclipped, clipped), g.mask)
    extra = {
        "ratio": _masked_mean(ratio.detach(), g.mask),
        "clip_fraction": _masked_mean((clipped < unclipped).to(ratio.dtype), g.mask),
    }
    if kl > 0:
        d = (g.refs[0] - g.logps) / g.lengths
        k3 = _masked_mean(torch.exp(d) - d - 1.0, g.mask)
        loss = loss + kl * k3
        extra["kl_k3"] = k3
    metrics = _metrics(g, _list_diff(g.avg), **extra)
    metrics["zero_signal_groups"] = flat.sum().to(ratio.dtype)
    return loss, metrics
