"""Training a reward model on preference pairs: hard or margin-matching soft labels (MMPO, arXiv 2410.03145),
a Bradley-Terry head or a General Preference Model head."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..losses import soft_bt_loss
from .reward_model import encode_pairs

# A reward model trained from a backbone gets a new head: the only weights it may lack
NEW_HEADS = ("classifier.", "score.")
RM_HEADS = ("bt", "gpm")  # Bradley-Terry (one logit) | General Preference Model (2k outputs)


def preference_labels(
    pairs: Sequence[Mapping[str, Any]],
    soft_gamma: float | None = None,
    source: str | Path = "preference pairs",
    rows: Sequence[int] | None = None,
) -> list[tuple[str, str, str, float]]:
    """`(prompt, winner, loser, p)` per pair, where p is the probability that the winner wins.

    Without `soft_gamma`, p = 1 (hard labels). With it, p = sigmoid(soft_gamma * margin), the
    margin being `score_chosen - score_rejected` or `margin`; if p < 0.5 the two responses are
    swapped and p <- 1 - p (MMPO's code). A prompt may be a chat message list (its last user
    message is used). Errors name `source` and the pair's 1-based row (`rows[i]` when given).
    """
    from ..data import PoolError, _check_number, _check_prompt, prompt_text

    labelled = []
    for i, pair in enumerate(pairs):
        row = rows[i] if rows is not None else i + 1
        prompt = prompt_text(_check_prompt(source, row, pair.get("prompt")))
        for key in ("chosen", "rejected"):
            if not isinstance(pair.get(key), str):
                raise PoolError(source, row, key, "must be a string")
        winner, loser, p = pair["chosen"], pair["rejected"], 1.0
        if soft_gamma is not None:
            if "score_chosen" in pair and "score_rejected" in pair:
                margin = (_check_number(source, row, pair["score_chosen"], "score_chosen")
                          - _check_number(source, row, pair["score_rejected"], "score_rejected"))
            elif "margin" in pair:
                margin = _check_number(source, row, pair["margin"], "margin")
            else:
                raise PoolError(source, row, None, "soft labels need 'score_chosen' and 'score_rejected', "
                                "or 'margin'")
            p = _sigmoid(soft_gamma * margin)
            if p < 0.5:
                winner, loser, p = loser, winner, 1 - p
        labelled.append((prompt, winner, loser, p))
    return labelled


def _sigmoid(x: float) -> float:
    """1 / (1 + e^-x) without overflow for any finite x (a huge margin gives 0 or 1)."""
    if x >= 0:
        return 1 / (1 + math.exp(-min(x, 700.0)))
    z = math.exp(max(x, -700.0))
    return z / (1 + z)


def _fresh_dir(out_dir: Path) -> None:
    """Refuse to overwrite a non-empty output folder."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"output folder {out_dir} already exists and is not empty")


def train_reward_model(
    pairs: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    backbone: str | Path | None = None,
    soft_gamma: float | None = None,
    epochs: int = 2,
    lr: float = 1e-4,
    batch_size: int = 16,
    max_length: int = 128,
    seed: int = 0,
    device: str = "cpu",
    head: str = "bt",
    gpm: Any = None,
) -> Path:
    """Train a reward model on preference pairs and save it to `out_dir`.

    `head="bt"`: a one-logit model, loss (soft) Bradley-Terry on `r(prompt, winner) -
    r(prompt, loser)`; `HFRewardModel(out_dir)` loads it. `head="gpm"`: a General Preference
    Model with the options `gpm` (an `ampo.rewards.gpm.GPMHead`; default value_head_dim 2, tau 0.1,
    normalised, no gate): `2k` outputs are the preference embedding `v`, loss
    `gpm_loss(v_winner, v_loser, p)`; `ampo.rewards.gpm.GPMScorer(out_dir)` loads it. Both take the labels
    of `preference_labels` (hard, or MMPO soft labels with `soft_gamma`). The backbone (default:
    the bundled all-MiniLM-L6-v2 BERT) is loaded as `AutoModelForSequenceClassification` and
    trained with AdamW, linear decay after 10% warmup, gradient clipping at 1. Everything is
    written to a temporary folder and renamed into `out_dir`.
    """
    from tqdm.auto import tqdm
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.optimization import get_linear_schedule_with_warmup

    from ampo.data import atomic_dir
    from ampo.embeddings import minilm_path
    from ampo.models import load_weights

    from .gpm import GPMHead, PromptGate, save_gate
    from ampo.preferences import gpm_loss

    out_dir = Path(out_dir)
    _fresh_dir(out_dir)
    if head not in RM_HEADS:
        raise ValueError(f"reward-model head must be one of {', '.join(RM_HEADS)}, got {head!r}")
    if gpm is not None and head != "gpm":
        raise ValueError("GPM options need head='gpm'")
    gpm = (gpm or GPMHead()) if head == "gpm" else None
    if soft_gamma is not None and not (math.isfinite(soft_gamma) and soft_gamma > 0):
        raise ValueError(f"soft_gamma must be a finite number > 0, got {soft_gamma}")
    if epochs < 1 or batch_size < 1 or max_length < 1 or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"epochs, batch_size and max_length must be >= 1 and lr a finite number > 0, got "
                         f"{epochs}, {batch_size}, {max_length}, {lr}")
    examples = preference_labels(pairs, soft_gamma)
    if not examples:
        raise ValueError("train_reward_model needs at least one preference pair")
    backbone = Path(backbone) if backbone is not None else minilm_path()

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    model = load_weights(AutoModelForSequenceClassification, backbone, "reward-model backbone",
                         new_head=NEW_HEADS, num_labels=gpm.value_head_dim if gpm else 1,
                         ignore_mismatched_sizes=True)  # a backbone's own head of another size is replaced
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device).train()
    gate = None
    if gpm and gpm.gate != "none":
        gate = PromptGate(model.config.hidden_size, gpm.k, gpm.gate).to(device).train()

    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total = epochs * steps_per_epoch
    params = list(model.parameters()) + (list(gate.parameters()) if gate else [])
    optimizer = torch.optim.AdamW(params, lr=lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * total), total)
    generator = torch.Generator().manual_seed(seed)
    progress = tqdm(total=total, desc="reward model", disable=None)
    for _ in range(epochs):
        for batch_idx in torch.randperm(len(examples), generator=generator).split(batch_size):
            prompts, winners, losers, p = zip(*(examples[i] for i in batch_idx.tolist()))
            inputs = encode_pairs(tokenizer, prompts * 2, winners + losers, max_length).to(device)
            out = model(**inputs).logits
            target = torch.tensor(p, dtype=out.dtype, device=device)
            if gpm is None:
                loss = soft_bt_loss(out[: len(p), 0], out[len(p):, 0], target).mean()
            else:
                gates = gate(model, tokenizer, prompts, max_length) if gate else None
                loss = gpm_loss(out[: len(p)], out[len(p):], target, gates, gpm.tau, gpm.normalize).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            progress.update()
            progress.set_postfix(loss=f"{loss.item():.4f}")
    progress.close()

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if gpm is not None:
            gpm.save(Path(tmp))
            if gate is not None:
                save_gate(gate, Path(tmp))
        _fresh_dir(out_dir)
    return out_dir
