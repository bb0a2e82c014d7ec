"""Sampling N responses per prompt with the transformers backend (and vLLM where available)."""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ampo import decoding
from ampo.backends import make_generator
from ampo.generation import GenerationConfig, HFGenerator, Sample, choose_dtype
from ampo.layouts import response_logprobs
from ampo.logprobs import response_ids
from ampo.models import DEFAULT_POLICY, encode_prompt, load_policy
from ampo.sampling import Sampler, stream_ids, uniforms

# The HF path (transformers `generate`, with and without prefill sharing) and the continuous loop.
PATHS = {
    "hf-shared": {"batching": "hf", "share_prefill": True},
    "hf-unshared": {"batching": "hf", "share_prefill": False},
    "continuous": {"batching": "continuous"},
}

PROMPTS = [
    "Write a short happy story",
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Why is the sky blue?"}],
    "Hi",
]
MANY_PROMPTS = PROMPTS + [f"Tell me about the number {i} and a cat" * (1 + i % 3) for i in range(7)]


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


@pytest.mark.parametrize("path", PATHS)
def test_sampling_is_deterministic_per_seed_and_keeps_global_rng(tiny_model, tiny_tokenizer, path):
    def run(seed):
        config = GenerationConfig(n=4, temperature=1.0, max_new_tokens=8, seed=seed, batch_rows=6, **PATHS[path])
        return HFGenerator(tiny_model, tiny_tokenizer, config).generate(PROMPTS, progress=False)

    rng_before = torch.get_rng_state()
    first = run(seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert run(seed=0) == first
    assert run(seed=1) != first
    assert len({s.text for s in first[0]}) > 1  # samples of one prompt differ


@pytest.mark.parametrize("path", PATHS)
def test_greedy_matches_a_hand_written_decoder(tiny_model, tiny_tokenizer, path):
    """Left padding, the repeated prefill cache and slot refills change nothing."""
    config = GenerationConfig(n=3, temperature=0.0, max_new_tokens=10, batch_rows=4, dtype="float32", **PATHS[path])
    out = HFGenerator(tiny_model, tiny_tokenizer, config).generate(PROMPTS, progress=False)
    for prompt, samples in zip(PROMPTS, out):
        assert samples == [greedy_reference(tiny_model, tiny_tokenizer, prompt, 10)] * 3


@pytest.mark.parametrize("batch_rows", [1, 3, 64])
def test_continuous_greedy_equals_hf_path_with_early_stops_and_refills(tiny_model, tiny_tokenizer, batch_rows,
                                                                        monkeypatch):
    """Rows of varied length retire and their slots are refilled; a 2-column headroom forces the
    cache to be re-laid out many times. Outputs equal transformers' `generate`."""
    monkeypatch.setattr(decoding, "HEADROOM", 2)
    model = with_eos_bias(tiny_model, tiny_tokenizer, 0.15)  # greedy answers of 7 to 24 tokens

    def run(batching):
        config = GenerationConfig(n=1, temperature=0.0, max_new_tokens=24, batching=batching, batch_rows=batch_rows,
                                  dtype="float32")
        return HFGenerator(model, tiny_tokenizer, config).generate(MANY_PROMPTS, progress=False)

    out = run("continuous")
    lengths = {s.n_tokens for group in out for s in group}
    assert len(lengths) > 3 and {s.finished for group in out for s in group} == {True, False}
    assert out == run("hf")


def test_continuous_decodes_no_finished_row_and_keeps_the_batch_full(tiny_model, tiny_tokenizer):
    """Every decode step's rows are unfinished responses (row-steps = generated tokens minus the
    first token of each, which comes from the prefill), prompts wait for free slots, and prompts
    are prefilled while other rows are still decoding."""
    model = with_eos_bias(tiny_model, tiny_tokenizer, 2.5)
    calls = []
    hook = model.model.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    config = GenerationConfig(n=2, temperature=1.0, max_new_tokens=20, batch_rows=6)
    out = HFGenerator(model, tiny_tokenizer, config).generate(MANY_PROMPTS, progress=False)
    hook.remove()
    samples = [s for group in out for s in group]
    decode_rows = [rows for rows, length in calls if length == 1]
    prefills = [i for i, (rows, length) in enumerate(calls) if length > 1]
    assert sum(decode_rows) == sum(s.n_tokens for s in samples) - len(samples)
    assert max(decode_rows) <= 6 and sum(rows for rows, length in calls if length > 1) == len(MANY_PROMPTS)
    assert len(prefills) > 2 and prefills[-1] > len(calls) // 2  # refills happen mid-run
    assert {s.finished for s in samples} == {True, False}


@pytest.mark.parametrize("headroom", [2, 128])
def test_slot_cache_masks_exactly_each_rows_tokens_through_moves_relayouts_and_wider_admissions(monkeypatch,
                                                                                                headroom):
    """Random admissions, steps and retirements, with frequent or rare re-layouts: in the attended
    window every row sees exactly its own columns, also after a moved row took an old row's slot
    and a longer prompt widened the window again."""
    monkeypatch.setattr(decoding, "HEADROOM", headroom)
    rng = np.random.default_rng(0)
    cache = decoding.SlotCache([(1, 2)], slots=4, capacity=32, dtype=torch.float32, device=torch.device("cpu"))
    cache.start = cache.end = 30
    for _ in range(300):
        free = cache.slots - cache.rows
        if free and rng.random() < 0.3:
            lengths = rng.integers(1, 31, size=rng.integers(1, free + 1)).tolist()
            if max(lengths) > cache.end:
                cache.relayout(min_end=max(lengths))
            cache.add_rows(lengths)
        if cache.rows and rng.random() < 0.3:
            cache.remove_row(int(rng.integers(cache.rows)))
        if cache.rows:
            cache.open_column()
            cache.close_column()
        cols = torch.arange(cache.start, cache.end)
        for row in range(cache.rows):
            assert torch.equal(cache.mask[row, cache.start : cache.end], cols >= cache.first[row])


def test_greedy_identical_with_and_without_prefill_sharing(tiny_model, tiny_tokenizer):
    def run(share):
        config = GenerationConfig(n=2, temperature=0.0, max_new_tokens=16, share_prefill=share, prompts_per_batch=3,
                                  batching="hf")
        return HFGenerator(tiny_model, tiny_tokenizer, config).generate(PROMPTS, progress=False)

    assert run(True) == run(False)


@pytest.mark.parametrize("share_prefill", [True, False])
def test_prefill_runs_once_per_prompt_only_when_shared(tiny_model, tiny_tokenizer, share_prefill):
    calls = []
    hook = tiny_model.model.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    config = GenerationConfig(n=4, max_new_tokens=3, share_prefill=share_prefill, batching="hf")
    HFGenerator(tiny_model, tiny_tokenizer, config).generate(PROMPTS[:2], progress=False)
    hook.remove()
    width = max(len(encode_prompt(tiny_tokenizer, p)) for p in PROMPTS[:2])
    if share_prefill:
        assert calls[0] == (2, width - 1) and calls[1] == (8, 1)
    else:
        assert calls[0] == (8, width)
    assert all(rows == 8 and length == 1 for rows, length in calls[-2:])


@pytest.mark.parametrize("path", PATHS)
def test_finished_when_eos_comes_first(tiny_model, tiny_tokenizer, path):
    model = with_eos_bias(tiny_model, tiny_tokenizer, 50.0)
    config = GenerationConfig(n=3, temperature=1.0, max_new_tokens=5, **PATHS[path])
    out = HFGenerator(model, tiny_tokenizer, config).generate(PROMPTS[:2], progress=False)
    assert all(s == Sample("", 1, True) for samples in out for s in samples)


@pytest.mark.parametrize("path", PATHS)
def test_unfinished_when_max_new_tokens_is_hit(tiny_model, tiny_tokenizer, path):
    model = with_eos_bias(tiny_model, tiny_tokenizer, -50.0)
    config = GenerationConfig(n=3, temperature=1.0, max_new_tokens=7, **PATHS[path])
    out = HFGenerator(model, tiny_tokenizer, config).generate(PROMPTS[:2], progress=False)
    assert all(not s.finished and s.n_tokens == 7 for samples in out for s in samples)


@pytest.mark.parametrize("path", PATHS)
def test_mixed_stopping_flags_and_counts(tiny_model, tiny_tokenizer, path):
    model = with_eos_bias(tiny_model, tiny_tokenizer, 3.5)
    config = GenerationConfig(n=8, temperature=1.0, max_new_tokens=10, **PATHS[path])
    samples = [s for group in HFGenerator(model, tiny_tokenizer, config).generate(PROMPTS, False) for s in group]
    assert {s.finished for s in samples} == {True, False}
    for s in samples:
        assert "<|im_end|>" not in s.text
        assert s.n_tokens == 10 if not s.finished else 1 <= s.n_tokens <= 10


def test_generation_config_validation():
    bads = ({"n": 0}, {"temperature": -0.1}, {"top_p": 0.0}, {"max_new_tokens": 0}, {"batch_rows": 0},
            {"batching": "paged"}, {"dtype": "float16"})
    for bad in bads:
        with pytest.raises(ValueError, match="generation"):
            GenerationConfig(**bad)


@pytest.mark.parametrize("top_p", [1.0, 0.7])
def test_sampler_draws_from_the_tempered_nucleus(top_p):
    """The inverse-CDF sampler, one stream per row: frequencies match softmax(logits / T)
    renormalised over the top-p nucleus (here tokens 0 and 1, 0.81 of the mass at T = 0.5), to 0.01."""
    sampler = Sampler(temperature=0.5, top_p=top_p)
    logits = torch.tensor([1.0, 0.8, 0.3, 0.0, -2.0])
    streams = stream_ids(0, list(range(2000)), 100).reshape(-1)
    draws = sampler(logits.expand(len(streams), -1).contiguous(), streams, np.zeros(len(streams), dtype=int))
    expected = (logits / 0.5).softmax(-1)
    if top_p < 1:
        expected[2:] = 0
        expected /= expected.sum()
    assert torch.allclose(torch.bincount(draws, minlength=5) / len(draws), expected, atol=0.01)


def test_uniforms_are_splitmix64():
    """Stream state 1234567 gives SplitMix64's published first output 6457827717110365317 (to 53
    bits); other draws match a plain-Python SplitMix64, including state 2**64 - 1 (wrap-around)."""
    def splitmix64(state: int, step: int) -> int:
        mask = (1 << 64) - 1
        z = (state + (step + 1) * 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    assert splitmix64(1234567, 0) == 6457827717110365317
    states, steps = [1234567, 2**64 - 1, 0, 42], [0, 5, 100, 1000]
    got = uniforms(np.array(states, dtype=np.uint64), np.array(steps))
    assert got.tolist() == [(splitmix64(s, t) >> 11) * 2.0**-53 for s, t in zip(states, steps)]
    assert (0 <= got).all() and (got < 1).all()


def test_stream_ids_depend_on_seed_key_and_sample_only():
    a = stream_ids(0, ["p1", "p2"], 3)
    assert a.shape == (2, 3) and len(set(a.reshape(-1).tolist())) == 6
    assert np.array_equal(stream_ids(0, ["p2"], 3)[0], a[1])  # a prompt's streams ignore the others
    assert np.array_equal(stream_ids(0, ["p1"], 2)[0], a[0, :2])
    assert not np.array_equal(stream_ids(1, ["p1", "p2"], 3), a)


def sampled(model, tokenizer, prompts=MANY_PROMPTS, keys=None, **options):
    config = GenerationConfig(n=3, temperature=1.0, max_new_tokens=12, dtype="float32", seed=7, **options)
    return HFGenerator(model, tokenizer, config).generate(prompts, progress=False, keys=keys)


def test_samples_do_not_depend_on_batch_rows_or_prompts_per_batch(tiny_model, tiny_tokenizer):
    """A response's tokens depend only on its prompt, its sample index and the seed: the same
    samples with 4 or 64 rows decoded together, 1 or 8 prompts per `generate` call, with or
    without a shared prefill, and from either decode loop; rows of varied length retire early."""
    model = with_eos_bias(tiny_model, tiny_tokenizer, 1.0)
    out = sampled(model, tiny_tokenizer, batch_rows=4)
    assert {s.finished for group in out for s in group} == {True, False}
    assert len({s.text for group in out for s in group}) > len(MANY_PROMPTS)  # samples differ
    assert sampled(model, tiny_tokenizer, batch_rows=64) == out
    for per_batch in (1, 8):
        for share in (True, False):
            assert sampled(model, tiny_tokenizer, batching="hf", prompts_per_batch=per_batch,
                           share_prefill=share) == out, (per_batch, share)


def test_keys_make_samples_independent_of_the_prompt_list(tiny_model, tiny_tokenizer):
    """With keys (the pipeline passes prompt ids) a prompt's samples are the same in any list."""
    keys = [f"id{i}" for i in range(len(MANY_PROMPTS))]
    out = sampled(tiny_model, tiny_tokenizer, keys=keys)
    order = [4, 0, 9]
    assert sampled(tiny_model, tiny_tokenizer, [MANY_PROMPTS[i] for i in order], [keys[i] for i in order]) == \
        [out[i] for i in order]
    assert sampled(tiny_model, tiny_tokenizer, keys=keys[::-1]) != out
    with pytest.raises(ValueError, match="keys"):
        sampled(tiny_model, tiny_tokenizer, keys=keys[:2])


def test_top_p_sampling_keeps_only_the_nucleus(tiny_model, tiny_tokenizer):
    """With top_p tiny, sampling keeps only the most likely token: it equals greedy decoding."""
    greedy = GenerationConfig(n=2, temperature=0.0, max_new_tokens=8, dtype="float32")
    nucleus = GenerationConfig(n=2, temperature=1.0, top_p=1e-6, max_new_tokens=8, dtype="float32")
    run = lambda c: HFGenerator(tiny_model, tiny_tokenizer, c).generate(PROMPTS, progress=False)  # noqa: E731
    assert run(nucleus) == run(greedy)


def test_batch_rows_are_lowered_to_fit_an_eighth_of_memory(tiny_model, tiny_tokenizer, monkeypatch):
    import ampo.generation

    config = GenerationConfig(n=2, max_new_tokens=10, batch_rows=64, dtype="float32")
    generator = HFGenerator(tiny_model, tiny_tokenizer, config)
    per_row = 2 * 2 * 2 * 8 * 4 * (20 + 10 + decoding.HEADROOM)  # K and V, 2 layers, 2 KV heads of 8, fp32
    for memory, rows in ((8 * per_row * 5, 5), (0, 2), (None, 64), (8 * per_row * 1000, 64)):
        monkeypatch.setattr(ampo.generation, "device_memory", lambda device, m=memory: m)
        assert generator._fit_rows(max_prompt=20) == rows


@pytest.mark.parametrize(
    ("requested", "device", "flags", "expected"),
    [
        ("auto", "cpu", {"avx2", "fma"}, "float32"),  # AVX2 only: bf16 is emulated, slower
        ("auto", "cpu", {"avx2", "avx512f", "avx512_bf16"}, "bfloat16"),
        ("auto", "cpu", {"avx2", "amx_bf16", "amx_tile"}, "bfloat16"),
        ("auto", "cpu", {"avx512f", "avx512_vnni"}, "float32"),  # AVX-512 without its bf16 extension
        ("auto", "cuda", set(), "bfloat16"),
        ("auto", "mps", set(), "float32"),
        ("float32", "cuda", set(), "float32"),
        ("bfloat16", "cpu", {"avx2"}, "bfloat16"),  # forced
    ],
)
def test_choose_dtype(requested, device, flags, expected):
    assert choose_dtype(requested, device, flags) == expected


def test_generator_runs_a_bf16_copy_and_leaves_the_model_alone(tiny_model, tiny_tokenizer):
    config = GenerationConfig(n=2, temperature=0.0, max_new_tokens=4, dtype="bfloat16")
    generator = HFGenerator(tiny_model, tiny_tokenizer, config)
    assert generator.model.dtype == torch.bfloat16 and tiny_model.dtype == torch.float32
    assert [len(group) for group in generator.generate(PROMPTS, progress=False)] == [2, 2, 2]
    fp32 = HFGenerator(tiny_model, tiny_tokenizer, GenerationConfig(dtype="float32"))
    assert fp32.model is tiny_model


def test_bf16_greedy_agrees_with_fp32_where_the_margin_exceeds_bf16_error(tiny_model, tiny_tokenizer):
    """Teacher-force fp32's greedy answers through the bf16 model: log-probs agree to 0.05 nats, and
    bf16 picks fp32's token wherever fp32's top-2 logit margin exceeds twice that (the tolerance:
    bf16 keeps 8 mantissa bits, so near-ties may flip). The output head is scaled up 10x so that
    the random model has clear choices at all (its logits are otherwise nearly uniform)."""
    with torch.no_grad():
        tiny_model.lm_head.weight.mul_(10)
    config = GenerationConfig(n=1, temperature=0.0, max_new_tokens=12, dtype="float32")
    out = HFGenerator(tiny_model, tiny_tokenizer, config).generate(MANY_PROMPTS, progress=False)
    bf16 = HFGenerator(tiny_model, tiny_tokenizer, GenerationConfig(dtype="bfloat16")).model
    checked = 0
    for prompt, (sample,) in zip(MANY_PROMPTS, out):
        prompt_ids = encode_prompt(tiny_tokenizer, prompt)
        ids = torch.tensor([prompt_ids + response_ids(tiny_tokenizer, sample.text, sample.finished)])
        with torch.no_grad():
            ref = tiny_model(ids).logits[0, len(prompt_ids) - 1 : -1].log_softmax(-1)
            low = bf16(ids).logits[0, len(prompt_ids) - 1 : -1].float().log_softmax(-1)
        assert (ref - low).abs().max() < 0.05
        top2 = ref.topk(2).values
        clear = (top2[:, 0] - top2[:, 1]) > 0.1
        assert torch.equal(low.argmax(-1)[clear], ref.argmax(-1)[clear])
        checked += int(clear.sum())
    assert checked > 50


def test_unsupported_cache_layers_fall_back_to_hf_generate(tiny_tokenizer):
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=64, sliding_window=8,
                           eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tiny_tokenizer.pad_token_id)
    model = MistralForCausalLM(config).eval()
    with pytest.warns(UserWarning, match="batching='hf'"):
        generator = HFGenerator(model, tiny_tokenizer, GenerationConfig(n=2, max_new_tokens=4))
    assert not generator.continuous
    assert [len(group) for group in generator.generate(PROMPTS, progress=False)] == [2, 2, 2]


def test_make_generator(tiny_model, tiny_tokenizer, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    config = GenerationConfig(n=2, temperature=0.0, max_new_tokens=4, dtype="float32")  # "auto": bf16 on AMX CPUs
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
    seeds = [int(s) >> 1 for s in stream_ids(5, [0, 1], 1)[:, 0]]  # one seed per prompt
    assert calls["params"] == [{"n": 3, "temperature": 0.7, "top_p": 0.9, "max_tokens": 3, "seed": seed}
                               for seed in seeds]
    assert all(0 <= seed < 2**63 for seed in seeds) and seeds[0] != seeds[1]
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


@pytest.mark.slow
def test_default_policy_greedy_continuous_equals_transformers_generate():
    """On SmolLM2, with 2 rows so that slots are refilled and rows moved: same greedy answers."""
    model, tokenizer = load_policy(DEFAULT_POLICY)
    prompts = ["Tell me a joke.", "What is the capital of France?", "Write a haiku about rain.", "Hi"]

    def run(**batching):
        config = GenerationConfig(n=1, temperature=0.0, max_new_tokens=40, dtype="float32", **batching)
        return HFGenerator(model, tokenizer, config).generate(prompts, progress=False)

    out = run(batching="continuous", batch_rows=2)
    assert len({s.n_tokens for group in out for s in group}) > 1
    assert out == run(batching="hf")


@pytest.mark.parametrize(("lengths", "runs"), [
    ([], []),
    ([7], [(0, 1)]),
    ([10, 10, 10], [(0, 3)]),
    ([100, 90, 80, 20, 19, 5], [(0, 3), (3, 5), (5, 6)]),
])
def test_prefill_groups_bound_the_padding(lengths, runs):
    assert decoding.prefill_groups(lengths) == runs
    for start, stop in runs:
        assert lengths[start] * (stop - start) <= decoding.PREFILL_PADDING * sum(lengths[start:stop])


def test_continuous_prefill_computes_little_padding(tiny_model, tiny_tokenizer):
    """Prompts of very different lengths admitted together are prefilled in runs of similar
    length: the prefill computes at most PREFILL_PADDING times the prompts' tokens."""
    prompts = ["Hi.", "word " * 60, "Tell me a story.", "word " * 30, "x"]
    calls = []
    hook = tiny_model.model.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    config = GenerationConfig(n=2, temperature=0.0, max_new_tokens=4, batch_rows=16, dtype="float32")
    HFGenerator(tiny_model, tiny_tokenizer, config).generate(prompts, progress=False)
    hook.remove()
    computed = sum(rows * length for rows, length in calls if length > 1)
    real = sum(len(encode_prompt(tiny_tokenizer, p)) for p in prompts)
    assert len([c for c in calls if c[1] > 1]) > 1 and computed <= decoding.PREFILL_PADDING * real
