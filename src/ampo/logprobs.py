"""Summed log-probabilities of responses, computed only on completion tokens and in chunks.

The model trunk runs once over the padded rows; the output head, log-softmax and gather then run
on the completion positions only, `chunk_size` positions at a time, so the full
`[rows, length, vocab]` fp32 logits never exist. With gradients on, each chunk is checkpointed:
the backward pass recomputes one chunk's logits at a time instead of keeping all of them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ampo.models import encode_prompt


def response_ids(tokenizer: PreTrainedTokenizerBase, text: str, finished: bool) -> list[int]:
    """A response's token ids as every consumer sees them: the text without special tokens, plus
    EOS when the response finished."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return ids + [tokenizer.eos_token_id] if finished else ids


def build_rows(
    prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded `(input_ids, attention_mask, completion_mask)` for prompt + response rows.

    `completion_mask` marks the response tokens, i.e. the positions whose token is predicted:

    >>> ids, attn, comp = build_rows([[5, 6], [7]], [[8], [9, 10, 11]], pad_id=0)
    >>> ids
    tensor([[ 5,  6,  8,  0],
            [ 7,  9, 10, 11]])
    >>> attn
    tensor([[1, 1, 1, 0],
            [1, 1, 1, 1]])
    >>> comp
    tensor([[0, 0, 1, 0],
            [0, 1, 1, 1]])
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"build_rows got {len(prompt_ids)} prompts but {len(response_ids)} responses")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("build_rows needs at least one prompt token per row")
    length = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids))
    input_ids = torch.full((len(prompt_ids), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompt_ids), length), dtype=torch.long)
    completion_mask = torch.zeros((len(prompt_ids), length), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        input_ids[i, : len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
        attention_mask[i, : len(p) + len(r)] = 1
        completion_mask[i, len(p) : len(p) + len(r)] = 1
    return input_ids, attention_mask, completion_mask


def sequence_logprobs(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of the completion tokens of each row (`[rows]`, fp32, differentiable) and
    the number of completion tokens per row (`[rows]`, long).

    Equals the naive `log_softmax(model(...).logits)` gathered at the completion tokens and summed,
    without building the full logits: the head runs on `chunk_size` completion positions at a time.
    """
    base = getattr(model, "module", model)  # unwrap DistributedDataParallel
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if getattr(base.config, "final_logit_softcapping", None):
        raise ValueError("sequence_logprobs does not support models with final_logit_softcapping")
    completion_mask = completion_mask.bool()
    if completion_mask[:, 0].any():
        raise ValueError("completion_mask marks position 0, which no token predicts")
    hidden = _final_hidden_states(model, input_ids, attention_mask)
    rows, cols = completion_mask[:, 1:].nonzero(as_tuple=True)
    states = hidden[rows, cols]  # the state at t - 1 predicts the completion token at t
    targets = input_ids[rows, cols + 1]
    head = base.get_output_embeddings()
    use_checkpoint = torch.is_grad_enabled() and states.requires_grad
    token_logps = []
    for start in range(0, len(targets), chunk_size):
        chunk = (states[start : start + chunk_size], targets[start : start + chunk_size])
        if use_checkpoint:
            token_logps.append(checkpoint(_token_logprobs, head, *chunk, use_reentrant=False))
        else:
            token_logps.append(_token_logprobs(head, *chunk))
    sums = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device)
    if token_logps:
        sums = sums.index_add(0, rows, torch.cat(token_logps))
    return sums, completion_mask.sum(-1)


def _final_hidden_states(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The trunk's last (normalised) hidden states `[rows, L, hidden]`.

    The call goes through the model's own forward, so wrappers (PEFT, DDP) see a normal step;
    `logits_to_keep=1` keeps its logits to one position per row.
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        output_hidden_states=True,
        logits_to_keep=1,
    )
    return out.hidden_states[-1]


def _token_logprobs(head: torch.nn.Module, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-prob of each target token given its hidden state, with an fp32 softmax."""
    logits = head(states).float()
    return logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)


def response_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str | list[dict]],
    responses: list[list[str]],
    finished: list[list[bool]] | None = None,
    batch_rows: int = 16,
    progress: bool = False,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Summed log-probs and token counts of each prompt's responses, without gradients.

    Returns `(logps, n_tokens)`: for prompt `i`, `logps[i]` (float32) and `n_tokens[i]` (int64)
    have one entry per response in `responses[i]`. `finished` (default: all True) says which
    responses end with EOS. Rows are sorted by length so each batch holds similar lengths; the
    model runs in eval mode and its previous mode is restored.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"response_logprobs got {len(prompts)} prompts but {len(responses)} response lists")
    if finished is None:
        finished = [[True] * len(r) for r in responses]
    if [len(f) for f in finished] != [len(r) for r in responses]:
        raise ValueError("finished must have one flag per response")
    prompt_tokens = [encode_prompt(tokenizer, p) for p in prompts]
    rows = [
        (i, j, prompt_tokens[i], response_ids(tokenizer, text, done))
        for i, (texts, flags) in enumerate(zip(responses, finished))
        for j, (text, done) in enumerate(zip(texts, flags))
    ]
    rows.sort(key=lambda row: len(row[2]) + len(row[3]), reverse=True)
    logps = [np.zeros(len(r), dtype=np.float32) for r in responses]
    counts = [np.zeros(len(r), dtype=np.int64) for r in responses]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(rows), batch_rows), desc="log-probs", disable=not progress):
                batch = rows[start : start + batch_rows]
                tensors = build_rows([b[2] for b in batch], [b[3] for b in batch], tokenizer.pad_token_id)
                values, lengths = sequence_logprobs(model, *(t.to(device) for t in tensors))
                for (i, j, _, _), value, length in zip(batch, values.tolist(), lengths.tolist()):
                    logps[i][j], counts[i][j] = value, length
    finally:
        model.train(was_training)
    return logps, counts
