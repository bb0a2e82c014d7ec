"""Chunked completion-only log-probs against the naive full-logits computation."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from ampo import logprobs
from ampo.layouts import response_logprobs
from ampo.logprobs import build_rows, response_ids, sequence_logprobs
from ampo.models import encode_prompt


def naive_logprobs(model, input_ids, attention_mask, completion_mask) -> torch.Tensor:
    """Full `[rows, L, vocab]` logits; token t is scored by the logits at t - 1."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    token_logps = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (token_logps * completion_mask[:, 1:]).sum(-1)


def ragged_rows(vocab: int, seed: int = 0):
    """Rows with different prompt and response lengths (one empty response), right-padded."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(3, 5), (7, 1), (1, 9), (4, 0), (6, 6)]
    prompts = [torch.randint(2, vocab, (p,), generator=gen).tolist() for p, _ in shapes]
    responses = [torch.randint(2, vocab, (r,), generator=gen).tolist() for _, r in shapes]
    return build_rows(prompts, responses, pad_id=1)


def test_build_rows_docstring_example():
    result = doctest.testmod(logprobs, verbose=False)
    assert result.attempted >= 3 and result.failed == 0


def test_build_rows_exact_tensors():
    ids, attn, comp = build_rows([[4], [2, 3, 4]], [[7, 8], []], pad_id=9)
    assert ids.tolist() == [[4, 7, 8], [2, 3, 4]]
    assert attn.tolist() == [[1, 1, 1], [1, 1, 1]]
    assert comp.tolist() == [[0, 1, 1], [0, 0, 0]]
    assert ids.dtype == attn.dtype == comp.dtype == torch.long


def test_build_rows_rejects_mismatch_and_empty_prompt():
    with pytest.raises(ValueError, match="prompts"):
        build_rows([[1]], [[2], [3]], pad_id=0)
    with pytest.raises(ValueError, match="prompt token"):
        build_rows([[]], [[2]], pad_id=0)


def test_response_ids_appends_eos_only_when_finished(tiny_tokenizer):
    plain = tiny_tokenizer("a happy cat", add_special_tokens=False).input_ids
    assert response_ids(tiny_tokenizer, "a happy cat", finished=False) == plain
    assert response_ids(tiny_tokenizer, "a happy cat", True) == plain + [tiny_tokenizer.eos_token_id]


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_values_match_naive_with_padding_and_ragged_rows(tiny_model, chunk_size):
    ids, attn, comp = ragged_rows(tiny_model.config.vocab_size)
    with torch.no_grad():
        got, counts = sequence_logprobs(tiny_model, ids, attn, comp, chunk_size=chunk_size)
        want = naive_logprobs(tiny_model, ids, attn, comp)
    assert counts.tolist() == [5, 1, 9, 0, 6]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got[3] == 0 and (got[[0, 1, 2, 4]] < 0).all()


def test_chunk_sizes_agree(tiny_model):
    ids, attn, comp = ragged_rows(tiny_model.config.vocab_size, seed=1)
    with torch.no_grad():
        results = [sequence_logprobs(tiny_model, ids, attn, comp, chunk_size=c)[0] for c in (1, 3, 10_000)]
    torch.testing.assert_close(results[0], results[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(results[0], results[2], atol=1e-6, rtol=0)


def test_padding_does_not_change_a_row(tiny_model):
    """A row scored alone equals the same row scored next to a longer one."""
    alone = build_rows([[5, 6, 7]], [[8, 9]], pad_id=1)
    padded = build_rows([[5, 6, 7], [10] * 8], [[8, 9], [11] * 6], pad_id=1)
    with torch.no_grad():
        a = sequence_logprobs(tiny_model, *alone)[0]
        b = sequence_logprobs(tiny_model, *padded)[0]
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk_size", [2, 1024])
def test_gradients_match_naive(tiny_model, chunk_size):
    ids, attn, comp = ragged_rows(tiny_model.config.vocab_size, seed=2)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, 1.5])  # a generic linear loss of the row sums

    got, _ = sequence_logprobs(tiny_model, ids, attn, comp, chunk_size=chunk_size)
    (got * weights).sum().backward()
    chunked = {name: p.grad.clone() for name, p in tiny_model.named_parameters()}
    tiny_model.zero_grad()
    (naive_logprobs(tiny_model, ids, attn, comp) * weights).sum().backward()

    assert got.requires_grad
    for name, p in tiny_model.named_parameters():
        assert p.grad.abs().sum() > 0, name
        torch.testing.assert_close(chunked[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_rejects_completion_at_position_zero(tiny_model):
    ids, attn, comp = build_rows([[3, 4]], [[5]], pad_id=1)
    comp[0, 0] = 1
    with pytest.raises(ValueError, match="position 0"):
        sequence_logprobs(tiny_model, ids, attn, comp)


def test_response_logprobs_matches_per_row_computation(tiny_model, tiny_tokenizer):
    prompts = ["Write a story", [{"role": "user", "content": "Why is the sky blue?"}]]
    responses = [["a happy cat", "sad", "The quick brown fox jumps"], ["because"]]
    finished = [[True, False, True], [False]]
    tiny_model.train()

    logps, counts = response_logprobs(tiny_model, tiny_tokenizer, prompts, responses, finished, batch_rows=2)

    assert tiny_model.training  # mode restored
    assert [a.shape for a in logps] == [(3,), (1,)] and logps[0].dtype == np.float32
    for i, prompt in enumerate(prompts):
        for j, text in enumerate(responses[i]):
            resp = response_ids(tiny_tokenizer, text, finished[i][j])
            rows = build_rows([encode_prompt(tiny_tokenizer, prompt)], [resp], tiny_tokenizer.pad_token_id)
            with torch.no_grad():
                want = naive_logprobs(tiny_model.eval(), *rows)[0].item()
            assert counts[i][j] == len(resp)
            assert logps[i][j] == pytest.approx(want, abs=1e-4)


def test_response_logprobs_defaults_to_finished(tiny_model, tiny_tokenizer):
    logps, counts = response_logprobs(tiny_model, tiny_tokenizer, ["hi"], [["a cat", "a cat"]])
    _, counts_open = response_logprobs(tiny_model, tiny_tokenizer, ["hi"], [["a cat"]], [[False]])
    assert counts[0][0] == counts[0][1] == counts_open[0][0] + 1
    assert logps[0][0] == logps[0][1]


def test_lora_wrapped_model_matches_naive(tiny_model):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ids, attn, comp = ragged_rows(tiny_model.config.vocab_size, seed=3)
    got, _ = sequence_logprobs(model, ids, attn, comp, chunk_size=4)
    got.sum().backward()
    lora = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    want = naive_logprobs(model, ids, attn, comp)
    want.sum().backward()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert lora and all("lora_" in n for n in lora)
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(lora[n], p.grad, atol=1e-5, rtol=1e-4)


def test_eos_logprobs_match_naive_at_the_end_of_each_response(tiny_model, tiny_tokenizer):
    """Finished: the final EOS token's log-prob; cut off: P(EOS) after the last token; empty: after
    the prompt."""
    eos = tiny_tokenizer.eos_token_id
    prompts, responses = [[3, 4, 5], [6, 7], [8, 9, 10]], [[12, 13, eos], [14, 15], []]
    with torch.no_grad():
        _, _, got = sequence_logprobs(tiny_model, *build_rows(prompts, responses, pad_id=1), eos_id=eos)
        for i, (p, r) in enumerate(zip(prompts, responses)):
            logits = tiny_model(input_ids=torch.tensor([p + r])).logits[0].float().log_softmax(-1)
            content = r[:-1] if r and r[-1] == eos else r
            assert got[i].item() == pytest.approx(logits[len(p) + len(content) - 1, eos].item(), abs=1e-5)
