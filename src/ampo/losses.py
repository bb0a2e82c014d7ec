"""Multi-preference objectives over per-response tensors (pure torch).

Every loss reads a :class:`GroupBatch` of ``[B, K]`` tensors in the group layout: slot 0 of each
group is the positive, ``mask`` False marks an empty slot of a ragged group, ``ref_logps`` is
``[R, B, K]`` (R reference models) or None. A loss returns ``(per_prompt_loss [B], metrics)``;
the caller averages. Formulas and section numbers refer to ``spec/algorithms.md`` ("spec-2" is
``spec/algorithms-2.md``); the choices made where the spec is ambiguous are listed in
``docs/losses.md``.

Masked slots never reach the maths: their inputs are replaced by harmless finite values before
any arithmetic (so NaN/inf garbage there cannot leak into the loss or its gradient), and they are
filled with a large negative number inside every log-sum-exp.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Metrics = dict[str, Tensor]

SWEPO_DEVIATIONS = ("signed", "abs", "square")
EOS_REGULARIZERS = ("none", "targeted", "independent")
MMPO_TARGETS = ("reward", "pref")
GPO_FORMS = ("pair", "group")
HPARAM_CHOICES = {  # string hyperparameters
    "dev_fn": SWEPO_DEVIATIONS, "eos_reg": EOS_REGULARIZERS, "target": MMPO_TARGETS, "form": GPO_FORMS,
}


@dataclass
class GroupBatch:
    """Per-response tensors of B prompt groups with K slots each (slot 0 = the positive)."""

    logps: Tensor  # [B, K] summed response log-probs under the policy
    lengths: Tensor  # [B, K] response token counts
    rewards: Tensor  # [B, K]
    mask: Tensor  # [B, K] bool, False marks an empty slot in a ragged group
    ref_logps: Tensor | None = None  # [R, B, K] summed log-probs under R reference models
    eos_logps: Tensor | None = None  # [B, K] log P(EOS) where each response ends (REFA's regulariser)
    pref_logits: Tensor | None = None  # [B, K, K] S_ij = logit P(slot i beats slot j) (mmpo target=pref)


@dataclass(frozen=True)
class LossSpec:
    """What a loss computes and what it needs, so callers never branch on loss names."""

    fn: Callable[..., tuple[Tensor, Metrics]]  # fn(batch, **hparams) -> (loss [B], metrics)
    refs: int  # reference models needed at least (ref_logps[0], ref_logps[1], ...)
    uses_rewards: bool
    length_normalized: bool
    pairwise: bool  # averages over the pairs (0, j), else uses the whole group
    defaults: dict  # default hyperparameters, named as in the spec
    description: str  # one line for `ampo --help` and the docs
    negatives: int = 1  # valid negatives needed in every group


@dataclass
class _Group:
    """A validated batch in the compute dtype, with masked slots made harmless."""

    logps: Tensor
    lengths: Tensor
    rewards: Tensor
    mask: Tensor
    neg: Tensor  # mask without slot 0: the valid negatives
    refs: Tensor | None
    eos: Tensor | None = None  # log P_EOS per response, 0 in masked slots
    prefs: Tensor | None = None  # [B, K, K] preference logits, 0 in masked rows and columns

    @property
    def avg(self) -> Tensor:
        """Length-normalised log-probs ``lp / |y|``."""
        return self.logps / self.lengths


# ---------------------------------------------------------------------------------------------
# Validation and masked helpers


def _require_refs(batch: GroupBatch, count: int, name: str) -> None:
    """Refuse a batch that lacks the reference log-probs a loss needs."""
    if count == 0:
        return
    if batch.ref_logps is None:
        raise ValueError(
            f"loss {name!r} needs {count} reference model(s) but batch.ref_logps is None; "
            "compute reference log-probs ([R, B, K]) first"
        )
    if batch.ref_logps.dim() != 3 or batch.ref_logps.shape[0] < count:
        raise ValueError(
            f"loss {name!r} needs ref_logps of shape [R>={count}, B, K], "
            f"got {tuple(batch.ref_logps.shape)}"
        )


def _prepare(batch: GroupBatch, name: str, refs: int = 0, negatives: int = 1) -> _Group:
    """Check shapes and masks, cast to float32 or wider, and neutralise masked slots."""
    _require_refs(batch, refs, name)
    shape = batch.logps.shape
    if batch.logps.dim() != 2 or shape[1] < 2:
        raise ValueError(f"loss {name!r}: logps must be [B, K] with K >= 2, got {tuple(shape)}")
    for field in ("lengths", "rewards", "mask"):
        if getattr(batch, field).shape != shape:
            raise ValueError(
                f"loss {name!r}: {field} has shape {tuple(getattr(batch, field).shape)}, "
                f"logps has {tuple(shape)}"
            )
    if batch.ref_logps is not None and refs and batch.ref_logps.shape[1:] != shape:
        raise ValueError(
            f"loss {name!r}: ref_logps has shape {tuple(batch.ref_logps.shape)}, "
            f"expected [R, {shape[0]}, {shape[1]}]"
        )
    mask = batch.mask.bool()
    if not bool(mask[:, 0].all()):
        raise ValueError(f"loss {name!r}: slot 0 (the positive) is masked in some group")
    neg = mask.clone()
    neg[:, 0] = False
    if not bool((neg.sum(-1) >= negatives).all()):
        few = "no valid negative" if negatives == 1 else f"fewer than {negatives} valid negatives"
        raise ValueError(f"loss {name!r}: some group has {few} (needs >= {negatives + 1} responses)")
    dtype = torch.promote_types(batch.logps.dtype, torch.float32)
    ref = None
    if refs:
        ref = torch.where(mask, batch.ref_logps.to(dtype), 0.0).detach()
    eos = None
    if batch.eos_logps is not None:
        eos = torch.where(mask, batch.eos_logps.to(dtype), 0.0)
    prefs = None
    if batch.pref_logits is not None:
        if batch.pref_logits.shape != (*shape, shape[1]):
            raise ValueError(
                f"loss {name!r}: pref_logits has shape {tuple(batch.pref_logits.shape)}, "
                f"expected [{shape[0]}, {shape[1]}, {shape[1]}]"
            )
        both = mask[:, :, None] & mask[:, None, :]
        prefs = torch.where(both, batch.pref_logits.to(dtype), 0.0).detach()
    return _Group(
        eos=eos,
        prefs=prefs,
        logps=torch.where(mask, batch.logps.to(dtype), 0.0),
        lengths=torch.where(mask, batch.lengths.to(dtype), 1.0).clamp_min(1.0),
        rewards=torch.where(mask, batch.rewards.to(dtype), 0.0).detach(),
        mask=mask,
        neg=neg,
        refs=ref,
    )


def _positive(name: str, value: float) -> None:
    """Refuse a hyperparameter that must be > 0."""
    if not value > 0:
        raise ValueError(f"hyperparameter {name} must be > 0, got {value}")


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the True entries of ``mask`` along the last axis."""
    return torch.where(mask, x, 0.0).sum(-1) / mask.sum(-1)


def _masked_fill(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` with masked entries set to a large negative number (a finite stand-in for -inf)."""
    return x.masked_fill(~mask, torch.finfo(x.dtype).min)


def _masked_lse(x: Tensor, mask: Tensor) -> Tensor:
    """Log-sum-exp over the True entries of ``mask`` along the last axis."""
    return torch.logsumexp(_masked_fill(x, mask), dim=-1)


def _masked_softmax(x: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the True entries of ``mask``; masked entries get exactly 0."""
    return torch.softmax(_masked_fill(x, mask), dim=-1)


def _metrics(g: _Group, diff: Tensor, **extra: Tensor) -> Metrics:
    """Batch-mean metrics from per-slot score differences ``positive - slot`` ([B, K]).

    ``reward_accuracy`` is the fraction of valid negatives scored strictly below the positive,
    ``margin`` the mean difference; ``extra`` holds per-prompt loss-specific values.
    """
    with torch.no_grad():
        out = {
            "reward_accuracy": _masked_mean((diff > 0).to(diff.dtype), g.neg).mean(),
            "margin": _masked_mean(diff, g.neg).mean(),
            "logp_positive": g.logps[:, 0].mean(),
            "logp_negative": _masked_mean(g.logps, g.neg).mean(),
        }
        out.update({key: value.detach().to(diff.dtype).mean() for key, value in extra.items()})
    return out


def _list_diff(score: Tensor) -> Tensor:
    """Positive's score minus each slot's score."""
    return (score[:, :1] - score).detach()


def _extreme_negatives(g: _Group) -> tuple[Tensor, Tensor]:
    """Slots ``[B]`` of the highest- and the lowest-reward valid negative, by reward, not slot.

    Ties go to the first slot for the highest and the last for the lowest, so the two differ in
    every group with two or more valid negatives.
    """
    k = g.rewards.shape[-1]
    highest = torch.where(g.neg, g.rewards, -math.inf).argmax(-1)
    lowest = k - 1 - torch.where(g.neg, g.rewards, math.inf).flip(-1).argmin(-1)
    return highest, lowest


def _at(x: Tensor, slot: Tensor) -> Tensor:
    """``x[b, slot[b]]`` for every group b."""
    return x.gather(-1, slot[:, None])[:, 0]


# ---------------------------------------------------------------------------------------------
# Group (list) objectives


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


def pro_loss(
    batch: GroupBatch, sft_weight: float | None = None, dynamic_temperature: bool = False
) -> tuple[Tensor, Metrics]:
    """PRO, spec 4: Plackett-Luce over the valid responses sorted by reward, plus SFT.

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
    """LiPO-lambda, spec 4; reference ``ref_logps[0]``, labels ``psi = rewards``.

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
# Pairwise objectives: pairs (0, j) for every valid j >= 1, averaged


def dpo_loss(batch: GroupBatch, beta: float = 0.1) -> tuple[Tensor, Metrics]:
    """DPO, spec 4; reference ``ref_logps[0]``: ``-log sigma(beta*(h_w - h_l))`` (summed lp)."""
    g = _prepare(batch, "dpo", refs=1)
    score = beta * (g.logps - g.refs[0])
    diff = score[:, :1] - score
    return _masked_mean(-F.logsigmoid(diff), g.neg), _metrics(g, diff.detach())


def ipo_loss(batch: GroupBatch, beta: float = 0.1, per_token: bool = False) -> tuple[Tensor, Metrics]:
    """IPO, spec 4; reference ``ref_logps[0]``: ``(h_w - h_l - 1/(2 beta))^2``, summed log-probs.

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
    """SimPO, spec 4; reference-free: ``-log sigma(beta*(avg_w - avg_l) - gamma)``."""
    g = _prepare(batch, "simpo")
    score = beta * g.avg
    diff = score[:, :1] - score
    return _masked_mean(-F.logsigmoid(diff - gamma), g.neg), _metrics(g, diff.detach())


def soft_target(reward_w: Tensor, reward_l: Tensor, gamma: float) -> Tensor:
    """MMPO's Bradley-Terry soft label ``p = sigmoid(gamma * (r_w - r_l))`` (spec 2)."""
    return torch.sigmoid(gamma * (reward_w - reward_l))


def soft_bt_loss(score_w: Tensor, score_l: Tensor, p: Tensor | float) -> Tensor:
    """Cross-entropy of ``sigma(score_w - score_l)`` against the soft label ``p`` (spec 2).

    ``-p log sigma(z) - (1 - p) log sigma(-z)`` with ``z = score_w - score_l``; elementwise. It is
    both the MMPO policy loss (scores ``beta*h``) and the MMPO reward-model loss (RM scores).
    """
    z = score_w - score_l
    return -p * F.logsigmoid(z) - (1 - p) * F.logsigmoid(-z)


def mmpo_loss(
    batch: GroupBatch, beta: float = 0.01, gamma: float = 0.3, target: str = "reward"
) -> tuple[Tensor, Metrics]:
    """MMPO, spec 2; reference ``ref_logps[0]``: DPO against the soft label of the reward margin.

    ``p = sigmoid(gamma*(r_w - r_l))``, ``z = beta*(h_w - h_l)``,
    ``L = -p log sigma(z) - (1-p) log sigma(-z)``. Defaults: the Gemma-7B UltraFeedback recipe.
    ``target="pref"`` takes ``p = sigmoid(S_0j)`` from ``batch.pref_logits`` instead (spec-2 §1;
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
    """Triple-PO, spec-2 §6; reference-free. Gold = slot 0, chosen ``w`` and rejected ``l`` = the
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
    """MRPO's ARWC weight and CTRO-clipped extra reference for pairs (w, l), spec 3.

    ``primary`` is the spec's ref2 (the initial policy), ``extra`` its ref1; all are summed
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
    """MRPO, spec 3: DPO against a virtual reference built from two or more references.

    ``ref_logps[0]`` is the primary reference (the spec's ref2, the initial policy);
    ``ref_logps[1:]`` are extra references (the spec's ref1). ``L = -log sigma(beta*[(lp_w -
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


# ---------------------------------------------------------------------------------------------
# Regression onto preference scores


def gpo_loss(
    batch: GroupBatch, beta: float = 0.001, center: float = 0.0, form: str = "pair",
    clamp: float | None = None,
) -> tuple[Tensor, Metrics]:
    """GPO / SPPO-style regression, spec-2 §3; reference ``ref_logps[0]``, scores ``s = rewards``.

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


# ---------------------------------------------------------------------------------------------
# The table


def _spec(
    fn: Callable, *, refs: int, rewards: bool, normalized: bool, pairwise: bool, doc: str, negatives: int = 1
) -> LossSpec:
    """A LossSpec whose defaults are read from ``fn``'s keyword defaults (one source of truth)."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    defaults = {p.name: p.default for p in params}
    return LossSpec(fn, refs, rewards, normalized, pairwise, defaults, doc, negatives)


LOSSES: dict[str, LossSpec] = {
    "ampo": _spec(
        ampo_loss, refs=0, rewards=True, normalized=True, pairwise=False,
        doc="AMPO (REFA-1vsK): positive vs gamma-weighted negatives, length-normalised, ref-free",
    ),
    "refa": _spec(
        refa_loss, refs=0, rewards=True, normalized=True, pairwise=False,
        doc="REFA-Dynamic: above-mean responses vs gamma-weighted below-mean ones, length-normalised, ref-free",
    ),
    "swepo": _spec(
        swepo_loss, refs=1, rewards=True, normalized=False, pairwise=False,
        doc="SWEPO/MPO: reward-weighted group contrast of log-ratios, Y+ = above-mean rewards",
    ),
    "dpo": _spec(
        dpo_loss, refs=1, rewards=False, normalized=False, pairwise=True,
        doc="DPO on the pairs (positive, negative j), summed log-probs",
    ),
    "ipo": _spec(
        ipo_loss, refs=1, rewards=False, normalized=False, pairwise=True,
        doc="IPO squared loss on the pairs (positive, negative j); beta is IPO's tau",
    ),
    "simpo": _spec(
        simpo_loss, refs=0, rewards=False, normalized=True, pairwise=True,
        doc="SimPO on the pairs (positive, negative j): length-normalised, margin gamma, ref-free",
    ),
    "mmpo": _spec(
        mmpo_loss, refs=1, rewards=True, normalized=False, pairwise=True,
        doc="MMPO: DPO against the soft label sigmoid(gamma * reward margin)",
    ),
    "mrpo": _spec(
        mrpo_loss, refs=2, rewards=False, normalized=False, pairwise=True,
        doc="MRPO: DPO against a virtual reference mixing the initial policy with extra references",
    ),
    "infonca": _spec(
        infonca_loss, refs=1, rewards=True, normalized=False, pairwise=False,
        doc="InfoNCA: cross-entropy of softmax(beta*h) against softmax(rewards / temperature)",
    ),
    "nca": _spec(
        nca_loss, refs=1, rewards=True, normalized=False, pairwise=False,
        doc="NCA: per-response sigmoid contrast of beta*h with soft reward labels",
    ),
    "pro": _spec(
        pro_loss, refs=0, rewards=True, normalized=True, pairwise=False,
        doc="PRO: Plackett-Luce over the reward ranking of length-normalised log-probs, plus SFT",
    ),
    "lipo": _spec(
        lipo_loss, refs=1, rewards=True, normalized=False, pairwise=False,
        doc="LiPO-lambda: lambda-weighted pairwise logistic loss over the reward-labelled list",
    ),
    "gpo": _spec(
        gpo_loss, refs=1, rewards=True, normalized=False, pairwise=False,
        doc="GPO/SPPO: regress log-ratios onto (score - center)/beta, best vs lowest-score or whole group",
    ),
    "tripo": _spec(
        tripo_loss, refs=0, rewards=True, normalized=False, pairwise=False, negatives=2,
        doc="Triple-PO: ref-free pair of best vs worst negative plus the gold response's NLL",
    ),
}


def resolve_hparams(name: str, hparams: dict) -> dict:
    """The loss's defaults overridden by ``hparams``; refuses unknown losses and names."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
    allowed = LOSSES[name].defaults
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {', '.join(map(repr, unknown))} for loss {name!r}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    return {**allowed, **hparams}


def check_hparams(name: str, hparams: dict) -> None:
    """Refuse, before any data exists, every hyperparameter value that ``LOSSES[name]`` refuses.

    Runs the loss once on a tiny valid batch that has every optional field, so each range check
    stays in one place (the loss function) and config validation still catches it up front.
    """
    resolved = resolve_hparams(name, hparams)
    spec = LOSSES[name]
    k = spec.negatives + 2
    rewards = torch.linspace(1.0, -1.0, k)[None]
    probe = GroupBatch(
        logps=-torch.ones(1, k), lengths=torch.ones(1, k), rewards=rewards, mask=torch.ones(1, k, dtype=torch.bool),
        ref_logps=-torch.ones(max(spec.refs, 1), 1, k), eos_logps=-torch.ones(1, k),
        pref_logits=rewards[..., :, None] - rewards[..., None, :],
    )
    with torch.no_grad():
        spec.fn(probe, **resolved)


def compute(name: str, batch: GroupBatch, **hparams) -> tuple[Tensor, Metrics]:
    """Batch-mean loss and metrics of ``LOSSES[name]`` with validated hyperparameters."""
    resolved = resolve_hparams(name, hparams)
    spec = LOSSES[name]
    _require_refs(batch, spec.refs, name)
    per_prompt, metrics = spec.fn(batch, **resolved)
    return per_prompt.mean(), metrics
