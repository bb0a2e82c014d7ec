"""Sampling N responses per prompt with the transformers backend (and vLLM where available)."""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ampo.generation import GenerationConfig, HFGenerator, Sample, make_generator
from ampo.logprobs import response_ids, response_logprobs
from ampo.models import DEFAULT_POLICY, encode_prompt, load_policy

PROMPTS = [
    "Write a short happy story",
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Why is the sky blue?"}],
    "Hi",
]


def with_eos_bias(model, tokenizer, bias: float):
    """Give the output head a bias on EOS, to force (or forbid) stopping."""
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = bias
    model.lm_head = head
    return model


def greedy_reference(model, tokenizer, prompt, max_new_tokens) -> Sample:
    """Greedy decoding by hand: full forward each step, no cache, no padding."""
    ids = encode_prompt(tokenizer, prompt)
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = model(torch.tensor([ids + new])).logits[0, -1].argmax().item()
            new.append(token)
            if token == tokenizer.eos_token_id:
                return Sample(tokenizer.decode(new[:-1], skip_special_tokens=True), len(new), True)
    return Sample(tokenizer.decode(new, skip_special_tokens=True), len(new), False)


def test_shapes_and_types(tiny_model, tiny_tokenizer):
    config = GenerationConfig(n=4, max_new_tokens=6, prompts_per_batch=2)
    out = HFGenerator(tiny_model, tiny_tokenizer, config).generate(PROMPTS, progress=False)
    assert [len(samples) for samples in out] == [4, 4, 4]
    for sample in (s for samples in out for s in samples):
        assert isinstance(sample, Sample) and isinstance(sample.text, str)
        assert 1 <= sample.n_tokens <= 6


@pytest.mark.parametrize("share_prefill", [True, False])
def test_sampling_is_deterministic_per_seed_and_keeps_global_rng(tiny_model, tiny_tokenizer, share_prefill):
    def run(seed):
        config = GenerationConfig(n=4, temperature=1.0, max_new_tokens=8, seed=seed, share_prefill=share_prefill)
        return HFGenerator(tiny_model, tiny_tokenizer, config).generate(PROMPTS, progress=False)

    rng_before = torch.get_rng_state()
    first = run(seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert run(seed=0) == first
    assert run(seed=1) != first
    assert len({s.text for s in first[0]}) > 1  # samples of one prompt differ


@pytest.mark.parametrize("share_prefill", [True, False])
def test_greedy_matches_a_hand_written_decoder(tiny_model, tiny_tokenizer, share_prefill):
    """Left padding and (for share_prefill) the repeated prefill cache change nothing."""
    config = GenerationConfig(n=3, temperature=0.0, max_new_tokens=10, share_prefill=share_prefill)
    out = HFGenerator(tiny_model, tiny_tokenizer, config).generate(PROMPTS, progress=False)
    for prompt, samples in zip(PROMPTS, out):
        assert samples == [greedy_reference(tiny_model, tiny_tokenizer, prompt, 10)] * 3


def test_greedy_identical_with_and_without_prefill_sharing(tiny_model, tiny_tokenizer):
    def run(share):
        config = GenerationConfig(n=2, temperature=0.0, max_new_tokens=16, share_prefill=share, prompts_per_batch=3)
        return HFGenerator(tiny_model, tiny_tokenizer, config).generate(PROMPTS, progress=False)

    assert run(True) == run(False)


@pytest.mark.parametrize("share_prefill", [True, False])
def test_prefill_runs_once_per_prompt_only_when_shared(tiny_model, tiny_tokenizer, share_prefill):
    calls = []
    hook = tiny_model.model.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    config = GenerationConfig(n=4, max_new_tokens=3, share_prefill=share_prefill)
    HFGenerator(tiny_model, tiny_tokenizer, config).generate(PROMPTS[:2], progress=False)
    hook.remove()
    width = max(len(encode_prompt(tiny_tokenizer, p)) for p in PROMPTS[:2])
    if share_prefill:
        assert calls[0] == (2, width - 1) and calls[1] == (8, 1)
    else:
        assert calls[0] == (8, width)
    assert all(rows == 8 and length == 1 for rows, length in calls[-2:])


def test_finished_when_eos_comes_first(tiny_model, tiny_tokenizer):
    model = with_eos_bias(tiny_model, tiny_tokenizer, 50.0)
    config = GenerationConfig(n=3, temperature=1.0, max_new_tokens=5)
    out = HFGenerator(model, tiny_tokenizer, config).generate(PROMPTS[:2], progress=False)
    assert all(s == Sample("", 1, True) for samples in out for s in samples)


def test_unfinished_when_max_new_tokens_is_hit(tiny_model, tiny_tokenizer):
    model = with_eos_bias(tiny_model, tiny_tokenizer, -50.0)
    config = GenerationConfig(n=3, temperature=1.0, max_new_tokens=7)
    out = HFGenerator(model, tiny_tokenizer, config).generate(PROMPTS[:2], progress=False)
    assert all(not s.finished and s.n_tokens == 7 for samples in out for s in samples)


def test_mixed_stopping_flags_and_counts(tiny_model, tiny_tokenizer):
    model = with_eos_bias(tiny_model, tiny_tokenizer, 3.5)
    config = GenerationConfig(n=8, temperature=1.0, max_new_tokens=10)
    samples = [s for group in HFGenerator(model, tiny_tokenizer, config).generate(PROMPTS, False) for s in group]
    assert {s.finished for s in samples} == {True, False}
    for s in samples:
        assert "<|im_end|>" not in s.text
        assert s.n_tokens == 10 if not s.finished else 1 <= s.n_tokens <= 10


def test_generation_config_validation():
    for bad in ({"n": 0}, {"temperature": -0.1}, {"top_p": 0.0}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError, match="generation"):
            GenerationConfig(**bad)


def test_make_generator(tiny_model, tiny_tokenizer, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    config = GenerationConfig(n=2, temperature=0.0, max_new_tokens=4)
    given = make_generator("hf", str(tmp_path), tiny_model, tiny_tokenizer, config)
    loaded = make_generator("hf", str(tmp_path), config=config)
    assert isinstance(given, HFGenerator) and given.model is tiny_model
    assert loaded.generate(["Hi"], False) == given.generate(["Hi"], False)
    with pytest.raises(ValueError, match="backend 'mlx'"):
        make_generator("mlx", str(tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_backend_without_vllm_says_so(tmp_path):
    with pytest.raises(ValueError, match="vllm"):
        make_generator("vllm", str(tmp_path))


def test_vllm_backend_maps_requests_and_outputs(monkeypatch, tiny_tokenizer, tmp_path):
    """A stand-in `vllm` module records what the backend asks for and returns canned outputs."""
    eos = tiny_tokenizer.eos_token_id
    calls = {}

    class FakeLLM:
        def __init__(self, **kwargs):
            calls["llm"] = kwargs

        def generate(self, requests, params, use_tqdm):
            calls["requests"], calls["params"] = requests, params
            outputs = [
                SimpleNamespace(text="done", token_ids=[7, 8, eos], finish_reason="stop"),  # EOS listed
                SimpleNamespace(text="ok", token_ids=[7], finish_reason="stop"),  # EOS not listed
                SimpleNamespace(text="cut", token_ids=[7, 8, 9], finish_reason="length"),
            ]
            return [SimpleNamespace(outputs=outputs) for _ in requests]

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=FakeLLM, SamplingParams=dict))
    config = GenerationConfig(n=3, temperature=0.7, top_p=0.9, max_new_tokens=3, seed=5)
    generator = make_generator("vllm", str(tmp_path), tokenizer=tiny_tokenizer, config=config)
    out = generator.generate(PROMPTS[:2], progress=False)

    assert calls["llm"] == {"model": str(tmp_path), "seed": 5}
    assert calls["params"] == {"n": 3, "temperature": 0.7, "top_p": 0.9, "max_tokens": 3, "seed": 5}
    assert calls["requests"] == [{"prompt_token_ids": encode_prompt(tiny_tokenizer, p)} for p in PROMPTS[:2]]
    expected = [Sample("done", 3, True), Sample("ok", 2, True), Sample("cut", 3, False)]
    assert out == [expected, expected]


@pytest.mark.gpu
@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(), reason="needs vllm and CUDA"
)
def test_vllm_backend_on_default_policy():
    config = GenerationConfig(n=4, temperature=0.8, max_new_tokens=24, seed=0)
    generator = make_generator("vllm", DEFAULT_POLICY, config=config)
    out = generator.generate(["Tell me a joke.", "What is 2 + 2?"], progress=False)
    assert [len(samples) for samples in out] == [4, 4]
    for s in (s for samples in out for s in samples):
        assert s.text and (s.finished or s.n_tokens == 24)
        assert "<|im_end|>" not in s.text
    assert generator.generate(["Tell me a joke.", "What is 2 + 2?"], progress=False) == out


@pytest.mark.slow
@pytest.mark.ci
def test_default_policy_generates_and_scores():
    model, tokenizer = load_policy(DEFAULT_POLICY)
    config = GenerationConfig(n=4, temperature=0.8, max_new_tokens=16, seed=0)
    prompts = ["Tell me a joke.", "What is the capital of France?"]
    generator = HFGenerator(model, tokenizer, config)

    out = generator.generate(prompts, progress=False)

    assert generator.generate(prompts, progress=False) == out
    assert [len(samples) for samples in out] == [4, 4]
    for s in (s for samples in out for s in samples):
        assert s.text.strip() and "<|im_end|>" not in s.text
        assert s.finished or s.n_tokens == 16
    texts = [[s.text for s in samples] for samples in out]
    finished = [[s.finished for s in samples] for samples in out]
    logps, counts = response_logprobs(model, tokenizer, prompts, texts, finished)
    for i, samples in enumerate(out):
        assert np.isfinite(logps[i]).all() and (logps[i] < 0).all()
        assert counts[i].tolist() == [len(response_ids(tokenizer, s.text, s.finished)) for s in samples]
