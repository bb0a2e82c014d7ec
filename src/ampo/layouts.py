"""Row layouts: how groups of responses to their prompts become model rows, and how each
response's summed log-prob comes back out, behind one interface (`RowLayout`) so that the trainer
and the no-gradient pass (`response_logprobs`: reference log-probs, evaluation) never branch on
which layout is in use. `PaddedRows` is one padded row per response; `SharedPrefixRows` one row
per group with the prompt forwarded once (`train.shared_prefix`). Both give the same values
(`tests/test_shared_prefix.py`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .logprobs import build_rows, build_shared_prefix_rows, response_ids, sequence_logprobs, shared_prefix_logprobs
from .models import encode_prompt
from .precision import compute_context


class RowLayout(ABC):
    """How groups of responses to their prompts become model rows, and how each response's summed
    log-prob comes back out as a `[groups, K]` grid. Two implementations give the same values
    (`PaddedRows`, `SharedPrefixRows`; `row_layout` picks one), so the trainer and the reference
    pass never branch on which is in use."""

    @abstractmethod
    def rows(self, prompt_ids: list[list[int]], response_ids: list[list[list[int]]], pad_id: int) -> dict:
        """Model inputs for groups (prompt ids, response ids per group), with `mask` `[B, K]`
        marking the filled slots of the grid (K = the largest group)."""

    @abstractmethod
    def logprobs(self, model: PreTrainedModel, rows: dict, chunk_size: int = 1024,
                 eos_id: int | None = None) -> tuple[torch.Tensor, ...]:
        """Summed log-probs (fp32) and token counts (long) of `rows`' responses as `[B, K]` grids
        (empty slots 0); with `eos_id`, a third grid: each response's EOS log-prob where it ends."""

    @abstractmethod
    def batches(self, prompt_ids: list[list[int]], response_ids: list[list[list[int]]],
                batch_rows: int) -> list[list[tuple[int, list[int]]]]:
        """A no-gradient pass's batches, longest first: each a list of (prompt index, indices of
        its responses in the batch), about `batch_rows` responses per batch."""


def _group_mask(response_ids: list[list[list[int]]]) -> torch.Tensor:
    """`[B, K]` True where group b has a response k."""
    mask = torch.zeros(len(response_ids), max(map(len, response_ids)), dtype=torch.bool)
    for b, group in enumerate(response_ids):
        mask[b, : len(group)] = True
    return mask


class PaddedRows(RowLayout):
    """One right-padded row per (prompt, response) (`build_rows`); `row_slot[r]` is row r's slot
    in the flattened `[B, K]` grid. Example: groups of sizes 2 and 3 give 5 rows,
    `row_slot = [0, 1, 3, 4, 5]`, `mask = [[T, T, F], [T, T, T]]`."""

    def rows(self, prompt_ids, response_ids, pad_id):
        mask = _group_mask(response_ids)
        flat = [(p, r, b * mask.shape[1] + k) for b, (p, group) in enumerate(zip(prompt_ids, response_ids))
                for k, r in enumerate(group)]
        tensors = build_rows([f[0] for f in flat], [f[1] for f in flat], pad_id)
        return {**dict(zip(("input_ids", "attention_mask", "completion_mask"), tensors)),
                "row_slot": torch.tensor([f[2] for f in flat]), "mask": mask}

    def logprobs(self, model, rows, chunk_size=1024, eos_id=None):
        B, K = rows["mask"].shape
        values = sequence_logprobs(model, rows["input_ids"], rows["attention_mask"], rows["completion_mask"],
                                   chunk_size=chunk_size, eos_id=eos_id)
        slot = rows["row_slot"]
        return tuple(torch.zeros(B * K, dtype=v.dtype, device=v.device).index_put((slot,), v).view(B, K)
                     for v in values)

    def batches(self, prompt_ids, response_ids, batch_rows):
        """Single responses sorted by row length, across prompts."""
        rows = [(i, j) for i, group in enumerate(response_ids) for j in range(len(group))]
        rows.sort(key=lambda row: len(prompt_ids[row[0]]) + len(response_ids[row[0]][row[1]]), reverse=True)
        pieces = [(i, [j]) for i, j in rows]
        return [pieces[start : start + batch_rows] for start in range(0, len(pieces), batch_rows)]


class SharedPrefixRows(RowLayout):
    """One row per group, `[prompt, response 1, ..., response K]` (`build_shared_prefix_rows`):
    the prompt is forwarded once per group. Needs `sdpa` or `eager` attention."""

    def rows(self, prompt_ids, response_ids, pad_id):
        tensors = build_shared_prefix_rows(prompt_ids, response_ids, pad_id)
        return {**dict(zip(("input_ids", "position_ids", "segment_ids"), tensors)), "mask": _group_mask(response_ids)}

    def logprobs(self, model, rows, chunk_size=1024, eos_id=None):
        return shared_prefix_logprobs(model, rows["input_ids"], rows["position_ids"], rows["segment_ids"],
                                      rows["mask"].shape[1], chunk_size=chunk_size, eos_id=eos_id)

    def batches(self, prompt_ids, response_ids, batch_rows):
        """Whole groups sorted by row length, `batch_rows // the largest group` per batch."""
        order = sorted((i for i in range(len(prompt_ids)) if response_ids[i]),
                       key=lambda i: -(len(prompt_ids[i]) + sum(map(len, response_ids[i]))))
        per_batch = max(1, batch_rows // max(map(len, response_ids))) if order else 1
        return [[(i, list(range(len(response_ids[i])))) for i in order[start : start + per_batch]]
                for start in range(0, len(order), per_batch)]


def row_layout(shared_prefix: bool) -> RowLayout:
    """The layout `train.shared_prefix` names."""
    return SharedPrefixRows() if shared_prefix else PaddedRows()


def response_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str | list[dict]],
    responses: list[list[str]],
    finished: list[list[bool]] | None = None,
    batch_rows: int = 16,
    progress: bool = False,
    shared_prefix: bool = False,
    dtype: str = "float32",
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Summed log-probs and token counts of each prompt's responses, without gradients.

    Returns `(logps, n_tokens)`: for prompt `i`, `logps[i]` (float32) and `n_tokens[i]` (int64)
    have one entry per response in `responses[i]`. `finished` (default: all True) says which
    responses end with EOS. Batches follow `RowLayout.batches` (`batch_rows` padded rows sorted by
    length, or with `shared_prefix` one row per prompt and about `batch_rows` responses per
    batch); the model runs in eval mode and its previous mode is restored. `dtype` is the resolved
    compute dtype (`ampo.precision.resolve_train_dtype`): "bfloat16" runs under autocast as the
    trainer does, so that reference and policy log-probs are computed in the same numerics.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"response_logprobs got {len(prompts)} prompts but {len(responses)} response lists")
    if finished is None:
        finished = [[True] * len(r) for r in responses]
    if [len(f) for f in finished] != [len(r) for r in responses]:
        raise ValueError("finished must have one flag per response")
    prompt_tokens = [encode_prompt(tokenizer, p) for p in prompts]
    answer_tokens = [[response_ids(tokenizer, t, done) for t, done in zip(texts, flags)]
                     for texts, flags in zip(responses, finished)]
    logps = [np.zeros(len(r), dtype=np.float32) for r in responses]
    counts = [np.zeros(len(r), dtype=np.int64) for r in responses]
    device = next(model.parameters()).device
    layout = row_layout(shared_prefix)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), compute_context(dtype, device.type):
            for batch in tqdm(layout.batches(prompt_tokens, answer_tokens, batch_rows), desc="log-probs",
                              disable=not progress):
                rows = layout.rows([prompt_tokens[i] for i, _ in batch],
                                   [[answer_tokens[i][j] for j in js] for i, js in batch], tokenizer.pad_token_id)
                values, lengths = layout.logprobs(model, {k: t.to(device) for k, t in rows.items()})
                for row, (i, js) in enumerate(batch):
                    logps[i][js] = values[row, : len(js)].cpu().numpy()
                    counts[i][js] = lengths[row, : len(js)].cpu().numpy()
    finally:
        model.train(was_training)
    return logps, counts
