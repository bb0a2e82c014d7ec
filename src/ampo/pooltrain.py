"""`ampo train`: train a policy on a pool the user already has (any layout `read_pool` accepts).

The stages are the ones a self-play round runs after scoring, through the same functions
(`ampo.stages`, `ampo.trainer.train_round`) and the same key functions (`ampo.stage_keys.PoolKeys`,
with the input file in place of a round's generation): embed (only when the strategy needs
embeddings and the pool has none) -> select -> reference log-probs (when the loss needs them) ->
the sampling policy's log-probs (grpo: the model being trained, at its start; the reference
column when there is one) -> train -> merge (with `--merge`). Each stage is keyed and atomic in
the output folder, so a killed `ampo train` resumes: finished stages are skipped and training
continues from its last Trainer checkpoint.

Output folder: `checkpoint/` (a model folder, or a PEFT adapter with the tokenizer, either of which
`from_pretrained` loads), `merged/` (with `--merge`), `train_log.json`, `selection.parquet`,
`embeddings.npy`, `ref_logps.parquet`, `old_logps.parquet`, `config.yaml`, `manifest.json`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .config import ConfigError, RunConfig, dump_config
from .data import PoolRecord, atomic_dir, atomic_path, read_pool, write_rows
from .runner import Runner
from .stage_keys import PoolKeys, lora_seed, n_refs, train_dtype
from .stages import embed_pool, load_round_policy, reference_logps, references, select_pool, selected_logprobs

log = logging.getLogger("ampo")


class PoolTraining(Runner):
    """Train `config`'s policy on the pool file (or `save_to_disk` folder) `source` into `out`."""

    def __init__(self, config: RunConfig, source: str | Path, out: str | Path, merge: bool = False,
                 progress: bool = True):
        if config.train.curriculum == "pairs":  # its stages live in the pipeline's round folders
            raise ConfigError("config 'train.curriculum': 'pairs' (Curry-DPO stages) runs in `ampo run` only; "
                              "`ampo train` takes none or groups")
        for name in ("require_beats", "min_margin"):  # they can drop or shorten groups: the pipeline handles that
            if getattr(config.select, name) is not None:
                raise ConfigError(f"config 'select.{name}' runs in `ampo run` only; `ampo train` selects without it")
        super().__init__(out, dump_config(config), progress)
        self.c = config
        self.source = Path(source)
        self.merge_adapter = merge
        self.pool = self._read_pool()
        self.keys = PoolKeys(config, self.source, has_embeddings=all(r.embeddings is not None for r in self.pool))

    def _read_pool(self) -> list[PoolRecord]:
        from .losses import LOSSES

        spec = LOSSES[self.c.train.loss]
        why = ("`ampo train` takes each group's positive by reward"
               + (f" and loss '{self.c.train.loss}' weighs by them" if spec.uses_rewards else "")
               + "; add them with `ampo score` first")
        # two responses at least, even for a loss that takes one (grpo): one response has no
        # advantage, so no signal to train on (as the pipeline's `training_pool`)
        pool, layout = read_pool(self.source, require=("rewards",), min_responses=max(spec.negatives, 1) + 1,
                                 why=why)
        if self.dist.main:
            log.info("read %s (%s layout): %d prompts, %d responses", self.source, layout, len(pool),
                     sum(len(r.responses) for r in pool))
        return pool

    # -- stages ----------------------------------------------------------------------------

    def run(self) -> dict:
        """Every stage; returns a summary (groups, steps, first and last logged loss, paths)."""
        with self:
            for step in (self.embed, self.select, self.refs, self.old, self.train, self.merge):
                step()
            return self.summary()

    def embed(self) -> None:
        key = self.keys.embed()
        out = self.dir / "embeddings.npy"
        if key is None:
            return

        def run():
            from .embeddings import load_embedder

            e = self.c.embed
            policy = load_round_policy(self.c, []) if e.embedder == "policy" else None
            emb = np.concatenate(embed_pool(load_embedder(e.embedder, policy=policy, batch_size=e.batch_size),
                                            self.pool))
            with atomic_path(out) as tmp:
                with tmp.open("wb") as f:
                    np.save(f, emb)

        self.stage("embed", key, run, [out])
        self.dist.wait()
        emb, offset = np.load(out), 0
        for rec in self.pool:
            rec.embeddings = emb[offset: offset + len(rec.responses)]
            offset += len(rec.responses)

    def select(self) -> None:
        out = self.dir / "selection.parquet"
        s = self.c.select

        def run():
            sel = select_pool(s.strategy, s.k, self.pool, self.c.seed, progress=self.progress)
            if sel.short.any():
                log.warning("%d prompts had at most k+1=%d responses: took all of them", int(sel.short.sum()), s.k + 1)
            write_rows(out, [{"id": rec.id, "selected": idx.tolist(), "short": bool(short)}
                             for rec, idx, short in zip(self.pool, sel.indices, sel.short)])

        self.stage("select", self.keys.select(), run, [out])
        import pyarrow.parquet as pq

        for rec, row in zip(self.pool, pq.read_table(out).to_pylist(), strict=True):
            rec.selected = row["selected"]

    def refs(self) -> None:
        if not n_refs(self.c):
            return
        out = self.dir / "ref_logps.parquet"

        def run():
            rows = reference_logps(references(self.c, load_round_policy(self.c, [])), self.pool,
                                   self.c.train.shared_prefix, self.progress, dtype=train_dtype(self.c))
            write_rows(out, [{"id": rec.id, "ref_logps": row} for rec, row in zip(self.pool, rows)])

        self.stage("refs", self.keys.refs(), run, [out])

    def old(self) -> None:
        """The sampling policy's log-probs of the selected responses (`LossSpec.old`: grpo): the
        model being trained, at its start (`model.policy`). With a reference pass (grpo with
        `kl > 0`) the refs' first column is the same policy and serves instead."""
        key = self.keys.old()
        if key is None:
            return
        out = self.dir / "old_logps.parquet"

        def run():
            column = selected_logprobs(load_round_policy(self.c, []), self.pool, self.c.train.shared_prefix,
                                       self.progress, dtype=train_dtype(self.c))
            write_rows(out, [{"id": rec.id, "old_logps": col.tolist()} for rec, col in zip(self.pool, column)])

        self.stage("old", key, run, [out])

    def old_rows(self, ref_rows: list | None) -> list[list[float]] | None:
        """The sampling policy's log-probs per record (`[K]`), or None when the loss reads none."""
        if self.keys.old_in_refs():
            return [row[0] for row in ref_rows]
        if self.keys.old() is None:
            return None
        import pyarrow.parquet as pq

        return [row["old_logps"] for row in pq.read_table(self.dir / "old_logps.parquet").to_pylist()]

    def train(self) -> None:
        from .trainer import train_round

        out, key = self.dir / "checkpoint", self.keys.train()

        def run():
            ref_rows = None
            if n_refs(self.c):
                import pyarrow.parquet as pq

                ref_rows = [row["ref_logps"] for row in pq.read_table(self.dir / "ref_logps.parquet").to_pylist()]
            model, tok = load_round_policy(self.c, [])
            return train_round(self.c, model, tok, self.pool, ref_rows, self.dir / "train", key, out,
                               progress=self.progress, lora_seed=lora_seed(self.c, 0), save_tokenizer=True,
                               old_rows=self.old_rows(ref_rows))

        self.stage("train", key, run, [out, self.dir / "train_log.json"], everyone=True)

    def merge(self) -> None:
        """With `--merge` and LoRA: the base policy with the adapter merged in, as a model folder."""
        if not self.merge_adapter:
            return
        if not self.c.model.lora:
            log.info("--merge: a full fine-tune's checkpoint/ is already a whole model")
            return
        out = self.dir / "merged"

        def run():
            model, tok = load_round_policy(self.c, [self.dir / "checkpoint"])
            with atomic_dir(out) as tmp:
                model.save_pretrained(str(tmp), safe_serialization=True)
                tok.save_pretrained(str(tmp))

        self.stage("merge", self.keys.merge(), run, [out])

    def summary(self) -> dict:
        history = json.loads((self.dir / "train_log.json").read_text())
        losses = [e["loss"] for e in history if "loss" in e]
        steps = max((e.get("step", 0) for e in history), default=0)
        merged = self.dir / "merged"
        return {"groups": len(self.pool), "responses": sum(len(r.selected) for r in self.pool), "steps": steps,
                "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
                "checkpoint": str(self.dir / "checkpoint"), "adapter": self.c.model.lora,
                "merged": str(merged) if self.merge_adapter and self.c.model.lora else None}
