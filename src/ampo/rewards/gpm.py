"""General Preference Model (GPM) reward models: a sequence classifier whose `2k` outputs are a
response's preference embedding `v`, scored pairwise by `ampo.preferences.gpm_scores`, so the
model can express preference cycles that a one-logit (Bradley-Terry) reward model cannot.

A GPM folder is a normal sequence-classification model folder (`num_labels = 2k`) plus
`gpm.json` (head options, `GPMHead`) and, with a prompt gate, `gpm_gate.safetensors`. It is made
by `ampo train-rm --head gpm` (`ampo.rewards.train_reward_model`) and loaded by `score.reward`
(`GPMScorer`, detected by `gpm.json`). Formulas: docs/preferences.md (GPM, arXiv 2410.02197).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..preferences import GPM_GATES, gpm_gates, gpm_scores

GPM_FILE = "gpm.json"
GATE_FILE = "gpm_gate.safetensors"
GATES = ("none", *GPM_GATES)


@dataclass(frozen=True)
class GPMHead:
    """The options of a GPM head, shared by training and scoring (so the two cannot disagree).

    `value_head_dim` = 2k (even); `tau` the temperature of `P = sigma(s / tau)`; `normalize`
    L2-normalises `v` (as GPM's inference code does); `gate`: "none" (lambda = 1) or the prompt gate's form
    (`ampo.preferences.gpm_gates`: "softmax", "k_softmax_sqrtH").
    """

    value_head_dim: int = 2
    tau: float = 0.1
    normalize: bool = True
    gate: str = "none"

    def __post_init__(self):
        if not (isinstance(self.value_head_dim, int) and self.value_head_dim >= 2 and self.value_head_dim % 2 == 0):
            raise ValueError(f"GPM value_head_dim must be an even integer >= 2 (2k), got {self.value_head_dim!r}")
        if not (isinstance(self.tau, (int, float)) and self.tau > 0):
            raise ValueError(f"GPM tau must be > 0, got {self.tau!r}")
        if self.gate not in GATES:
            raise ValueError(f"GPM gate must be one of {', '.join(GATES)}, got {self.gate!r}")

    @property
    def k(self) -> int:
        return self.value_head_dim // 2

    def save(self, folder: Path) -> None:
        (folder / GPM_FILE).write_text(json.dumps({"head": "gpm", **asdict(self)}, indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path) -> GPMHead:
        try:
            data = json.loads((folder / GPM_FILE).read_text())
            return cls(**{k: v for k, v in data.items() if k != "head"})
        except (ValueError, TypeError) as e:
            raise ValueError(f"{folder / GPM_FILE}: not a valid GPM head description ({e})") from None


class PromptGate(torch.nn.Module):
    """GPM's optional prompt gate: `lambda = gate(Linear(H, k)(h_prompt))`, `h_prompt` being the
    backbone's hidden states of the prompt alone, mean-pooled (GPM uses the last prompt token
    of a decoder; mean pooling works for encoder and decoder backbones alike [I])."""

    def __init__(self, hidden_size: int, k: int, form: str):
        super().__init__()
        self.form, self.hidden_size = form, hidden_size
        self.proj = torch.nn.Linear(hidden_size, k, bias=False)
        torch.nn.init.normal_(self.proj.weight, std=1 / (hidden_size + 1))  # GPM's value-head init

    def forward(self, model: Any, tokenizer: Any, prompts: Sequence[str], max_length: int) -> torch.Tensor:
        inputs = tokenizer(list(prompts), truncation=True, max_length=max_length, padding=True,
                           return_tensors="pt").to(model.device)
        states = model.base_model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).last_hidden_state
        mask = inputs.attention_mask[..., None].to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1)
        return gpm_gates(self.proj(pooled), self.form, self.hidden_size)


def load_gate(folder: Path, head: GPMHead, hidden_size: int) -> PromptGate | None:
    """The saved prompt gate of a GPM folder (None without a gate); safetensors only."""
    if head.gate == "none":
        return None
    from safetensors.torch import load_file

    path = folder / GATE_FILE
    if not path.is_file():
        raise ValueError(f"GPM folder {folder} has gate {head.gate!r} but no {GATE_FILE}")
    gate = PromptGate(hidden_size, head.k, head.gate)
    gate.load_state_dict(load_file(str(path)))
    return gate.eval()


def save_gate(gate: PromptGate, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in gate.state_dict().items()}, str(folder / GATE_FILE))


class GPMScorer:
    """A GPM reward-model folder as a pairwise scorer: each prompt's `S = s(y_i > y_j) / tau`
    from the responses' preference embeddings (and the prompt's gate weights)."""

    pairwise = True

    def __init__(self, path: str | Path, batch_size: int = 16, max_length: int = 512, device: str = "cpu"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ..models import load_weights

        self.path = Path(path)
        self.name = str(path)
        if not (self.path / "config.json").is_file():
            raise ValueError(f"reward model folder {self.path} has no config.json")
        self.head = GPMHead.load(self.path)
        self.batch_size, self.max_length = batch_size, max_length
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = load_weights(AutoModelForSequenceClassification, self.path, "GPM reward model")
        if self.model.config.num_labels != self.head.value_head_dim:
            raise ValueError(f"GPM reward model {self.path} has num_labels={self.model.config.num_labels} but "
                             f"{GPM_FILE} says value_head_dim={self.head.value_head_dim}")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(device).eval()
        self.gate = load_gate(self.path, self.head, self.model.config.hidden_size)

    def embeddings(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """Preference embeddings `v [n, 2k]` (before normalisation) of (prompt, response) pairs."""
        from .reward_model import pair_logits

        return pair_logits(self.model, self.tokenizer, prompts, responses, self.batch_size, self.max_length)

    @torch.no_grad()
    def gates(self, prompts: list[str]) -> np.ndarray | None:
        """The prompts' gate weights `[n, k]`, or None without a gate."""
        if self.gate is None:
            return None
        return torch.cat([self.gate(self.model, self.tokenizer, prompts[i: i + self.batch_size], self.max_length)
                          for i in range(0, len(prompts), self.batch_size)]).double().cpu().numpy()

    def matrices(self, prompts: list[str], pools: list[list[str]]) -> list[np.ndarray]:
        """Per prompt, `S [N, N]` = GPM scores / tau."""
        if len(prompts) != len(pools):
            raise ValueError(f"reward {self.name!r}: {len(prompts)} prompts but {len(pools)} response lists")
        V = self.embeddings([p for p, rs in zip(prompts, pools) for _ in rs], [r for rs in pools for r in rs])
        gates = self.gates(prompts)
        per_prompt = np.split(V, np.cumsum([len(rs) for rs in pools])[:-1])
        return [gpm_scores(v, None if gates is None else gates[i], self.head.tau, self.head.normalize)
                for i, v in enumerate(per_prompt)]
