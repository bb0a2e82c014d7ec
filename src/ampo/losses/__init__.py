"""Multi-preference objectives over per-response tensors (pure torch).

Every loss reads a :class:`GroupBatch` of ``[B, K]`` tensors in the group layout: slot 0 of each
group is the positive, ``mask`` False marks an empty slot of a ragged group, ``ref_logps`` is
``[R, B, K]`` (R reference models) or None, ``old_logps`` ``[B, K]`` the sampling policy's
log-probs (grpo) or None. A loss returns ``(per_prompt_loss [B], metrics)``;
the caller averages. The formulas, their papers and the choices made where the sources are
ambiguous are listed in ``docs/losses.md``.

Masked slots never reach the maths: their inputs are replaced by harmless finite values before
any arithmetic (so NaN/inf garbage there cannot leak into the loss or its gradient), and they are
filled with a large negative number inside every log-sum-exp.

The package: `batch` (the `GroupBatch`, its validation and masked helpers), `group`, `pairwise`
and `listwise` (the objectives), and here the table `LOSSES` that every caller reads. Each entry
declares what a batch must carry (`LossSpec.needs_refs(hparams)`, `.old`, `.needs_eos(hparams)`),
so callers never branch on loss names. Adding a loss: its function in the module of its kind, one
`_spec(...)` entry below (docs/losses.md).
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import Tensor

from .batch import COUNT_METRICS, HPARAM_CHOICES, GroupBatch, LossSpec, Metrics, _require_old, _require_refs
from .group import (ampo_loss, eos_regularizer, grpo_advantages, grpo_loss, infonca_loss, nca_loss, refa_loss,
                    swepo_loss)
from .listwise import gpo_loss, lipo_loss, pro_loss
from .pairwise import (dpo_loss, ipo_loss, mmpo_loss, mrpo_clipped_reference, mrpo_loss, mrpo_virtual_reference,
                       simpo_loss, soft_bt_loss, soft_target, tripo_loss)

__all__ = [
    "COUNT_METRICS", "HPARAM_CHOICES", "LOSSES", "GroupBatch", "LossSpec", "Metrics", "check_hparams", "compute",
    "resolve_hparams",
    "ampo_loss", "dpo_loss", "eos_regularizer", "gpo_loss", "grpo_advantages", "grpo_loss", "infonca_loss",
    "ipo_loss", "lipo_loss", "mmpo_loss", "mrpo_clipped_reference", "mrpo_loss", "mrpo_virtual_reference", "nca_loss", "pro_loss", "refa_loss",
    "simpo_loss", "soft_bt_loss", "soft_target", "swepo_loss", "tripo_loss",
]


def _spec(
    fn: Callable, *, refs: int, rewards: bool, normalized: bool, pairwise: bool, doc: str, negatives: int = 1,
    old: bool = False, refs_when: Callable[[dict], bool] | None = None,
    eos_when: Callable[[dict], bool] | None = None,
) -> LossSpec:
    """A LossSpec whose defaults are read from ``fn``'s keyword defaults (one source of truth)."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    defaults = {p.name: p.default for p in params}
    return LossSpec(fn, refs, rewards, normalized, pairwise, defaults, doc, negatives, old, refs_when, eos_when)


def _eos_set(hparams: dict) -> bool:
    """ampo and refa read EOS log-probs only when their EOS regulariser is on."""
    return hparams["eos_reg"] != "none"


def _kl_set(hparams: dict) -> bool:
    """grpo reads its reference only for the KL term."""
    return hparams["kl"] > 0


LOSSES: dict[str, LossSpec] = {
    "ampo": _spec(
        ampo_loss, refs=0, rewards=True, normalized=True, pairwise=False, eos_when=_eos_set,
        doc="AMPO (REFA-1vsK): positive vs gamma-weighted negatives, length-normalised, ref-free",
    ),
    "refa": _spec(
        refa_loss, refs=0, rewards=True, normalized=True, pairwise=False, eos_when=_eos_set,
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
    "grpo": _spec(
        grpo_loss, refs=1, rewards=True, normalized=True, pairwise=False, negatives=0, old=True, refs_when=_kl_set,
        doc="GRPO/GSPO: clipped sequence-level ratio to the sampling policy times group-normalised reward, k3 KL",
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

    Runs the loss once on a tiny valid batch that has every optional field (references,
    EOS and sampling-policy log-probs, preference logits), so each range check stays in one place
    (the loss function) and config validation still catches it up front.
    """
    resolved = resolve_hparams(name, hparams)
    spec = LOSSES[name]
    k = spec.negatives + 2
    rewards = torch.linspace(1.0, -1.0, k)[None]
    probe = GroupBatch(
        logps=-torch.ones(1, k), lengths=torch.ones(1, k), rewards=rewards, mask=torch.ones(1, k, dtype=torch.bool),
        ref_logps=-torch.ones(max(spec.refs, 1), 1, k), eos_logps=-torch.ones(1, k),
        pref_logits=rewards[..., :, None] - rewards[..., None, :], old_logps=-torch.ones(1, k),
    )
    with torch.no_grad():
        spec.fn(probe, **resolved)


def compute(name: str, batch: GroupBatch, **hparams) -> tuple[Tensor, Metrics]:
    """Batch-mean loss and metrics of ``LOSSES[name]`` with validated hyperparameters; refuses a
    batch without the fields the loss needs under these hyperparameters (`LossSpec`)."""
    resolved = resolve_hparams(name, hparams)
    spec = LOSSES[name]
    _require_refs(batch, spec.needs_refs(resolved), name)
    if spec.old:
        _require_old(batch, name)
    if spec.needs_eos(resolved) and batch.eos_logps is None:
        raise ValueError(f"loss {name!r} with these hyperparameters needs eos_logps in the batch")
    per_prompt, metrics = spec.fn(batch, **resolved)
    return per_prompt.mean(), metrics
