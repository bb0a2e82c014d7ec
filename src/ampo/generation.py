"""Sampling N responses per prompt: a transformers backend (CPU or GPU) and a vLLM backend (GPU).

Both apply the policy's chat template with `ampo.models.chat_prompt` and encode prompts with
`ampo.models.encode_prompt`, so the training and reference passes see the same prompt tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig as HFGenerationConfig
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ampo.models import encode_prompt, load_policy, load_tokenizer, resolve_policy

Prompt = str | list[dict]


@dataclass
class Sample:
    """One response: its text (no special tokens), the number of generated tokens (including the
    EOS when there is one) and whether it ended with EOS (False: it hit `max_new_tokens`)."""

    text: str
    n_tokens: int
    finished: bool


@dataclass
class GenerationConfig:
    """Sampling options shared by all backends. `temperature == 0` means greedy decoding.

    `prompts_per_batch` prompts are sampled together (HF backend); `share_prefill` runs each
    prompt's prefill once and copies its KV cache to the `n` samples; `seed` makes runs repeatable.
    """

    n: int = 8
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 64
    prompts_per_batch: int = 8
    share_prefill: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_new_tokens < 1 or self.prompts_per_batch < 1:
            raise ValueError("generation n, max_new_tokens and prompts_per_batch must be >= 1")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"generation temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"generation top_p must be in (0, 1], got {self.top_p}")


class Generator(Protocol):
    """Anything that samples `config.n` responses for each prompt."""

    def generate(self, prompts: list[Prompt], progress: bool = True) -> list[list[Sample]]: ...


class HFGenerator:
    """Samples with transformers `generate`, batching prompts with left padding."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: GenerationConfig | None = None,
    ) -> None:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token; generation cannot tell when to stop")
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or GenerationConfig()

    def generate(self, prompts: list[Prompt], progress: bool = True) -> list[list[Sample]]:
        """Return `config.n` samples per prompt, in prompt order. Batch `b` is seeded with
        `config.seed + b`, so the same call gives the same samples."""
        size = self.config.prompts_per_batch
        samples: list[list[Sample]] = []
        with tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress) as bar:
            for b, start in enumerate(range(0, len(prompts), size)):
                batch = prompts[start : start + size]
                samples.extend(self._generate_batch(batch, self.config.seed + b))
                bar.update(len(batch))
        return samples

    def _generate_batch(self, prompts: list[Prompt], seed: int) -> list[list[Sample]]:
        """Sample one batch of prompts; the global RNG state is left untouched."""
        n = self.config.n
        device = self.model.device
        ids = [encode_prompt(self.tokenizer, p) for p in prompts]
        enc = self.tokenizer.pad({"input_ids": ids}, padding_side="left", return_tensors="pt")
        input_ids, attention_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        rng_devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices), torch.no_grad():
            torch.manual_seed(seed)
            if self.config.share_prefill and n > 1 and input_ids.shape[1] > 1:
                out = self._generate_shared(input_ids, attention_mask)
            else:
                out = self.model.generate(
                    input_ids=input_ids.repeat_interleave(n, dim=0),
                    attention_mask=attention_mask.repeat_interleave(n, dim=0),
                    generation_config=self._hf_config(),
                )
        rows = [self._to_sample(row) for row in out[:, input_ids.shape[1] :].tolist()]
        return [rows[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _generate_shared(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Prefill all but the last prompt token once per prompt, repeat the KV cache `n` times,
        and let `generate` continue from it (it feeds only the uncached last token)."""
        n = self.config.n
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        prefill = self.model(
            input_ids=input_ids[:, :-1],
            attention_mask=attention_mask[:, :-1],
            position_ids=position_ids[:, :-1],
            use_cache=True,
            logits_to_keep=1,  # only the cache is needed
        )
        cache = prefill.past_key_values
        cache.batch_repeat_interleave(n)
        return self.model.generate(
            input_ids=input_ids.repeat_interleave(n, dim=0),
            attention_mask=attention_mask.repeat_interleave(n, dim=0),
            past_key_values=cache,
            generation_config=self._hf_config(),
        )

    def _hf_config(self) -> HFGenerationConfig:
        """transformers' sampling settings: pure temperature/top-p sampling (no top-k), or greedy."""
        c = self.config
        sampling = c.temperature > 0
        return HFGenerationConfig(
            do_sample=sampling,
            temperature=c.temperature if sampling else None,
            top_p=c.top_p if sampling else None,
            top_k=0 if sampling else None,
            max_new_tokens=c.max_new_tokens,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )

    def _to_sample(self, tokens: list[int]) -> Sample:
        """Cut a generated row at its first EOS and decode it."""
        eos = self.tokenizer.eos_token_id
        finished = eos in tokens
        n_tokens = tokens.index(eos) + 1 if finished else len(tokens)
        body = tokens[: n_tokens - 1] if finished else tokens
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        return Sample(text=text, n_tokens=n_tokens, finished=finished)


class VLLMGenerator:
    """Samples with vLLM (GPU): one `LLM.generate` call per prompt list."""

    def __init__(
        self,
        model_name_or_path: str,
        tokenizer: PreTrainedTokenizerBase | None = None,
        config: GenerationConfig | None = None,
        **llm_kwargs,
    ) -> None:
        try:
            import vllm
        except ImportError as err:
            raise ValueError("the vllm backend needs vLLM and a CUDA GPU: pip install vllm") from err
        self.config = config or GenerationConfig()
        path = resolve_policy(model_name_or_path)
        self.tokenizer = tokenizer or load_tokenizer(path)
        self.llm = vllm.LLM(model=path, seed=self.config.seed, **llm_kwargs)
        self._sampling_params = vllm.SamplingParams

    def generate(self, prompts: list[Prompt], progress: bool = True) -> list[list[Sample]]:
        """Return `config.n` samples per prompt, in prompt order."""
        c = self.config
        params = self._sampling_params(
            n=c.n, temperature=c.temperature, top_p=c.top_p, max_tokens=c.max_new_tokens, seed=c.seed
        )
        requests = [{"prompt_token_ids": encode_prompt(self.tokenizer, p)} for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=progress)
        return [[self._to_sample(o) for o in request.outputs] for request in outputs]

    def _to_sample(self, output) -> Sample:
        """Map a vLLM `CompletionOutput`; the EOS is counted in `n_tokens` (as in the HF backend)
        whether or not this vLLM version lists it in `token_ids`."""
        finished = output.finish_reason == "stop"
        ids = list(output.token_ids)
        ends_with_eos = bool(ids) and ids[-1] == self.tokenizer.eos_token_id
        n_tokens = len(ids) + int(finished and not ends_with_eos)
        return Sample(text=output.text, n_tokens=n_tokens, finished=finished)


def make_generator(
    backend: str,
    model_name_or_path: str,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    config: GenerationConfig | None = None,
) -> Generator:
    """Build a generator: "hf" (uses `model`/`tokenizer` when given, else loads them) or "vllm"."""
    if backend == "hf":
        if model is None:
            model, loaded_tokenizer = load_policy(model_name_or_path)
            tokenizer = tokenizer or loaded_tokenizer
        elif tokenizer is None:
            tokenizer = load_tokenizer(model_name_or_path)
        return HFGenerator(model, tokenizer, config)
    if backend == "vllm":
        return VLLMGenerator(model_name_or_path, tokenizer, config)
    raise ValueError(f"generation backend {backend!r} is not one of 'hf', 'vllm'")
