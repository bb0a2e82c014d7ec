"""The batch every loss reads (`GroupBatch`), its validation into a masked `_Group`, and the
masked helpers the losses share. Pure torch.

Masked slots never reach the maths: `_prepare` replaces their inputs by harmless finite values
before any arithmetic (so NaN/inf garbage there cannot leak into the loss or its gradient), and
they are filled with a large negative number inside every log-sum-exp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

Metrics = dict[str, Tensor]

SWEPO_DEVIATIONS = ("signed", "abs", "square")
EOS_REGULARIZERS = ("none", "targeted", "independent")
MMPO_TARGETS = ("reward", "pref")
GPO_FORMS = ("pair", "group")
GRPO_SCALES = ("std", "none")
HPARAM_CHOICES = {  # string hyperparameters
    "dev_fn": SWEPO_DEVIATIONS, "eos_reg": EOS_REGULARIZERS, "target": MMPO_TARGETS, "form": GPO_FORMS,
    "scale": GRPO_SCALES,
}
# Metrics that are counts over the batch, not per-prompt means: a caller that gathers several
# batches (the trainer's logging step) sums them instead of averaging.
COUNT_METRICS = frozenset({"zero_signal_groups"})


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
    old_logps: Tensor | None = None  # [B, K] summed log-probs under the policy that sampled the responses (grpo)


@dataclass(frozen=True)
class LossSpec:
    """What a loss computes and what it needs, so callers never branch on loss names.

    What a batch must carry: ``needs_refs(hparams)`` reference models (``ref_logps``),
    ``old_logps`` when ``old``, ``eos_logps`` when ``needs_eos(hparams)``. The two methods take
    the configured hyperparameters (defaults filled in), since e.g. grpo reads its reference only
    when ``kl > 0`` and ampo/refa read EOS log-probs only with ``eos_reg``.
    """

    fn: Callable[..., tuple[Tensor, Metrics]]  # fn(batch, **hparams) -> (loss [B], metrics)
    refs: int  # reference models it reads when it reads any (ref_logps[0], ref_logps[1], ...)
    uses_rewards: bool
    length_normalized: bool
    pairwise: bool  # averages over the pairs (0, j), else uses the whole group
    defaults: dict  # default hyperparameters, named as the loss function's keywords
    description: str  # one line for `ampo --help` and the docs
    negatives: int = 1  # valid negatives needed in every group
    old: bool = False  # reads old_logps: the sampling policy's log-probs (grpo's ratio)
    refs_when: Callable[[dict], bool] | None = None  # hparams -> whether the references are read (None: always)
    eos_when: Callable[[dict], bool] | None = None  # hparams -> whether eos_logps are read (None: never)

    def needs_refs(self, hparams: dict | None = None) -> int:
        """Reference models a batch must carry under ``hparams`` (unset names take the defaults):
        ``refs``, or 0 when ``refs_when`` says these hyperparameters read none."""
        if self.refs_when is not None and not self.refs_when({**self.defaults, **(hparams or {})}):
            return 0
        return self.refs

    def needs_eos(self, hparams: dict | None = None) -> bool:
        """Whether a batch must carry ``eos_logps`` under ``hparams`` (unset names take the defaults)."""
        return self.eos_when is not None and bool(self.eos_when({**self.defaults, **(hparams or {})}))


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
    old: Tensor | None = None  # sampling policy's log-probs, 0 in masked slots (detached)

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


def _require_old(batch: GroupBatch, name: str) -> None:
    """Refuse a batch that lacks the sampling policy's log-probs a loss needs."""
    if batch.old_logps is None:
        raise ValueError(
            f"loss {name!r} needs the sampling policy's log-probs but batch.old_logps is None; "
            "compute them ([B, K]) with the policy that generated the responses first"
        )


def _prepare(batch: GroupBatch, name: str, refs: int = 0, negatives: int = 1, old: bool = False) -> _Group:
    """Check shapes and masks, cast to float32 or wider, and neutralise masked slots.

    Every group needs a valid slot 0 and ``negatives`` valid slots after it; ``old`` requires
    ``old_logps``.
    """
    _require_refs(batch, refs, name)
    if old:
        _require_old(batch, name)
    shape = batch.logps.shape
    slots = 2 if negatives else 1  # grpo (no negatives needed) takes single responses
    if batch.logps.dim() != 2 or shape[1] < slots:
        raise ValueError(f"loss {name!r}: logps must be [B, K] with K >= {slots}, got {tuple(shape)}")
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
    old_logps = None
    if old:
        if batch.old_logps.shape != shape:
            raise ValueError(
                f"loss {name!r}: old_logps has shape {tuple(batch.old_logps.shape)}, logps has {tuple(shape)}"
            )
        old_logps = torch.where(mask, batch.old_logps.to(dtype), 0.0).detach()
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
        old=old_logps,
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
    ``margin`` the mean difference, ``logp_positive`` / ``logp_negative`` the mean summed log-prob
    of the positive / of the negatives (each group's mean, then the batch mean; these are the only
    place they are computed). The negatives' metrics average over the groups that have a valid
    negative and are left out when none has (a grpo batch of single responses). ``extra`` holds
    per-prompt loss-specific values.
    """
    with torch.no_grad():
        out = {"logp_positive": g.logps[:, 0].mean()}
        has = g.neg.any(-1)
        if bool(has.any()):
            neg, d, lp = g.neg[has], diff[has], g.logps[has]
            out["reward_accuracy"] = _masked_mean((d > 0).to(diff.dtype), neg).mean()
            out["margin"] = _masked_mean(d, neg).mean()
            out["logp_negative"] = _masked_mean(lp, neg).mean()
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
