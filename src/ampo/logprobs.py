"""Summed log-probabilities of responses, computed only on completion tokens and in chunks.

The model trunk runs once over the padded rows; the output head, log-softmax and gather then run
on the completion positions only, `chunk_size` positions at a time, so the full
`[rows, length, vocab]` fp32 logits never exist. With gradients on, each chunk is checkpointed:
the backward pass recomputes one chunk's logits at a time instead of keeping all of them.

Two layouts reach the same sums (`ampo.layouts` puts them behind one interface). `build_rows`
makes one padded row per (prompt, response). `build_shared_prefix_rows` makes one row per prompt,
`[prompt, response 1, ..., response K]` without padding between them: each response sees the
prompt and itself only (a block mask) and continues the prompt's positions, so the prompt is
forwarded once per group instead of K times.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel, PreTrainedTokenizerBase


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
    eos_id: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """Summed log-prob of the completion tokens of each row (`[rows]`, fp32, differentiable) and
    the number of completion tokens per row (`[rows]`, long); with `eos_id`, a third tensor: each
    row's EOS log-prob where its response ends (`_eos_logprobs`).

    Equals the naive `log_softmax(model(...).logits)` gathered at the completion tokens and summed,
    without building the full logits: the head runs on `chunk_size` completion positions at a time.
    """
    _check_supported(model, chunk_size)
    completion_mask = completion_mask.bool()
    if completion_mask[:, 0].any():
        raise ValueError("completion_mask marks position 0, which no token predicts")
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    rows, cols = completion_mask.nonzero(as_tuple=True)
    hidden = _final_hidden_states(model, input_ids, attention_mask, position_ids)
    index = TokenIndex(rows, cols - 1, cols, rows)
    sums, counts = _summed_logprobs(model, hidden, input_ids, index, len(input_ids), chunk_size)
    if eos_id is None:
        return sums, counts
    prompt_end = (torch.arange(len(input_ids), device=rows.device), attention_mask.sum(-1) - 1 - counts)
    return sums, counts, _eos_logprobs(model, hidden, input_ids, index, prompt_end, eos_id)


def build_shared_prefix_rows(
    prompt_ids: list[list[int]], response_ids: list[list[list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One right-padded row per prompt, `[prompt, response 1, ..., response K]`, as
    `(input_ids, position_ids, segment_ids)`.

    `segment_ids` is 0 on the prompt, k on response k (1-based) and -1 on padding; each response's
    positions continue the prompt's, as if it were alone after it:

    >>> ids, pos, seg = build_shared_prefix_rows([[5, 6]], [[[7], [8, 9]]], pad_id=0)
    >>> ids, pos, seg
    (tensor([[5, 6, 7, 8, 9]]), tensor([[0, 1, 2, 2, 3]]), tensor([[0, 0, 1, 2, 2]]))
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"build_shared_prefix_rows got {len(prompt_ids)} prompts but {len(response_ids)} groups")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("build_shared_prefix_rows needs at least one prompt token per row")
    length = max(len(p) + sum(map(len, rs)) for p, rs in zip(prompt_ids, response_ids))
    input_ids = torch.full((len(prompt_ids), length), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(prompt_ids), length), dtype=torch.long)
    segment_ids = torch.full((len(prompt_ids), length), -1, dtype=torch.long)
    for i, (p, rs) in enumerate(zip(prompt_ids, response_ids)):
        input_ids[i, : len(p)] = torch.tensor(p)
        position_ids[i, : len(p)] = torch.arange(len(p))
        segment_ids[i, : len(p)] = 0
        start = len(p)
        for k, r in enumerate(rs, start=1):
            input_ids[i, start : start + len(r)] = torch.tensor(r, dtype=torch.long)
            position_ids[i, start : start + len(r)] = torch.arange(len(p), len(p) + len(r))
            segment_ids[i, start : start + len(r)] = k
            start += len(r)
    return input_ids, position_ids, segment_ids


def shared_prefix_logprobs(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    segment_ids: torch.Tensor,
    group_size: int,
    chunk_size: int = 1024,
    eos_id: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """`sequence_logprobs` for rows from `build_shared_prefix_rows`: summed completion log-probs
    and token counts (and with `eos_id`, EOS log-probs) as `[rows, group_size]` grids (response k
    of row i at `[i, k - 1]`).

    The first token of each response is predicted from the prompt's last state; the others from
    the token before them. Needs `sdpa` or `eager` attention (a custom 4-D mask).
    """
    base = _check_supported(model, chunk_size)
    implementation = getattr(base.config, "_attn_implementation", None)
    if implementation not in ("sdpa", "eager"):
        raise ValueError(f"shared-prefix rows need sdpa or eager attention, not {implementation!r}")
    window = getattr(base.config, "sliding_window", None)
    if window and input_ids.shape[1] > window:
        raise ValueError(f"shared-prefix rows of {input_ids.shape[1]} tokens exceed the sliding window ({window})")
    if int(segment_ids.max()) > group_size:
        raise ValueError(f"a row has more than group_size={group_size} responses")
    rows, cols = (segment_ids > 0).nonzero(as_tuple=True)
    prompt_end = (segment_ids == 0).sum(-1) - 1
    same_segment = segment_ids[rows, cols - 1] == segment_ids[rows, cols]
    sources = torch.where(same_segment, cols - 1, prompt_end[rows])
    owners = rows * group_size + segment_ids[rows, cols] - 1
    mask = _shared_prefix_mask(segment_ids, implementation, next(base.parameters()).dtype)
    hidden = _final_hidden_states(model, input_ids, mask, position_ids)
    index = TokenIndex(rows, sources, cols, owners)
    sums, counts = _summed_logprobs(model, hidden, input_ids, index, len(input_ids) * group_size, chunk_size)
    if eos_id is None:
        return sums.view(-1, group_size), counts.view(-1, group_size)
    owner_rows = torch.arange(len(input_ids) * group_size, device=rows.device) // group_size
    eos = _eos_logprobs(model, hidden, input_ids, index, (owner_rows, prompt_end[owner_rows]), eos_id)
    return sums.view(-1, group_size), counts.view(-1, group_size), eos.view(-1, group_size)


def _check_supported(model: PreTrainedModel, chunk_size: int) -> PreTrainedModel:
    """Refuse what the chunked head cannot compute; return the model unwrapped from DDP."""
    base = getattr(model, "module", model)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if getattr(base.config, "final_logit_softcapping", None):
        raise ValueError("ampo's log-probs do not support models with final_logit_softcapping")
    return base


def _shared_prefix_mask(segment_ids: torch.Tensor, implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """`[rows, 1, L, L]` attention mask: a position sees earlier positions of the prompt and of its
    own segment. Padding sees the prompt (its output is never read). Boolean for sdpa, additive
    for eager attention."""
    length = segment_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    query, key = segment_ids[:, :, None], segment_ids[:, None, :]
    allowed = causal & (key >= 0) & ((key == 0) | (key == query))
    if implementation == "sdpa":
        return allowed[:, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )[:, None]


class TokenIndex(NamedTuple):
    """The scored tokens of a batch, one entry each, grouped by sequence in order: token
    `input_ids[rows, targets]` is predicted by the state `hidden[rows, sources]` and belongs to
    sequence `owners`."""

    rows: torch.Tensor
    sources: torch.Tensor
    targets: torch.Tensor
    owners: torch.Tensor


def _summed_logprobs(
    model: PreTrainedModel,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    index: TokenIndex,
    n_sequences: int,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum each indexed token's log-prob into its sequence; returns fp32 sums and token counts
    `[n_sequences]`. The head runs on `chunk_size` states at a time, checkpointed when gradients
    are on."""
    rows, sources, targets, owners = index
    states = hidden[rows, sources]
    token_ids = input_ids[rows, targets]
    head = output_head(model)
    # a frozen head under DeepSpeed ZeRO-3 (LoRA) is not gathered again when the checkpoint recomputes
    # in the backward pass (its weight comes back empty): its chunks keep their logits instead
    weight = getattr(head, "weight", None)
    zero3_frozen = getattr(weight, "ds_id", None) is not None and not weight.requires_grad
    use_checkpoint = torch.is_grad_enabled() and states.requires_grad and not zero3_frozen
    token_logps = []
    for start in range(0, len(token_ids), chunk_size):
        chunk = (states[start : start + chunk_size], token_ids[start : start + chunk_size])
        if use_checkpoint:
            token_logps.append(checkpoint(_token_logprobs, head, *chunk, use_reentrant=False))
        else:
            token_logps.append(_token_logprobs(head, *chunk))
    sums = torch.zeros(n_sequences, dtype=torch.float32, device=input_ids.device)
    if token_logps:
        sums = sums.index_add(0, owners, torch.cat(token_logps))
    counts = torch.zeros(n_sequences, dtype=torch.long, device=input_ids.device)
    counts = counts.index_add(0, owners, torch.ones_like(owners))
    return sums, counts


def _eos_logprobs(
    model: PreTrainedModel,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    index: TokenIndex,
    prompt_end: tuple[torch.Tensor, torch.Tensor],
    eos_id: int,
) -> torch.Tensor:
    """log P(EOS) at the state right after each sequence's content (REFA's `P_EOS(y)`).

    For a response that ends with EOS this is the log-prob of that EOS token; for one cut off
    without it, the probability that it would have ended after its last token; for an empty one,
    after the prompt (`prompt_end` = the (row, column) of each sequence's last prompt token).
    """
    rows, sources, targets, owners = index
    end_rows, end_cols = (t.clone() for t in prompt_end)
    if len(owners):
        last = torch.ones_like(owners, dtype=torch.bool)
        last[:-1] = owners[1:] != owners[:-1]
        ends_with_eos = input_ids[rows, targets] == eos_id
        cols = torch.where(ends_with_eos, sources, targets)
        end_rows[owners[last]] = rows[last]
        end_cols[owners[last]] = cols[last]
    return _token_logprobs(output_head(model), hidden[end_rows, end_cols], torch.full_like(end_rows, eos_id))


def output_head(model: PreTrainedModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """The LM head as a function of hidden states, to call after the model's forward.

    Under FSDP2, accelerate shards the final norm and the head as one group, left unsharded
    after the forward; calling that head module again outside the forward makes torch's backward
    crash (a segfault, torch 2.13, CPU and gloo: `tests/test_distributed.py`). Its weight, still
    whole then, is applied directly instead; FSDP reduce-scatters its gradient as usual. A head
    whose weight is a shard (a DTensor: resharded after the forward) is called as a module, so
    FSDP gathers it."""
    head = getattr(model, "module", model).get_output_embeddings()
    try:
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without FSDP2
        return head
    if isinstance(head, FSDPModule) and isinstance(head, torch.nn.Linear) and not isinstance(head.weight, DTensor):
        return functools.partial(torch.nn.functional.linear, weight=head.weight, bias=head.bias)
    return head


def _final_hidden_states(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
) -> torch.Tensor:
    """The trunk's last (normalised) hidden states `[rows, L, hidden]`.

    The call goes through the model's own forward, so wrappers (PEFT, DDP) see a normal step;
    `logits_to_keep=1` keeps its logits to one position per row.
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        output_hidden_states=True,
        logits_to_keep=1,
    )
    return out.hidden_states[-1]


def _token_logprobs(head: Callable[[torch.Tensor], torch.Tensor], states: torch.Tensor,
                    targets: torch.Tensor) -> torch.Tensor:
    """Log-prob of each target token given its hidden state, with an fp32 softmax."""
    logits = head(states).float()
    return logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
