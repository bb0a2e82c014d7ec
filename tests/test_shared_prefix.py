"""Shared-prefix rows (the prompt once, then every response of its group) against the plain
one-row-per-response path: layout, values, gradients, the trainer and the reference pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ampo.config import load_config
from ampo.layouts import PaddedRows, SharedPrefixRows, response_logprobs
from ampo.logprobs import build_rows, build_shared_prefix_rows, sequence_logprobs, shared_prefix_logprobs
from ampo.trainer import GroupCollator, GroupDataset, GroupTrainer, build_groups, training_args
from helpers import make_tiny_model, make_tiny_tokenizer
from helpers import pool_records

# three groups: ragged prompts, ragged group sizes, one empty response
PROMPTS = [[3, 4, 5], [6, 7], [8, 9, 10, 11]]
GROUPS = [[[12, 13], [14], [15, 16, 17]], [[18, 19, 20, 21], [22]], [[23], [24, 25], [], [26]]]
K = 4


def plain_grid(model, prompts, groups, group_size, weights=None):
    """Each response in its own padded row, scattered into the `[groups, group_size]` grid."""
    flat = [(i, k, p, r) for i, (p, rs) in enumerate(zip(prompts, groups)) for k, r in enumerate(rs)]
    values, counts = sequence_logprobs(model, *build_rows([f[2] for f in flat], [f[3] for f in flat], pad_id=1))
    grid = torch.zeros(len(groups), group_size)
    lengths = torch.zeros(len(groups), group_size, dtype=torch.long)
    for (i, k, _, _), v, n in zip(flat, values, counts):
        grid[i, k], lengths[i, k] = v, n
    return grid, lengths


def test_layout_exact_tensors():
    ids, pos, seg = build_shared_prefix_rows([[3, 4], [5]], [[[6], [7, 8]], [[9, 10, 11]]], pad_id=0)
    assert ids.tolist() == [[3, 4, 6, 7, 8], [5, 9, 10, 11, 0]]
    assert pos.tolist() == [[0, 1, 2, 2, 3], [0, 1, 2, 3, 0]]
    assert seg.tolist() == [[0, 0, 1, 2, 2], [0, 1, 1, 1, -1]]


def test_layout_rejects_mismatch_and_empty_prompt():
    with pytest.raises(ValueError, match="2 prompts but 1 groups"):
        build_shared_prefix_rows([[1], [2]], [[[3]]], pad_id=0)
    with pytest.raises(ValueError, match="at least one prompt token"):
        build_shared_prefix_rows([[]], [[[3]]], pad_id=0)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("chunk_size", [3, 1024])
def test_values_and_gradients_match_plain_rows(tiny_tokenizer, attention, chunk_size):
    model = make_tiny_model(tiny_tokenizer)
    model.config._attn_implementation = attention
    weights = torch.tensor([[1.0, -2.0, 0.5, 0.0], [3.0, 1.5, 0.0, 0.0], [-1.0, 2.0, 4.0, 0.7]])

    got, counts = shared_prefix_logprobs(model, *build_shared_prefix_rows(PROMPTS, GROUPS, 1), K, chunk_size)
    (got * weights).sum().backward()
    shared = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    want, want_counts = plain_grid(model, PROMPTS, GROUPS, K)
    (want * weights).sum().backward()

    assert counts.tolist() == [[2, 1, 3, 0], [4, 1, 0, 0], [1, 2, 0, 1]] == want_counts.tolist()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got[2, 2] == 0 and got[1, 2:].abs().sum() == 0
    for name, p in model.named_parameters():
        assert p.grad.abs().sum() > 0, name
        torch.testing.assert_close(shared[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_eos_logprobs_match_plain_rows(tiny_tokenizer):
    model = make_tiny_model(tiny_tokenizer)
    eos = tiny_tokenizer.eos_token_id
    groups = [[r + [eos] if k == 0 else r for k, r in enumerate(rs)] for rs in GROUPS]  # some finished
    rows = build_shared_prefix_rows(PROMPTS, groups, 1)
    _, _, got = shared_prefix_logprobs(model, *rows, K, eos_id=eos)
    flat = [(i, k, p, r) for i, (p, rs) in enumerate(zip(PROMPTS, groups)) for k, r in enumerate(rs)]
    _, _, want = sequence_logprobs(model, *build_rows([f[2] for f in flat], [f[3] for f in flat], 1), eos_id=eos)
    for (i, k, _, _), value in zip(flat, want):
        torch.testing.assert_close(got[i, k], value, atol=1e-5, rtol=1e-5)


def test_a_group_does_not_see_its_neighbours(tiny_tokenizer):
    """Changing one response changes no other response's log-prob (the block mask holds)."""
    model = make_tiny_model(tiny_tokenizer)
    edited = [[list(r) for r in rs] for rs in GROUPS]
    edited[0][0] = [30, 31, 32, 33]
    with torch.no_grad():
        a, _ = shared_prefix_logprobs(model, *build_shared_prefix_rows(PROMPTS, GROUPS, 1), K)
        b, _ = shared_prefix_logprobs(model, *build_shared_prefix_rows(PROMPTS, edited, 1), K)
    assert a[0, 0] != b[0, 0]
    keep = torch.ones_like(a, dtype=torch.bool)
    keep[0, 0] = False
    torch.testing.assert_close(a[keep], b[keep], atol=1e-5, rtol=0)


def test_lora_wrapped_model_matches_plain_rows(tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(make_tiny_model(tiny_tokenizer),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    got, _ = shared_prefix_logprobs(model, *build_shared_prefix_rows(PROMPTS, GROUPS, 1), K)
    want, _ = plain_grid(model, PROMPTS, GROUPS, K)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_refuses_what_the_mask_cannot_express(tiny_tokenizer):
    model = make_tiny_model(tiny_tokenizer)
    rows = build_shared_prefix_rows(PROMPTS, GROUPS, 1)
    with pytest.raises(ValueError, match="more than group_size=3"):
        shared_prefix_logprobs(model, *rows, 3)
    model.config.sliding_window = 8
    with pytest.raises(ValueError, match="exceed the sliding window"):
        shared_prefix_logprobs(model, *rows, K)
    model.config.sliding_window = None
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="sdpa or eager"):
        shared_prefix_logprobs(model, *rows, K)


def test_response_logprobs_shared_equals_plain(tiny_model, tiny_tokenizer):
    prompts = ["Write a story", [{"role": "user", "content": "Why is the sky blue?"}], "Nothing to score"]
    responses = [["a happy cat", "sad", "The quick brown fox jumps"], ["because"], []]
    finished = [[True, False, True], [False], []]
    plain = response_logprobs(tiny_model, tiny_tokenizer, prompts, responses, finished, batch_rows=2)
    shared = response_logprobs(tiny_model, tiny_tokenizer, prompts, responses, finished, batch_rows=2,
                               shared_prefix=True)
    for a, b in zip(plain[0], shared[0]):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert [c.tolist() for c in plain[1]] == [c.tolist() for c in shared[1]]
    assert shared[0][2].shape == (0,)


def test_collator_and_layout_logprobs_agree_with_plain_layout(tiny_tokenizer, tiny_model):
    groups = build_groups(tiny_tokenizer, pool_records())
    shared = GroupCollator(tiny_tokenizer.pad_token_id, shared_prefix=True)(groups)
    plain = GroupCollator(tiny_tokenizer.pad_token_id)(groups)
    assert shared["input_ids"].shape[0] == 2 and plain["input_ids"].shape[0] == 6
    assert "attention_mask" not in shared and "row_slot" not in shared
    assert torch.equal(shared["mask"], plain["mask"]) and torch.equal(shared["rewards"], plain["rewards"])
    a, la = SharedPrefixRows().logprobs(tiny_model, shared, chunk_size=5)
    b, lb = PaddedRows().logprobs(tiny_model, plain, chunk_size=5)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.equal(la, lb)


def train(tmp_path, shared_prefix: bool, loss: str):
    tok = make_tiny_tokenizer()
    model = make_tiny_model(tok)
    c = load_config(overrides=[f"train.loss={loss}", "train.learning_rate=0.01", "train.prompts_per_step=2",
                               "train.warmup_ratio=0", "train.lr_scheduler=constant", "model.lora=false",
                               "train.save_steps=1000"])
    records = pool_records() * 3
    refs = [[(-20 + np.arange(len(r.selected)) * 0.5).tolist()] for r in records]
    trainer = GroupTrainer(model=model, args=training_args(c, tmp_path / str(shared_prefix), progress=False),
                           train_dataset=GroupDataset(build_groups(tok, records, refs)),
                           data_collator=GroupCollator(tok.pad_token_id, shared_prefix=shared_prefix),
                           loss_name=loss, loss_hparams=c.train.hparams)
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h], model


@pytest.mark.parametrize("loss", ["ampo", "dpo"])
def test_training_with_shared_prefix_follows_the_plain_path(tmp_path, loss):
    plain_losses, plain_model = train(tmp_path, False, loss)
    shared_losses, shared_model = train(tmp_path, True, loss)
    assert len(plain_losses) == len(shared_losses) == 3
    np.testing.assert_allclose(shared_losses, plain_losses, rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(shared_model.named_parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("layout", [PaddedRows(), SharedPrefixRows()])
def test_layout_batches_cover_every_response_once(layout):
    plan = layout.batches(PROMPTS + [[1]], GROUPS + [[]], batch_rows=3)
    seen = sorted((i, j) for batch in plan for i, js in batch for j in js)
    assert seen == sorted((i, j) for i, g in enumerate(GROUPS) for j in range(len(g)))
    assert all(sum(len(js) for _, js in batch) <= 4 for batch in plan)  # one group of K = 4 at most
