"""Sampling N responses per prompt: a transformers backend (CPU or GPU) and a vLLM backend (GPU).

Both apply the policy's chat template with `ampo.models.chat_prompt` and encode prompts with
`ampo.models.encode_prompt`, so the training and reference passes see the same prompt tokens.
The transformers backend decodes with ampo's continuous-batching loop (`ampo.decoding`) or, with
`batching="hf"`, with transformers' `generate` one prompt batch at a time.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig as HFGenerationConfig
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.logits_process import LogitsProcessorList

from ampo.decoding import HEADROOM, ContinuousDecoder, supports_slot_cache
from ampo.models import DTYPES, encode_prompt, load_tokenizer, resolve_policy
from ampo.precision import (BF16_CPU_FLAGS, DTYPE_CHOICES, choose_dtype,  # noqa: F401 (re-exported)
                            cpu_flags, resolve_dtype)
from ampo.sampling import Sampler, StreamSampling, stream_ids

Prompt = str | list[dict]


@dataclass
class Sample:
    """One response: its text (no special tokens), the number of generated tokens (including the
    EOS when there is one) and whether it ended with EOS (False: it hit `max_new_tokens`)."""

    text: str
    n_tokens: int
    finished: bool


BATCHING = ("continuous", "hf")
GENERATION_DTYPES = DTYPE_CHOICES  # "auto": `ampo.precision.choose_dtype`


@dataclass
class GenerationConfig:
    """Sampling options shared by all backends. `temperature == 0` means greedy decoding.

    HF backend: `batching="continuous"` decodes up to `batch_rows` rows at a time, retiring finished
    rows and refilling their slots with waiting prompts (the prefill is always shared by a prompt's
    `n` samples); `batching="hf"` runs transformers' `generate` on `prompts_per_batch` prompts at a
    time, with `share_prefill` copying each prompt's prefill KV cache to its `n` samples. `dtype`
    "auto" picks bf16 on CUDA or a CPU with native bf16, fp32 elsewhere. `seed` makes runs repeatable.
    """

    n: int = 8
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 64
    prompts_per_batch: int = 8
    share_prefill: bool = True
    seed: int = 0
    batching: str = "continuous"
    batch_rows: int = 128
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if min(self.n, self.max_new_tokens, self.prompts_per_batch, self.batch_rows) < 1:
            raise ValueError("generation n, max_new_tokens, prompts_per_batch and batch_rows must be >= 1")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"generation temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"generation top_p must be in (0, 1], got {self.top_p}")
        if self.batching not in BATCHING:
            raise ValueError(f"generation batching must be one of {BATCHING}, got {self.batching!r}")
        if self.dtype not in GENERATION_DTYPES:
            raise ValueError(f"generation dtype must be one of {GENERATION_DTYPES}, got {self.dtype!r}")


class Generator(Protocol):
    """Anything that samples `config.n` responses for each prompt (`keys`: one per prompt, naming
    its random stream; default the prompts' indices)."""

    def generate(self, prompts: list[Prompt], progress: bool = True,
                 keys: list | None = None) -> list[list[Sample]]: ...


class HFGenerator:
    """Samples with a transformers model: ampo's continuous-batching decode loop, or `generate`.

    The model runs in the resolved `config.dtype`; when it was loaded in another dtype, the
    generator works on a converted copy (load the policy in that dtype to avoid the copy).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: GenerationConfig | None = None,
    ) -> None:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token; generation cannot tell when to stop")
        self.config = config or GenerationConfig()
        self.dtype = resolve_dtype(self.config.dtype, model.device)
        wanted = DTYPES[self.dtype]
        self.model = model if model.dtype == wanted else copy.deepcopy(model).to(wanted)
        self.tokenizer = tokenizer
        self.continuous = self.config.batching == "continuous" and supports_slot_cache(model)
        if self.config.batching == "continuous" and not self.continuous:
            warnings.warn(f"{type(model).__name__} has sliding-window or non-attention cache layers: "
                          "generating with batching='hf'", stacklevel=2)

    def generate(self, prompts: list[Prompt], progress: bool = True, keys: list | None = None) -> list[list[Sample]]:
        """Return `config.n` samples per prompt, in prompt order. Sample j of prompt i draws its
        tokens from its own stream, a hash of (`config.seed`, `keys[i]`, j) (`keys` default to the
        prompts' indices: pass ids to make samples independent of the list's order), so it does
        not depend on the batch sizes or on the other prompts (`ampo.sampling`)."""
        keys = list(range(len(prompts))) if keys is None else list(keys)
        if len(keys) != len(prompts):
            raise ValueError(f"generate got {len(prompts)} prompts but {len(keys)} keys")
        streams = stream_ids(self.config.seed, keys, self.config.n)
        if self.continuous:
            return self._generate_continuous(prompts, streams, progress)
        return self._generate_batches(prompts, streams, progress)

    def _generate_continuous(self, prompts: list[Prompt], streams: np.ndarray, progress: bool) -> list[list[Sample]]:
        """Decode with `ContinuousDecoder`, prompt i's sample j drawing from `streams[i, j]`."""
        ids = [encode_prompt(self.tokenizer, p) for p in prompts]
        rows = self._fit_rows(max(len(i) for i in ids))
        decoder = ContinuousDecoder(self.model, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id,
                                    self.config.n, self.config.max_new_tokens, rows, self._picker(streams))
        with tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress) as bar:
            tokens = decoder.run(ids, lambda: bar.update(1))
        return [[self._to_sample(t) for t in group] for group in tokens]

    def _fit_rows(self, max_prompt: int) -> int:
        """`config.batch_rows`, lowered so that the KV cache of full-length rows takes at most an
        eighth of the device's memory (a quarter while it is re-laid out), and at least `n`."""
        c, cfg = self.config, self.model.config.get_text_config()
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        per_token = 2 * cfg.num_hidden_layers * heads * head_dim * DTYPES[self.dtype].itemsize
        per_row = per_token * (max_prompt + c.max_new_tokens + HEADROOM)
        memory = device_memory(self.model.device)
        if memory is None:
            return max(c.batch_rows, c.n)
        return max(c.n, min(c.batch_rows, memory // 8 // per_row))

    def _picker(self, streams: np.ndarray):
        """The decoder's `pick`: `Sampler` with row (prompt i, sample j) drawing from `streams[i, j]`."""
        sampler = Sampler(self.config.temperature, self.config.top_p)

        def pick(logits: torch.Tensor, owners: list[tuple[int, int]], steps: list[int]) -> torch.Tensor:
            if sampler.greedy:
                return logits.argmax(-1)
            prompt, sample = np.asarray(owners).T
            return sampler(logits, streams[prompt, sample], np.asarray(steps))

        return pick

    def _generate_batches(self, prompts: list[Prompt], streams: np.ndarray, progress: bool) -> list[list[Sample]]:
        """transformers `generate` on `prompts_per_batch` prompts at a time."""
        size = self.config.prompts_per_batch
        samples: list[list[Sample]] = []
        with tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress) as bar:
            for start in range(0, len(prompts), size):
                batch = prompts[start : start + size]
                samples.extend(self._generate_batch(batch, streams[start : start + size]))
                bar.update(len(batch))
        return samples

    def _generate_batch(self, prompts: list[Prompt], streams: np.ndarray) -> list[list[Sample]]:
        """Sample one batch of prompts: `generate` runs greedy on scores where `StreamSampling` has
        kept only the token it drew for each row (prompt i's sample j from `streams[i, j]`)."""
        n = self.config.n
        device = self.model.device
        ids = [encode_prompt(self.tokenizer, p) for p in prompts]
        enc = self.tokenizer.pad({"input_ids": ids}, padding_side="left", return_tensors="pt")
        input_ids, attention_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        sampler = Sampler(self.config.temperature, self.config.top_p)
        processors = [] if sampler.greedy else [StreamSampling(sampler, streams.reshape(-1), input_ids.shape[1])]
        with torch.no_grad():
            if self.config.share_prefill and n > 1 and input_ids.shape[1] > 1:
                out = self._generate_shared(input_ids, attention_mask, processors)
            else:
                out = self.model.generate(
                    input_ids=input_ids.repeat_interleave(n, dim=0),
                    attention_mask=attention_mask.repeat_interleave(n, dim=0),
                    generation_config=self._hf_config(),
                    logits_processor=LogitsProcessorList(processors),
                )
        rows = [self._to_sample(row) for row in out[:, input_ids.shape[1] :].tolist()]
        return [rows[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _generate_shared(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, processors: list) -> torch.Tensor:
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
            logits_processor=LogitsProcessorList(processors),
        )

    def _hf_config(self) -> HFGenerationConfig:
        """transformers' settings: greedy (sampling, if any, is `StreamSampling`'s), no top-k."""
        return HFGenerationConfig(
            do_sample=False,
            max_new_tokens=self.config.max_new_tokens,
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


def device_memory(device: torch.device) -> int | None:
    """The device's total memory in bytes (CUDA's, or Linux's MemTotal), else None. Total, not
    free: the row count, and with it the samples, must not change from run to run."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


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
        if self.config.dtype != "auto":  # vLLM's own "auto" serves fp32 checkpoints in half precision
            llm_kwargs.setdefault("dtype", self.config.dtype)
        self.llm = vllm.LLM(model=path, seed=self.config.seed, **llm_kwargs)
        self._sampling_params = vllm.SamplingParams

    def generate(self, prompts: list[Prompt], progress: bool = True, keys: list | None = None) -> list[list[Sample]]:
        """Return `config.n` samples per prompt, in prompt order. Each prompt is a request with its
        own seed, a hash of (`config.seed`, its key); vLLM draws its `n` samples from that seed.
        (Not the HF backend's streams: the two backends give different samples.)"""
        c = self.config
        keys = list(range(len(prompts))) if keys is None else list(keys)
        seeds = stream_ids(c.seed, keys, 1)[:, 0] >> np.uint64(1)  # vLLM takes a signed 64-bit seed
        params = [self._sampling_params(n=c.n, temperature=c.temperature, top_p=c.top_p, max_tokens=c.max_new_tokens,
                                        seed=int(seed)) for seed in seeds]
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

