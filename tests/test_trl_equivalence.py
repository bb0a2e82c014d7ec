"""ampo's pairwise losses against TRL 1.16 on the same pairs, token ids and tiny model.

ampo trains a group (1 positive + K-1 negatives) per prompt; TRL trains the K-1 equivalent
(positive, negative) pairs. With every group of the same size K, ampo's mean over prompts of the
mean over pairs equals TRL's mean over all pairs, so loss and parameter gradients must agree.

How TRL is driven, offline and without downloads: `DPOTrainer` and the experimental `CPOTrainer`
are built from the in-process tiny model and tokenizer and a text dataset of
`(prompt, chosen, rejected)`, the prompt being ampo's `chat_prompt` string. TRL tokenises that
dataset itself (DPO appends EOS to the texts, CPO appends the EOS id) and we first check that its
token ids equal ampo's (`encode_prompt` + `response_ids(..., finished=True)`). The batch is then
laid out by TRL's own collator (`trainer.data_collator`) and its loss taken with
`trainer.compute_loss`; ampo's side runs `GroupCollator` + `GroupTrainer.compute_loss`. Both
backpropagate on separate but identical copies of the policy.

The policy (seed 1) differs from the reference (seed 0), so the log-ratios are not all zero. With
`precompute_ref_log_probs=True` TRL scores the reference with the model it is given, so that
trainer is built on the seed-0 model and the seed-1 weights are loaded into it afterwards.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import TrainingArguments
from trl import DPOConfig, DPOTrainer
from trl.experimental.cpo import CPOConfig, CPOTrainer

from ampo.layouts import response_logprobs
from ampo.logprobs import response_ids
from ampo.models import chat_prompt, encode_prompt
from ampo.trainer import Group, GroupCollator, GroupDataset, GroupTrainer
from helpers import make_tiny_model, make_tiny_tokenizer

# Two prompts, each with a group of K = 4 responses (positive first) of different lengths.
GROUPS = [
    ("Write a short happy story about a cat.",
     ["Once upon a time there was a happy cat in a sunny garden.", "I hated every minute.",
      "The quick brown fox.", "Numbers like 1, 2, 3 and 42 appear in text too."]),
    ("Explain why the sky is blue in one sentence.",
     ["The sky is blue because air scatters blue light.", "This is terrible, awful and sad.",
      "I love this movie!", "A small robot wanted to sing."]),
]
TOL = {"rtol": 1e-5, "atol": 1e-5}
POLICY_SEED, REF_SEED = 1, 0


def pairs(tokenizer) -> list[dict]:
    """TRL's rows: every (positive, negative j) pair of every group, prompt as ampo renders it."""
    return [
        {"prompt": chat_prompt(tokenizer, prompt), "chosen": texts[0], "rejected": neg}
        for prompt, texts in GROUPS
        for neg in texts[1:]
    ]


def ampo_groups(tokenizer) -> list[Group]:
    """ampo's groups, with reference log-probs from the reference model."""
    prompts = [p for p, _ in GROUPS]
    reference = make_tiny_model(tokenizer, REF_SEED)
    refs, _ = response_logprobs(reference, tokenizer, prompts, [texts for _, texts in GROUPS])
    return [
        Group(prompt_ids=encode_prompt(tokenizer, prompt),
              response_ids=[response_ids(tokenizer, t, finished=True) for t in texts],
              rewards=[1.0] + [0.0] * (len(texts) - 1),
              ref_logps=[ref.tolist()])
        for (prompt, texts), ref in zip(GROUPS, refs)
    ]


def expected_ids(tokenizer) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, chosen, rejected) token ids as ampo builds them, in `pairs` order."""
    out = []
    for prompt, texts in GROUPS:
        p = encode_prompt(tokenizer, prompt)
        pos = response_ids(tokenizer, texts[0], finished=True)
        out += [(p, pos, response_ids(tokenizer, neg, finished=True)) for neg in texts[1:]]
    return out


def grads(model) -> dict[str, torch.Tensor]:
    """Every parameter's gradient (all of them must have one)."""
    out = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None for g in out.values())
    return out


def assert_same_grads(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Same parameter names and gradients equal to 1e-5."""
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], **TOL, msg=lambda m, n=name: f"{n}: {m}")


def ampo_loss(tmp_path, loss: str, hparams: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
    """`GroupTrainer.compute_loss` on all groups in one batch, backpropagated: (loss, grads, batch)."""
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer, POLICY_SEED)
    groups = ampo_groups(tokenizer)
    args = TrainingArguments(output_dir=str(tmp_path / "ampo"), use_cpu=True, report_to="none")
    trainer = GroupTrainer(model=model, args=args, train_dataset=GroupDataset(groups),
                           data_collator=GroupCollator(tokenizer.pad_token_id), loss_name=loss,
                           loss_hparams=hparams, logprob_chunk=5)
    batch = trainer.data_collator(groups)
    value = trainer.compute_loss(model, batch)
    value.backward()
    return value.detach(), grads(model), batch


def dpo_trainer(tmp_path, loss_type: str, precompute: bool) -> DPOTrainer:
    """TRL's DPOTrainer on the pairs: fp32, no checkpointing, refs precomputed or from a ref model."""
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer, REF_SEED if precompute else POLICY_SEED)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False, activation_checkpointing=False,
                     report_to="none", loss_type=[loss_type], beta=0.1, max_length=None,
                     precompute_ref_log_probs=precompute)
    ref_model = None if precompute else make_tiny_model(tokenizer, REF_SEED)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list(pairs(tokenizer)))
    if precompute:  # the reference log-probs are stored: now make the policy the seed-1 model
        trainer.model.load_state_dict(make_tiny_model(tokenizer, POLICY_SEED).state_dict())
    return trainer


def trl_loss(trainer) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
    """TRL's collator over the whole prepared dataset, its `compute_loss`, backpropagated."""
    dataset = trainer.train_dataset
    batch = trainer.data_collator([dataset[i] for i in range(len(dataset))])
    value = trainer.compute_loss(trainer.model, batch)
    value.backward()
    return value.detach(), grads(trainer.model), batch


def test_trl_dpo_sees_the_same_token_ids(tmp_path):
    trainer = dpo_trainer(tmp_path, "sigmoid", precompute=False)
    ds = trainer.train_dataset
    got = list(zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]))
    assert got == expected_ids(make_tiny_tokenizer())
    eos = trainer.processing_class.eos_token_id
    assert all(c[-1] == eos and r[-1] == eos for _, c, r in got)


@pytest.mark.parametrize("precompute", [True, False], ids=["precomputed-refs", "ref-model"])
def test_dpo_matches_trl_loss_and_gradients(tmp_path, precompute):
    loss, grad, batch = ampo_loss(tmp_path, "dpo", {"beta": 0.1})
    trl_value, trl_grad, trl_batch = trl_loss(dpo_trainer(tmp_path, "sigmoid", precompute))
    if precompute:  # TRL's reference log-probs equal ampo's, pair by pair
        ref = batch["ref_logps"][0].float()
        negatives = ref.shape[1] - 1
        torch.testing.assert_close(trl_batch["ref_chosen_logps"], ref[:, :1].expand(-1, negatives).reshape(-1), **TOL)
        torch.testing.assert_close(trl_batch["ref_rejected_logps"], ref[:, 1:].reshape(-1), **TOL)
    assert loss.item() > 0.01  # a real loss, not a degenerate zero
    torch.testing.assert_close(loss, trl_value, **TOL)
    assert_same_grads(grad, trl_grad)


def test_simpo_matches_trl_cpo_simpo_loss_and_gradients(tmp_path):
    beta, gamma = 2.0, 1.0  # ampo's defaults; CPO's simpo uses -logsigmoid(beta * (avg_w - avg_l) - simpo_gamma)
    loss, grad, _ = ampo_loss(tmp_path, "simpo", {"beta": beta, "gamma": gamma})
    tokenizer = make_tiny_tokenizer()
    args = CPOConfig(output_dir=str(tmp_path / "cpo"), use_cpu=True, bf16=False, activation_checkpointing=False,
                     report_to="none", loss_type="simpo", cpo_alpha=0.0, beta=beta, simpo_gamma=gamma)
    trainer = CPOTrainer(model=make_tiny_model(tokenizer, POLICY_SEED), args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list(pairs(tokenizer)))
    ds = trainer.train_dataset
    assert len(ds) == len(expected_ids(tokenizer))
    for row, (p, c, r) in zip(ds, expected_ids(tokenizer)):
        assert row["chosen_input_ids"] == p + c and row["rejected_input_ids"] == p + r
        assert row["chosen_labels"] == [-100] * len(p) + c
    trl_value, trl_grad, _ = trl_loss(trainer)
    torch.testing.assert_close(loss, trl_value, **TOL)
    assert_same_grads(grad, trl_grad)


def test_ipo_per_token_matches_trl_and_summed_differs(tmp_path):
    """TRL's IPO divides each log-ratio by its completion length; ampo's `ipo` uses summed log-probs
    by default (docs/losses.md) and TRL's form with `per_token=True`."""
    trl_value, trl_grad, _ = trl_loss(dpo_trainer(tmp_path, "ipo", precompute=True))
    summed, _, _ = ampo_loss(tmp_path, "ipo", {"beta": 0.1})
    assert abs(summed.item() - trl_value.item()) > 1.0  # summed and averaged IPO are different losses
    per_token, per_token_grad, _ = ampo_loss(tmp_path, "ipo", {"beta": 0.1, "per_token": True})
    torch.testing.assert_close(per_token, trl_value, **TOL)
    assert_same_grads(per_token_grad, trl_grad)
