"""The prompts of a run: the prompt file (or a bundled set) split into train and held-out prompts,
and the train window each round uses. Pure given the file: the stage keys (`ampo.stage_keys`) and
the pipeline's split stage (which records it in `split.json`) read the same split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class PromptSplit:
    """Every prompt row of the source (`id`, `prompt`, optional `meta` and `gold`), and the
    indices of the train and held-out rows (each in file order)."""

    source: Path
    rows: list[dict]
    train_rows: list[int]
    heldout_rows: list[int]

    @property
    def train(self) -> list[dict]:
        return [self.rows[i] for i in self.train_rows]

    @property
    def heldout(self) -> list[dict]:
        return [self.rows[i] for i in self.heldout_rows]

    def window(self, r: int, n: int) -> list[dict]:
        """The train prompts of round r: all of them (`n` <= 0 or at least the train split), or a
        fresh rotating window of `n`."""
        train = self.train
        if n <= 0 or n >= len(train):
            return train
        start = (r * n) % len(train)
        return [train[(start + i) % len(train)] for i in range(n)]


def prompt_source(prompts: str) -> Path:
    """The file a `data.prompts` value names: a bundled set's file, or the path itself."""
    from .recipes import BUILTIN_PROMPT_SETS

    return BUILTIN_PROMPT_SETS.get(prompts) or Path(prompts)


def split_prompts(data) -> PromptSplit:
    """Read `data.prompts` and split it by `data.heldout` and `data.split_seed` (a `DataConfig`).
    Refuses, naming the option, a held-out count that leaves no training prompts."""
    from .data import read_prompt_rows

    source = prompt_source(data.prompts)
    rows = read_prompt_rows(source, data.gold_field)
    if data.heldout >= len(rows):
        raise ConfigError(f"config 'data.heldout': {data.heldout} leaves no training prompts "
                          f"({len(rows)} prompts in {source})")
    order = np.random.default_rng(data.split_seed).permutation(len(rows))
    return PromptSplit(source, rows, sorted(order[data.heldout:].tolist()), sorted(order[: data.heldout].tolist()))
