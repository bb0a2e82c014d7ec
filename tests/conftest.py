"""Shared fixtures: a tiny tokenizer trained in-process and a tiny random Llama policy.

Nothing is downloaded. The tokenizer is byte-level BPE (any text round-trips through
encode/decode) with a ChatML-style template and `<|im_end|>` as eos = pad, like SmolLM2.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Write a short happy story about a cat and a sunny garden.",
    "I love this movie, it was wonderful and great fun!",
    "This is terrible, awful and sad; I hated every minute.",
    "Explain why the sky is blue in one sentence.",
    "Once upon a time there was a small robot who wanted to sing.",
    "Numbers like 1, 2, 3 and 42 appear in text too.",
]


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    """Train the byte-level BPE once per session (a few ms) and keep it as JSON."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return tok.to_str()


def make_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh tokenizer object (callers may mutate it, e.g. padding_side)."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """A random 2-layer Llama (hidden 32) over `tokenizer`'s vocabulary, in eval mode."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(autouse=True)
def _one_torch_thread(request):
    """Fast tests run torch on one thread: tiny models gain nothing from intra-op threads, and on a
    shared 2-core machine the spinning threads made the generation + log-prob tests 4x slower
    (measured 101 s against 25 s). Slow tests on the real models keep torch's default."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE tokenizer (~400 tokens), chat template, eos = pad = `<|im_end|>`."""
    return make_tiny_tokenizer()


@pytest.fixture
def tiny_model(tiny_tokenizer) -> LlamaForCausalLM:
    """Random LlamaForCausalLM (hidden 32, 2 layers, seed 0) matching `tiny_tokenizer`; a fresh
    copy per test, so tests may train it."""
    return make_tiny_model(tiny_tokenizer)


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory) -> Path:
    """A tiny random policy saved as a normal model folder (what users pass as model.policy)."""
    path = tmp_path_factory.mktemp("policy")
    tok = make_tiny_tokenizer()
    make_tiny_model(tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path
