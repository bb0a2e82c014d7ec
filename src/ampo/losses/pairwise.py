"""Pairwise objectives: the pairs (positive, negative j) for every valid j >= 1, averaged (DPO, IPO,
SimPO, MMPO, MRPO), and Triple-PO's best-vs-worst pair. Formulas: docs/losses.md."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .batch import (MMPO_TARGETS, GroupBatch, Metrics, _at, _extreme_negatives, _list_diff, _masked_mean, _metrics,
                    _positive, _prepare)


def dpo_loss(batch: GroupBatch, beta: float = 0.1) -> tuple[Tensor, Metrics]:
    """DPO (arXiv 2305.18290); reference ``ref_logps[0]``: ``-log sigma(beta*(h_w - h_l))`` (summed lp)."""
    g = _prepare(batch, "dpo", refs=1)
    score = beta * (g.logps - g.refs[0])
    diff = score[:, :1] - score
    return _masked_mean(-F.logsigmoid(diff), g.neg), _metrics(g, diff.detach())


def ipo_loss(batch: GroupBatch, beta: float = 0.1, per_token: bool = False) -> tuple[Tensor, Metrics]:
    """IPO (arXiv 2310.12036); reference ``ref_logps[0]``: ``(h_w - h_l - 1/(2 beta))^2``, summed log-probs.

    ``beta`` is the paper's tau (TRL reuses ``beta`` for it). ``per_token=True`` divides each
    log-ratio by the response length first: TRL's form, which its authors report the IPO
    authors confirmed as the one behind the paper's results.
    """
    _positive("beta", beta)
    g = _prepare(batch, "ipo", refs=1)
    h = g.logps - g.refs[0]
    if per_token:
        h = h / g.lengths
    diff = h[:, :1] - h
    return _masked_mean((diff - 1 / (2 * beta)) ** 2, g.neg), _metrics(g, diff.detach())


def simpo_loss(batch: GroupBatch, beta: float = 2.0, gamma: float = 1.0) -> tuple[Tensor, Metrics]:
    """SimPO (arXiv 2405.14734); reference-free: ``-log sigma(beta*(avg_w - avg_l) - gamma)``."""
    g = _prepare(batch, "simpo")
    score = beta * g.avg
    diff = score[:, :1] - score
    return _masked_mean(-F.logsigmoid(diff - gamma), g.neg), _metrics(g, diff.detach())


def soft_target(reward_w: Tensor, reward_l: Tensor, gamma: float) -> Tensor:
    """MMPO's Bradley-Terry soft label ``p = sigmoid(gamma * (r_w - r_l))`` (arXiv 2410.03145)."""
    return torch.sigmoid(gamma * (reward_w - reward_l))


def soft_bt_loss(score_w: Tensor, score_l: Tensor, p: Tensor | float) -> Tensor:
    """Cross-entropy of ``sigma(score_w - score_l)`` against the soft label ``p`` (MMPO, arXiv 2410.03145).

    ``-p log sigma(z) - (1 - p) log sigma(-z)`` with ``z = score_w - score_l``; elementwise. It is
    both the MMPO policy loss (scores ``beta*h``) and the MMPO reward-model loss (RM scores).
    """
    z = score_w - score_l
    return -p * F.logsigmoid(z) - (1 - p) * F.logsigmoid(-z)


def mmpo_loss(
    batch: GroupBatch, beta: float = 0.01, gamma: float = 0.3, target: str = "reward"
) -> tuple[Tensor, Metrics]:
    """MMPO (arXiv 2410.03145); reference ``ref_logps[0]``: DPO against the soft label of the reward margin.

    ``p = sigmoid(gamma*(r_w - r_l))``, ``z = beta*(h_w - h_l)``,
    ``L = -p log sigma(z) - (1-p) log sigma(-z)``. Defaults: the Gemma-7B UltraFeedback recipe.
    ``target="pref"`` takes ``p = sigmoid(S_0j)`` from ``batch.pref_logits`` instead (docs/preferences.md;
    gamma unused), so a negative that beats the positive under an intransitive judge gets
    ``p < 0.5`` rather than a false hard label.
    """
    if target not in MMPO_TARGETS:
        raise ValueError(f"target must be one of {', '.join(MMPO_TARGETS)}, got {target!r}")
    g = _prepare(batch, "mmpo", refs=1)
    score = beta * (g.logps - g.refs[0])
    if target == "pref":
        if g.prefs is None:
            raise ValueError("loss 'mmpo': target='pref' needs pref_logits in the batch")
        p = torch.sigmoid(g.prefs[:, 0, :])
    else:
        p = soft_target(g.rewards[:, :1], g.rewards, gamma)
    loss = _masked_mean(soft_bt_loss(score[:, :1], score, p), g.neg)
    diff = (score[:, :1] - score).detach()
    return loss, _metrics(g, diff, soft_target=_masked_mean(p, g.neg))


def tripo_loss(
    batch: GroupBatch, beta: float = 0.1, alpha: float = 1.0, length_norm: bool = False, gamma: float = 0.5
) -> tuple[Tensor, Metrics]:
    """Triple-PO (arXiv 2405.16681); reference-free. Gold = slot 0, chosen ``w`` and rejected ``l`` = the
    highest- and lowest-reward valid negatives (by reward, not slot order).

    ``L = -log sigma(beta*(lp_w - lp_l)) + alpha * NLL`` with ``NLL = -lp_0/|y_0|``, the gold
    response's per-token NLL for this prompt. ``length_norm=True`` is TRL's TPO-L:
    ``-log sigma(beta*(avg_w - avg_l) - gamma) + alpha * NLL`` (gamma is used only there).
    """
    if alpha < 0:
        raise ValueError(f"hyperparameter alpha must be >= 0, got {alpha}")
    g = _prepare(batch, "tripo", negatives=2)
    score = beta * (g.avg if length_norm else g.logps)
    chosen, rejected = _extreme_negatives(g)
    z = _at(score, chosen) - _at(score, rejected) - (gamma if length_norm else 0.0)
    pair = -F.logsigmoid(z)
    nll = -g.avg[:, 0]
    return pair + alpha * nll, _metrics(g, _list_diff(score), pair_loss=pair, nll=nll)


def _ctro_clip(extra: Tensor, primary: Tensor, eta: Tensor | float) -> Tensor:
    """Clip an extra reference's log-probs into ``[(1+eta)*primary, (1-eta)*primary]``."""
    return torch.minimum(torch.maximum(extra, (1 + eta) * primary), (1 - eta) * primary)


def mrpo_virtual_reference(clipped: Tensor, primary: Tensor, weight: Tensor) -> Tensor:
    """MRPO's virtual reference ``log pi~`` with ``1/pi~ = weight/pi_primary + (1-weight)/pi_clipped``
    (a weighted harmonic mean, via log-sum-exp); ``clipped`` from `mrpo_clipped_reference`."""
    terms = torch.stack([torch.log(weight) + clipped, torch.log1p(-weight) + primary])
    return clipped + primary - torch.logsumexp(terms, dim=0)


def mrpo_clipped_reference(
    primary_w: Tensor,
    primary_l: Tensor,
    extra_w: Tensor,
    extra_l: Tensor,
    eta: float = 0.1,
    alpha: float = -1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """MRPO's ARWC weight and CTRO-clipped extra reference for pairs (w, l) (MRPO's code, arXiv 2405.16388).

    ``primary`` is MRPO's ref2 (the initial policy), ``extra`` its ref1; all are summed
    log-probs. ``alpha < 0`` makes the weight adaptive (ARWC); ``eta > 0`` clips adaptively,
    ``eta <= 0`` clips at the fixed rate ``|eta|``. Returns ``(clipped_w, clipped_l, weight)``.
    """
    if alpha < 0:
        a_extra = (extra_w - extra_l).abs()
        a_primary = (primary_w - primary_l).abs()
        weight = a_extra / (a_extra + a_primary + 1e-6)
    else:
        weight = torch.full_like(extra_w - extra_l, float(alpha))
    if eta > 0:
        b_w = ((extra_w + primary_w) / 2).abs()
        b_l = ((extra_l + primary_l) / 2).abs()
        share = b_w / (b_w + b_l).clamp_min(torch.finfo(b_w.dtype).tiny)
        eta_w, eta_l = eta * share, eta * (1 - share)
    else:
        eta_w = eta_l = abs(eta)
    return _ctro_clip(extra_w, primary_w, eta_w), _ctro_clip(extra_l, primary_l, eta_l), weight


def mrpo_loss(
    batch: GroupBatch, beta: float = 0.1, eta: float = 0.1, alpha: float = -1.0, naive: bool = False
) -> tuple[Tensor, Metrics]:
    """MRPO (arXiv 2405.16388): DPO against a virtual reference built from two or more references.

    ``ref_logps[0]`` is the primary reference (MRPO's ref2, the initial policy);
    ``ref_logps[1:]`` are extra references (MRPO's ref1). ``L = -log sigma(beta*[(lp_w -
    ref~_w) - (lp_l - ref~_l)])``. With ``naive=True``, the paper's "Multi-DPO" baseline instead:
    ``weight * DPO(ref = clipped extra) + (1 - weight) * DPO(ref = primary)``. With R > 2
    references the two-reference loss is computed with each extra reference and averaged.
    """
    if alpha > 1:
        raise ValueError(f"hyperparameter alpha must be < 0 (adaptive) or in [0, 1], got {alpha}")
    g = _prepare(batch, "mrpo", refs=2)
    primary, extra = g.refs[0], g.refs[1:]  # [B, K], [R-1, B, K]
    clipped_w, clipped_l, weight = mrpo_clipped_reference(
        primary[:, :1], primary, extra[:, :, :1], extra, eta=eta, alpha=alpha
    )
    if naive:
        z_extra = beta * ((g.logps[:, :1] - clipped_w) - (g.logps - clipped_l))
        z_primary = beta * ((g.logps[:, :1] - primary[:, :1]) - (g.logps - primary))
        per_pair = -weight * F.logsigmoid(z_extra) - (1 - weight) * F.logsigmoid(z_primary)
        z = weight * z_extra + (1 - weight) * z_primary
    else:
        ref_w = mrpo_virtual_reference(clipped_w, primary[:, :1], weight)
        ref_l = mrpo_virtual_reference(clipped_l, primary, weight)
        z = beta * ((g.logps[:, :1] - ref_w) - (g.logps - ref_l))  # [R-1, B, K]
        per_pair = -F.logsigmoid(z)
    loss = _masked_mean(per_pair.mean(0), g.neg)
    diff = z.mean(0).detach()
    return loss, _metrics(g, diff, alpha=_masked_mean(weight.mean(0), g.neg))
