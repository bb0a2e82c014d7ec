"""Pairwise preferences: logit matrices, their scalar aggregates, and GPM preference scores.

A preference matrix ``S [..., N, N]`` holds ``S_ij = logit P(y_i > y_j | x)`` for one prompt's N
responses (leading axes batch prompts of equal N). A scalar reward is the special case
``S_ij = r_i - r_j`` (`scalar_to_logits`), so one path serves reward models and pairwise judges.
`aggregate` turns S into one score per response, which every selector and loss reads as
``rewards``. `gpm_scores` builds S from General Preference Model embeddings, which can express
preference cycles that no scalar reward can. Formulas: ``docs/preferences.md``.

Pure NumPy, except the GPM bilinear form, which is torch so that the same code scores responses
and trains a GPM head (`gpm_loss`). Nothing here is wired into the pipeline yet
(``docs/preferences.md``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .losses import soft_bt_loss

AGGREGATES = ("mean_logit", "win_rate", "win_rate_self", "copeland")
GPM_GATES = ("softmax", "k_softmax_sqrtH")


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, overflow-free and exactly 0.5 at 0 (so a tie meets a 0.5 threshold)."""
    return 0.5 * (1.0 + np.tanh(x / 2))


def _matrix(S) -> np.ndarray:
    """``S`` as float64 after checking it is ``[..., N, N]`` with N >= 2 and finite."""
    S = np.asarray(S, dtype=np.float64)
    if S.ndim < 2 or S.shape[-1] != S.shape[-2]:
        raise ValueError(f"preference logits must be [..., N, N], got shape {S.shape}")
    if S.shape[-1] < 2:
        raise ValueError(f"preference logits need N >= 2 responses, got N={S.shape[-1]}")
    if not np.isfinite(S).all():
        raise ValueError("preference logits must be finite")
    return S


def check_logits(S) -> np.ndarray:
    """A judge's matrix made a valid ``S``: refuses non-square or non-finite input, returns the
    skew-symmetric part ``(S - S^T) / 2``.

    That averages both presentation orders (removing a judge's position bias) and sets the
    diagonal to 0; a matrix that is already skew-symmetric comes back unchanged.
    """
    S = _matrix(S)
    return (S - np.swapaxes(S, -1, -2)) / 2


def scalar_to_logits(rewards) -> np.ndarray:
    """``S_ij = r_i - r_j`` for rewards ``[..., N]``: a scalar reward as a preference matrix."""
    r = np.asarray(rewards, dtype=np.float64)
    return r[..., :, None] - r[..., None, :]


def aggregate(S, how: str) -> np.ndarray:
    """One score per response ``[..., N]`` from preference logits ``[..., N, N]`` (docs/preferences.md).

    * ``mean_logit``: ``(1/N) sum_j (S_ij - S_ji)``, GPM's ``max_logits`` and GPO's target;
      for ``S = r_i - r_j`` it is ``2 (r_i - mean(r))``.
    * ``win_rate``: ``(1/(N-1)) sum_{j != i} sigma(S_ij)``, the win share against the others
      (DNO, self-play preference optimisation).
    * ``win_rate_self``: ``(1/N) sum_j sigma(S_ij)`` with self counted as a tie (0.5), as SPPO's
      code does.
    * ``copeland``: ``(#{j: S_ij > 0} - #{j: S_ij < 0}) / (N-1)``, wins minus losses.

    The diagonal's stored value is never read (self is 0 in ``mean_logit``, excluded from
    ``win_rate`` and ``copeland``, and 0.5 in ``win_rate_self``).
    """
    if how not in AGGREGATES:
        raise ValueError(f"unknown aggregate {how!r}; choose one of: {', '.join(AGGREGATES)}")
    S = _matrix(S)
    n = S.shape[-1]
    others = ~np.eye(n, dtype=bool)
    if how == "mean_logit":
        return (S - np.swapaxes(S, -1, -2)).sum(-1) / n
    if how == "copeland":
        return np.where(others, np.sign(S), 0.0).sum(-1) / (n - 1)
    wins = np.where(others, sigmoid(S), 0.0).sum(-1)
    return wins / (n - 1) if how == "win_rate" else (wins + 0.5) / n


def beaten_by(S, positive: int, threshold: float) -> np.ndarray:
    """Bool ``[N]``: the responses ``j != positive`` with ``sigma(S[positive, j]) >= threshold``.

    The candidate negatives that ``select.require_beats`` keeps: under an intransitive judge the
    highest-aggregate positive can still lose to some lower-aggregate response, and such a pair
    would teach the policy the wrong direction.
    """
    S = _matrix(S)
    if S.ndim != 2:
        raise ValueError(f"beaten_by takes one prompt's [N, N] matrix, got shape {S.shape}")
    if not 0 <= positive < S.shape[0]:
        raise ValueError(f"positive {positive} is not a response index of an N={S.shape[0]} pool")
    keep = sigmoid(S[positive]) >= threshold
    keep[positive] = False
    return keep


# ---------------------------------------------------------------------------------------------
# General Preference Model (GPM, arXiv 2410.02197)


def gpm_gates(u: Tensor, form: str = "softmax", hidden_size: int | None = None) -> Tensor:
    """Gate weights ``lambda [..., k]`` from the prompt head's output ``u [..., k]``.

    ``softmax``: ``softmax(u)``, GPM's inference code. ``k_softmax_sqrtH``:
    ``k * softmax(u / sqrt(hidden_size))``, GPM's later training code (which, as
    released, fails: ``math`` not imported, ``hidden_dim`` undefined).
    """
    if form == "softmax":
        return torch.softmax(u, dim=-1)
    if form == "k_softmax_sqrtH":
        if hidden_size is None or hidden_size < 1:
            raise ValueError(f"gate 'k_softmax_sqrtH' needs the backbone's hidden_size, got {hidden_size}")
        return u.shape[-1] * torch.softmax(u / math.sqrt(hidden_size), dim=-1)
    raise ValueError(f"unknown GPM gate {form!r}; choose one of: {', '.join(GPM_GATES)}")


def gpm_score(v_i: Tensor, v_j: Tensor, gates: Tensor | None = None, normalize: bool = True) -> Tensor:
    """GPM's preference score ``s(y_i > y_j) = <R v_i, v_j>`` for embeddings ``[..., 2k]``.

    ``R`` is block-diagonal with blocks ``lambda_l * [[0, -1], [1, 0]]``, so
    ``s = sum_l lambda_l (v_i[2l] v_j[2l+1] - v_i[2l+1] v_j[2l])``: skew-symmetric
    (``s(i, j) = -s(j, i)``, ``s(i, i) = 0``). ``gates`` ``[..., k]`` default to 1;
    ``normalize`` L2-normalises the embeddings first (GPM's inference code). Broadcasts
    over leading axes; differentiable.
    """
    if v_i.shape[-1] % 2 or v_j.shape[-1] != v_i.shape[-1]:
        raise ValueError(f"GPM embeddings must share an even size 2k, got {v_i.shape[-1]} and {v_j.shape[-1]}")
    if normalize:
        v_i, v_j = torch.nn.functional.normalize(v_i, dim=-1), torch.nn.functional.normalize(v_j, dim=-1)
    blocks = v_i[..., 0::2] * v_j[..., 1::2] - v_i[..., 1::2] * v_j[..., 0::2]
    if gates is not None:
        blocks = gates * blocks
    return blocks.sum(-1)


def gpm_scores(V, gates=None, tau: float = 0.1, normalize: bool = True) -> np.ndarray:
    """Preference logits ``S_ij = s(y_i > y_j) / tau`` ``[..., N, N]`` from embeddings ``V [..., N, 2k]``.

    ``gates`` ``[..., k]`` are the prompt's gate weights (see `gpm_gates`), None for no gate.
    Exactly skew-symmetric with a zero diagonal. With ``normalize=False`` and ``V = (1, -r)``
    (k = 1, tau = 1) it is the scalar case ``S_ij = r_i - r_j``.
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    V = torch.as_tensor(np.asarray(V, dtype=np.float64))
    lam = None if gates is None else torch.as_tensor(np.asarray(gates, dtype=np.float64))[..., None, None, :]
    s = gpm_score(V[..., :, None, :], V[..., None, :, :], lam, normalize)
    return (s / tau).numpy()


def gpm_loss(
    v_w: Tensor, v_l: Tensor, p: Tensor | float = 1.0, gates: Tensor | None = None,
    tau: float = 0.1, normalize: bool = True, margin: float = 0.0,
) -> Tensor:
    """Elementwise loss of a GPM head on pairs ``(w, l)``: ``soft_bt_loss((s(w, l) - margin) / tau, 0, p)``.

    ``p = 1`` is GPM's ``-log sigma((s - margin) / tau)``; ``p < 1`` takes MMPO soft labels, as
    the scalar reward model does. ``margin`` is GPM's ``--margin_loss`` (0 = off).
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    logit = (gpm_score(v_w, v_l, gates, normalize) - margin) / tau
    return soft_bt_loss(logit, torch.zeros_like(logit), p)
