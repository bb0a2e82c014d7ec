"""The pool record: one prompt with its responses (and, once scored / embedded / selected, their
rewards, embeddings and selected indices), the one data shape every stage reads and writes; and
`PoolError`, bad input named by file, row and field."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Prompt = str | list[dict]


class PoolError(ValueError):
    """Bad input: the message names the file, the row (1-based) and the field."""

    def __init__(self, path: str | Path, row: int | None, field_name: str | None, problem: str):
        where = str(path)
        if row is not None:
            where += f": row {row}"
        if field_name is not None:
            where += f": field '{field_name}'"
        super().__init__(f"{where}: {problem}")


@dataclass
class PoolRecord:
    """One prompt and its response pool. Lists are parallel: one entry per response."""

    prompt: Prompt
    responses: list[str]
    rewards: list[float] | None = None
    embeddings: np.ndarray | None = None  # float32 [n_responses, d]
    id: str | None = None
    finished: list[bool] | None = None  # ended with EOS (True) or at the token limit (False)
    n_tokens: list[int] | None = None
    selected: list[int] | None = None  # selection: positive first, then the negatives
    meta: dict[str, Any] | None = None  # prompt-side data a reward may need (e.g. IFEval's constraints)
    extra: dict[str, Any] = field(default_factory=dict)  # columns a stage adds (e.g. ref_logps)

    def to_row(self) -> dict[str, Any]:
        """A JSON/Parquet-friendly dict with only the fields that are set."""
        row: dict[str, Any] = {"id": self.id, "prompt": self.prompt, "responses": list(self.responses)}
        if self.rewards is not None:
            row["rewards"] = [float(r) for r in self.rewards]
        if self.embeddings is not None:
            row["embeddings"] = np.asarray(self.embeddings, dtype=np.float32).tolist()
        if self.finished is not None:
            row["finished"] = [bool(f) for f in self.finished]
        if self.n_tokens is not None:
            row["n_tokens"] = [int(n) for n in self.n_tokens]
        if self.selected is not None:
            row["selected"] = [int(i) for i in self.selected]
        if self.meta is not None:
            row["meta"] = self.meta
        row.update(self.extra)
        return row


def prompt_text(prompt: Prompt) -> str:
    """Plain text of a prompt: itself, or the content of the last user message of a chat list."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else prompt[-1]["content"]
