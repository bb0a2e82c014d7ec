"""Per-response random streams for sampling: a response's tokens depend only on the seed, its
prompt's key and its sample index, never on which other rows share its decode step.

Response j of the prompt with key `key` has a 64-bit stream id (a hash of `(seed, key, j)`); its
t-th token is drawn by inverse CDF from the uniform number t of that stream, which is SplitMix64's
output t for the stream id as its state (counter-based: no generator state to carry, any row
order, any batch size). One vectorised hash per decode step replaces the shared `torch.Generator`
that made a sample depend on the rows decoded beside it, and with them on `batch_rows`,
`prompts_per_batch` and the machine's memory.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch
from transformers.generation.logits_process import LogitsProcessor, TopPLogitsWarper

SAMPLER = "splitmix64-per-response-1"  # named in generation stage keys: samples change when this does

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def stream_ids(seed: int, keys: list[Any], n: int) -> np.ndarray:
    """uint64 `[len(keys), n]`: the stream of sample j of the prompt with key `keys[i]` (any
    JSON-able key: a prompt id, a global index)."""
    out = np.empty((len(keys), n), dtype=np.uint64)
    for i, key in enumerate(keys):
        for j in range(n):
            blob = json.dumps(["sample", seed, key, j], default=str).encode()
            out[i, j] = int.from_bytes(hashlib.sha256(blob).digest()[:8], "little")
    return out


def uniforms(streams: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """float64 in [0, 1): number `steps[i]` (0-based) of SplitMix64 started at state `streams[i]`,
    to 53 bits."""
    counters = np.asarray(steps, dtype=np.uint64) + np.uint64(1)
    z = np.atleast_1d(np.asarray(streams, dtype=np.uint64)) + counters * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


class Sampler:
    """Next-token choice from fp32 logits `[rows, vocab]`: argmax when `temperature == 0`, else
    temperature / top-p sampling (transformers' top-p warper, no top-k) by inverse CDF with one
    uniform per row from its stream, and a float64 cumulative sum (`torch.multinomial` would draw
    one exponential per vocabulary entry from a shared generator)."""

    def __init__(self, temperature: float, top_p: float = 1.0):
        self.temperature = temperature
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1 else None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def __call__(self, logits: torch.Tensor, streams: np.ndarray, steps: np.ndarray) -> torch.Tensor:
        """Token ids `[rows]`; row i is token number `steps[i]` of stream `streams[i]`."""
        if self.greedy:
            return logits.argmax(-1)
        scores = logits / self.temperature
        if self.top_p is not None:
            scores = self.top_p(None, scores)
        cdf = scores.softmax(-1).double().cumsum(-1)
        u = torch.from_numpy(uniforms(streams, steps)).to(cdf.device)[:, None] * cdf[:, -1:]
        return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)


class StreamSampling(LogitsProcessor):
    """A transformers `generate` hook for `batching="hf"`: draws each row's token with `sampler`
    from the row's stream and leaves only that token's score finite, so greedy decoding picks it.
    Batch row b is `streams[b]`; its step is the number of tokens after the prompt's
    `prompt_width` columns. Rows that have finished are drawn for too (generate pads them)."""

    def __init__(self, sampler: Sampler, streams: np.ndarray, prompt_width: int):
        self.sampler, self.streams, self.prompt_width = sampler, streams, prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        steps = np.full(len(scores), input_ids.shape[1] - self.prompt_width)
        tokens = self.sampler(scores.float(), self.streams, steps)
        return torch.full_like(scores, -torch.inf).scatter_(1, tokens[:, None], 0.0)
