"""Shared fixtures: a tiny tokenizer trained in-process and a tiny random Llama policy.

Nothing is downloaded. The tokenizer is byte-level BPE (any text round-trips through
encode/decode) with a ChatML-style template and `<|im_end|>` as eos = pad, like SmolLM2.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from helpers import make_tiny_model, make_tiny_tokenizer


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
