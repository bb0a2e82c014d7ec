"""Continuous-batching decode loop for the transformers backend: no decode step is spent on a
finished response, and the KV cache is never copied as it grows.

transformers' `generate` decodes a batch until its longest row ends, and its `DynamicCache` grows by
concatenation, copying the whole cache at every step (at 500 tokens that copy costs more than the
model's matmuls on a CPU). Here rows live in fixed slots of a preallocated cache (`SlotCache`):

- a step writes one new key/value column in place and attention reads views of the cache;
- a row that ends (EOS or `max_new_tokens`) leaves at once: the last active row moves into its
  slot, so the active rows are always slots `[0, rows)`;
- waiting prompts are prefilled into free slots (one prefill per prompt, batched with prompts of
  similar length so that little of it is padding, its KV copied to its `n` slots), so the batch
  stays full until the queue is empty.

Rows are left-aligned to a shared write column: every row's tokens end at column `end - 1`, and
the columns left of a row's first token are masked. The attended window `[start, end)` starts at the
oldest row's first token; when the cache runs out of columns the window is copied to the left of a
fresh buffer (every `HEADROOM` steps at most).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer

HEADROOM = 128  # free columns added whenever the cache is re-laid out
PREFILL_PADDING = 1.25  # a prefill batch computes at most this many times its prompts' tokens


def supports_slot_cache(model: PreTrainedModel) -> bool:
    """True when every layer of the model's own cache is a plain full-attention `DynamicLayer`
    (no sliding windows, no recurrent state), which is what `SlotCache` replaces."""
    layers = DynamicCache(config=model.config).layers
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


class _SlotLayer(DynamicLayer):
    """One layer's view of a `SlotCache`: writes the step's key/value column in place."""

    def __init__(self, cache: SlotCache, index: int) -> None:
        super().__init__()
        self.cache, self.index, self.is_initialized = cache, index, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Store one decode step's keys/values at column `end`; return the window up to it."""
        c = self.cache
        if key_states.shape[2] != 1:
            raise ValueError("SlotCache takes one token per row and step; prefill with a DynamicCache")
        keys, values = c.keys[self.index], c.values[self.index]
        keys[: c.rows, :, c.end] = key_states[:, :, 0]
        values[: c.rows, :, c.end] = value_states[:, :, 0]
        return keys[: c.rows, :, c.start : c.end + 1], values[: c.rows, :, c.start : c.end + 1]

    def get_seq_length(self) -> int:
        return self.cache.end - self.cache.start

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0


class SlotCache(Cache):
    """Keys and values of up to `slots` rows in per-layer `[slots, kv_heads, capacity, head_dim]`
    tensors, with a `[slots, capacity]` attention mask. Active rows are slots `[0, rows)`; row `i`'s
    tokens are columns `[first[i], end)`, and the attended window `[start, end)` starts at the
    smallest `first`. Storage is zero-filled, so masked columns hold finite values."""

    def __init__(self, shapes: list[tuple[int, int]], slots: int, capacity: int, dtype, device) -> None:
        super().__init__(layers=[_SlotLayer(self, i) for i in range(len(shapes))])
        self.shapes, self.slots, self.dtype, self.device = shapes, slots, dtype, device
        self.rows = self.start = self.end = 0
        self.first: list[int] = []
        self.keys, self.values, self.mask = self._allocate(capacity)

    @property
    def capacity(self) -> int:
        return self.mask.shape[1]

    def _allocate(self, capacity: int):
        """Fresh zero-filled storage of `capacity` columns."""
        kv = [[torch.zeros(self.slots, h, capacity, d, dtype=self.dtype, device=self.device) for h, d in self.shapes]
              for _ in range(2)]
        return kv[0], kv[1], torch.zeros(self.slots, capacity, dtype=torch.bool, device=self.device)

    def relayout(self, min_end: int = 0) -> None:
        """Copy the window `[start, end)` into fresh storage so that it ends at `max(end - start,
        min_end)` with `HEADROOM` free columns after it; column indices shift accordingly."""
        width = self.end - self.start
        new_end = max(width, min_end)
        keys, values, mask = self._allocate(new_end + HEADROOM)
        old, new, r = slice(self.start, self.end), slice(new_end - width, new_end), self.rows
        for dst, src in zip(keys + values, self.keys + self.values):
            dst[:r, :, new] = src[:r, :, old]
        mask[:r, new] = self.mask[:r, old]
        self.keys, self.values, self.mask = keys, values, mask
        shift = new_end - self.end
        self.first = [f + shift for f in self.first]
        self.start, self.end = self.start + shift, new_end

    def add_rows(self, lengths: list[int]) -> slice:
        """Claim the next slots for rows whose tokens are the last `lengths[i]` columns and mask
        the rest of their columns; returns the slots (the caller fills their keys and values)."""
        slots = slice(self.rows, self.rows + len(lengths))
        first = [self.end - length for length in lengths]
        self.mask[slots] = False
        for row, col in zip(range(slots.start, slots.stop), first):
            self.mask[row, col : self.end] = True
        self.rows, self.first = slots.stop, self.first + first
        self.start = min(self.first)
        return slots

    def open_column(self) -> None:
        """Make room for one more column (re-laying out when full) and unmask it for every row;
        the model's forward then writes it through `_SlotLayer.update`."""
        if self.end == self.capacity:
            self.relayout()
        self.mask[: self.rows, self.end] = True

    def close_column(self) -> None:
        """The forward has written column `end`: it joins the window."""
        self.end += 1

    def remove_row(self, row: int) -> None:
        """Drop a row: the last active row moves into its slot (its keys and values in the window's
        columns, its whole mask row)."""
        last = self.rows - 1
        if row != last:
            window = slice(self.start, self.end)
            for store in self.keys + self.values:
                store[row, :, window] = store[last, :, window]
            self.mask[row] = self.mask[last]
            self.first[row] = self.first[last]
        self.first.pop()
        self.rows = last
        self.start = min(self.first, default=self.end)


def prefill_groups(lengths: list[int]) -> list[tuple[int, int]]:
    """Split prompts of `lengths` (longest first) into consecutive runs `[start, stop)` that are
    prefilled together: a run grows while its left-padded batch computes at most `PREFILL_PADDING`
    times its prompts' tokens. (IFEval's prompts run from 20 to 390 tokens: prefilled 32 at a
    time in benchmark order, half the prefill's work was padding.)"""
    if not lengths:
        return []
    runs, start, tokens = [], 0, 0
    for i, length in enumerate(lengths):
        if i > start and lengths[start] * (i - start + 1) > PREFILL_PADDING * (tokens + length):
            runs.append((start, i))
            start, tokens = i, 0
        tokens += length
    return [*runs, (start, len(lengths))]


# (fp32 logits [rows, vocab], each row's (prompt index, sample index), each row's tokens so far) -> ids [rows]
Pick = Callable[[torch.Tensor, list[tuple[int, int]], list[int]], torch.Tensor]


class ContinuousDecoder:
    """Decodes `n` responses for each of a list of prompts with at most `slots` rows at a time.

    `pick(logits, owners, steps)` maps fp32 next-token logits `[rows, vocab]` to token ids `[rows]`
    (greedy or sampled); it is told each row's (prompt index, sample index) and how many tokens the
    row has generated, so that a sampler can give every response its own random stream. `run`
    returns, per prompt in input order, `n` token lists that end at the first EOS (included) or
    after `max_new_tokens` tokens.
    """

    def __init__(self, model: PreTrainedModel, pad_id: int, eos_id: int, n: int, max_new_tokens: int,
                 slots: int, pick: Pick) -> None:
        if slots < n:
            raise ValueError(f"batch_rows ({slots}) must hold one prompt's n = {n} samples")
        self.model, self.pad_id, self.eos_id = model, pad_id, eos_id
        self.n, self.max_new_tokens, self.slots, self.pick = n, max_new_tokens, slots, pick

    @torch.no_grad()
    def run(self, prompts: list[list[int]], on_prompt_done: Callable[[], None] = lambda: None) -> list[list[list[int]]]:
        """Decode every prompt's `n` responses; longest prompts are admitted first."""
        self.cache: SlotCache | None = None
        self.run_slots = min(self.slots, len(prompts) * self.n)  # no more slots than rows to decode
        self.on_prompt_done = on_prompt_done
        self.results: list[list[list[int]]] = [[[] for _ in range(self.n)] for _ in prompts]
        self.pending = [self.n] * len(prompts)  # rows still decoding (or waiting) per prompt
        queue = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        device = self.model.device
        self.pos = torch.zeros(self.run_slots, dtype=torch.long, device=device)  # position of the token fed next
        self.last = torch.zeros(self.run_slots, dtype=torch.long, device=device)  # token fed next
        self.owner: list[tuple[int, int]] = []  # (prompt index, sample index) of each active row
        self.tokens: list[list[int]] = []  # generated tokens of each active row
        self.max_prompt = max(len(p) for p in prompts)
        while queue or self.rows:
            free = self.run_slots - self.rows
            if queue and free >= min(len(queue) * self.n, max(self.n, self.run_slots // 4)):
                group, queue = queue[: free // self.n], queue[free // self.n :]
                self._admit(group, [prompts[i] for i in group])
            if self.rows:
                self._step()
        self.cache = None
        return self.results

    @property
    def rows(self) -> int:
        return self.cache.rows if self.cache is not None else 0

    def _admit(self, owners: list[int], prompts: list[list[int]]) -> None:
        """Give `prompts` (longest first) their slots, prefilling them in runs of similar length."""
        for start, stop in prefill_groups([len(p) for p in prompts]):
            self._admit_group(owners[start:stop], prompts[start:stop])

    def _admit_group(self, owners: list[int], prompts: list[list[int]]) -> None:
        """Prefill `prompts` (left-padded, one row each), copy each one's KV into `n` free slots
        and pick their first tokens from the prefill's last logits."""
        device, n, m = self.model.device, self.n, len(prompts)
        width = max(len(p) for p in prompts)
        ids = torch.full((m, width), self.pad_id, dtype=torch.long, device=device)
        attn = torch.zeros((m, width), dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, device=device)
            attn[i, width - len(p) :] = 1
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0),
                         use_cache=True, logits_to_keep=1)
        prefill = out.past_key_values
        if self.cache is None:
            shapes = [(layer.keys.shape[1], layer.keys.shape[3]) for layer in prefill.layers]
            self.cache = SlotCache(shapes, self.run_slots, self.max_prompt + HEADROOM, prefill.layers[0].keys.dtype,
                                   device)
            self.cache.start = self.cache.end = self.max_prompt
        c = self.cache
        if c.end < width:
            c.relayout(min_end=width)
        lengths = [len(p) for p in prompts for _ in range(n)]
        new = c.add_rows(lengths)
        cols = slice(c.end - width, c.end)  # left-padded: row i's prompt is its last lengths[i] columns
        for store, layer in zip(c.keys, prefill.layers):
            store[new].view(m, n, *store.shape[1:])[:, :, :, cols] = layer.keys[:, None]
        for store, layer in zip(c.values, prefill.layers):
            store[new].view(m, n, *store.shape[1:])[:, :, :, cols] = layer.values[:, None]
        self.pos[new] = torch.tensor(lengths, device=device)
        self.owner += [(i, j) for i in owners for j in range(n)]
        self.tokens += [[] for _ in range(m * n)]
        first = self.pick(out.logits[:, -1].float().repeat_interleave(n, 0), self.owner[new], [0] * (m * n))
        self._record(first, new.start)

    def _step(self) -> None:
        """One decode step for every active row."""
        c = self.cache
        c.open_column()
        r = c.rows
        out = self.model(input_ids=self.last[:r, None], attention_mask=c.mask[:r, c.start : c.end + 1],
                         position_ids=self.pos[:r, None], past_key_values=c, use_cache=True, logits_to_keep=1)
        c.close_column()
        self.pos[:r] += 1
        steps = [len(tokens) for tokens in self.tokens]
        self._record(self.pick(out.logits[:, -1].float(), self.owner, steps), 0)

    def _record(self, tokens: torch.Tensor, first_row: int) -> None:
        """Append `tokens` to rows `first_row...`, then retire the rows that ended."""
        self.last[first_row : first_row + len(tokens)] = tokens
        done = []
        for row, token in enumerate(tokens.tolist(), start=first_row):
            self.tokens[row].append(token)
            if token == self.eos_id or len(self.tokens[row]) == self.max_new_tokens:
                done.append(row)
        for row in reversed(done):
            self._retire(row)

    def _retire(self, row: int) -> None:
        """Hand a finished row's tokens to its prompt and move the last active row into its slot."""
        owner, sample = self.owner[row]
        self.results[owner][sample] = self.tokens[row]
        self.pending[owner] -= 1
        if self.pending[owner] == 0:
            self.on_prompt_done()
        last = self.cache.rows - 1
        self.cache.remove_row(row)
        if row != last:
            self.pos[row], self.last[row] = self.pos[last], self.last[last]
            self.owner[row], self.tokens[row] = self.owner[last], self.tokens[last]
        self.owner.pop()
        self.tokens.pop()
