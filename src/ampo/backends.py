"""The generation backends, in one table (adding a backend is one entry here), and `make_generator`,
which builds one. Light to import (the command line lists the names); each builder imports its
engine when called."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Backend:
    """How to build a generator, and whether it loads the policy from a folder (then a LoRA run
    saves each round's merged policy for it) instead of taking the model in memory."""

    build: Callable  # build(model_name_or_path, model=None, tokenizer=None, config=None) -> Generator
    loads_from_disk: bool
    description: str


def _hf(model_name_or_path, model=None, tokenizer=None, config=None):
    from .generation import HFGenerator
    from .models import load_policy, load_tokenizer

    if model is None:
        model, loaded_tokenizer = load_policy(model_name_or_path)
        tokenizer = tokenizer or loaded_tokenizer
    elif tokenizer is None:
        tokenizer = load_tokenizer(model_name_or_path)
    return HFGenerator(model, tokenizer, config)


def _vllm(model_name_or_path, model=None, tokenizer=None, config=None):
    from .generation import VLLMGenerator

    return VLLMGenerator(model_name_or_path, tokenizer, config)


BACKENDS: dict[str, Backend] = {
    "hf": Backend(_hf, loads_from_disk=False, description="transformers, the model in memory (CPU or GPU)"),
    "vllm": Backend(_vllm, loads_from_disk=True, description="vLLM on GPU, n samples per prompt from a model folder"),
}


def make_generator(backend: str, model_name_or_path: str, model=None, tokenizer=None, config=None):
    """Build a generator from `BACKENDS` ("hf" uses `model`/`tokenizer` when given, else loads
    them; "vllm" loads the model folder `model_name_or_path`)."""
    if backend not in BACKENDS:
        raise ValueError(f"generation backend {backend!r} is not one of {', '.join(map(repr, BACKENDS))}")
    return BACKENDS[backend].build(model_name_or_path, model=model, tokenizer=tokenizer, config=config)
