"""Local sequence-classification reward models: how a (prompt, response) pair becomes model input,
batched logits, and `HFRewardModel` (one output logit = the reward)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import _check_pairs, validate_rewards


def _chat_texts(tokenizer: Any, prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
    """Each pair as a user/assistant conversation rendered by the tokenizer's chat template."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False
        )
        for p, r in zip(prompts, responses)
    ]


def _cut_response(tokenizer: Any, response: str, prompt_tokens: int, budget: int) -> str:
    """Cut a response's end only if keeping it whole would leave the prompt < budget // 4 tokens."""
    keep = budget - min(prompt_tokens, budget // 4)
    encoded = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    if len(encoded.input_ids) <= keep:
        return response
    return response[: encoded.offset_mapping[keep - 1][1]]


def encode_pairs(
    tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], max_length: int
) -> Any:
    """Padded tensors for a reward model: chat template if the tokenizer has one, else text pairs.

    Over-long inputs lose the start of the prompt (left truncation); the response is cut at its
    end only when keeping it whole would leave the prompt under a quarter of the text budget
    (`max_length` minus the special or template tokens).
    The tokenizer's `truncation_side` is set to "left".
    """
    tokenizer.truncation_side = "left"
    if tokenizer.chat_template:
        empty_chat = _chat_texts(tokenizer, [""], [""])[0]
        overhead = len(tokenizer(empty_chat, add_special_tokens=False).input_ids)
    else:
        overhead = tokenizer.num_special_tokens_to_add(pair=True)
    budget = max_length - overhead
    if budget < 4:
        raise ValueError(f"max_length={max_length} leaves no room after {overhead} special tokens")
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False).input_ids
    prompt_tokens = [len(ids) for ids in prompt_ids]
    responses = [_cut_response(tokenizer, r, n, budget) for r, n in zip(responses, prompt_tokens)]
    common = {"max_length": max_length, "padding": True, "return_tensors": "pt"}
    if tokenizer.chat_template:
        texts = _chat_texts(tokenizer, prompts, responses)
        return tokenizer(texts, truncation=True, add_special_tokens=False, **common)
    return tokenizer(list(prompts), responses, truncation="only_first", **common)


class HFRewardModel:
    """A local sequence-classification reward model (one output logit; score = logits[:, 0]).

    Pairs are sorted by length and scored in batches without gradients; see `encode_pairs` for
    how a pair becomes model input. Only safetensors weights are loaded.
    """

    def __init__(
        self,
        path: str | Path,
        batch_size: int = 16,
        max_length: int = 512,
        device: str = "cpu",
        trust_remote_code: bool = False,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ..models import load_weights

        self.path = Path(path)
        self.name = str(path)
        if not (self.path / "config.json").is_file():
            raise ValueError(f"reward model folder {self.path} has no config.json")
        self.batch_size = batch_size
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.path, trust_remote_code=trust_remote_code
        )
        self.model = load_weights(AutoModelForSequenceClassification, self.path, "reward model",
                                  trust_remote_code=trust_remote_code)
        num_labels = self.model.config.num_labels
        if num_labels != 1:
            raise ValueError(f"reward model {self.path} has num_labels={num_labels}; expected 1")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(device).eval()

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """One score per pair, in input order."""
        _check_pairs(self.name, prompts, responses)
        scores = pair_logits(self.model, self.tokenizer, prompts, responses, self.batch_size, self.max_length)
        return validate_rewards(self.name, scores[:, 0], len(prompts))


@torch.no_grad()
def pair_logits(model: Any, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], batch_size: int,
                max_length: int) -> np.ndarray:
    """A sequence classifier's logits `[n, num_labels]` (float64) for (prompt, response) pairs, in
    input order; pairs are sorted by length and run in batches without gradients."""
    order = sorted(range(len(prompts)), key=lambda i: -(len(prompts[i]) + len(responses[i])))
    out = np.zeros((len(prompts), model.config.num_labels), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        batch = encode_pairs(tokenizer, [prompts[i] for i in idx], [responses[i] for i in idx], max_length)
        out[idx] = model(**batch.to(model.device)).logits.float().cpu().numpy()
    return out


