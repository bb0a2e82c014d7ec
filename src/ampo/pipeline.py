"""Self-play rounds: generate -> score -> embed -> select -> (references) -> (sampling policy's
log-probs) -> train -> evaluate.

Every stage writes its outputs atomically into the run folder and records a content key (a hash
of its inputs' keys and the config fields that change its numbers) in `manifest.json`. A rerun
skips stages whose key matches; a changed config field reruns exactly the stages downstream of it;
a killed run resumes: generation from its last finished shard, training from its last Trainer
checkpoint, everything else from the last finished stage.

`Pipeline` keeps the rounds and their scheduling. Every stage's key comes from
`ampo.stage_keys.RunKeys` (`self.keys`); the stage functions it calls are in `ampo.stages`; its
Curry-DPO training stages are in `ampo.curry_stages` and its evaluation stages in
`ampo.eval_stages` (mixins of `Pipeline`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .config import RunConfig, dump_config, seed_from
from .curry_stages import CurryStages
from .data import PoolRecord, atomic_dir, atomic_path, read_pool, write_json, write_rows
from .eval_stages import EvalStages
from .round_files import read_scored_pool
from .runner import Runner, fingerprints, sharded_map
from .stage_keys import RunKeys, aggregate, lora_seed, n_refs, train_dtype
from .stages import (embed_pool, load_round_policy, references, reference_logps, sample_rows,
                     select_pool, selected_logprobs)

log = logging.getLogger("ampo")


class Pipeline(CurryStages, EvalStages, Runner):
    """One run folder, its config and its stages.

    Under `accelerate launch` every process runs the pipeline: generation, scoring and embedding
    split their prompt shards across processes, training runs data-parallel through the Trainer,
    and the other (cheap) stages run on the main process while the others wait.
    """

    def __init__(self, config: RunConfig, progress: bool = True):
        keys = RunKeys(config)
        keys.split()  # a bad prompt file or `data.heldout` is refused before the run folder exists
        super().__init__(config.out, dump_config(config), progress, store=config.store)
        self.c = config
        self.keys = keys
        self._reward_fn = None
        self._embedder = None
        self._loaded: dict[str, Any] = {}  # policy key -> (model, tokenizer), one at a time

    # -- components, loaded once ------------------------------------------------------------

    def reward_fn(self):
        if self._reward_fn is None:
            from .rewards import load_reward

            self._reward_fn = load_reward(self.c.score.reward)
        return self._reward_fn

    def embedder(self, round_idx: int = 0):
        """The configured embedder; `policy` embeds with round `round_idx`'s starting policy."""
        from .embeddings import load_embedder

        if self.c.embed.embedder == "policy":
            return load_embedder("policy", policy=self.policy(round_idx), batch_size=self.c.embed.batch_size)
        if self._embedder is None:
            self._embedder = load_embedder(self.c.embed.embedder, batch_size=self.c.embed.batch_size)
        return self._embedder

    def policy(self, r: int):
        """(model, tokenizer) that round r starts from; round checkpoints are applied in order."""
        key = self.keys.policy(r)
        if key not in self._loaded:
            self._loaded.clear()  # keep one policy in memory
            self._loaded[key] = load_round_policy(self.c, [self.round_dir(i) / "checkpoint" for i in range(r)])
        return self._loaded[key]

    def policy_folder(self, r: int) -> str:
        """A model folder holding round r's starting policy, for engines that load from disk
        (vLLM): the initial policy's own folder, or the merged policy, saved by the main process
        (the others wait) and reused only while its `policy_key.txt` is this round's policy key
        (a changed earlier round makes it again). Every process calls it."""
        from .models import resolve_policy

        if r == 0:
            return resolve_policy(self.c.model.policy)
        folder, key = self.round_dir(r) / "policy", self.keys.policy(r)
        stamp = folder / "policy_key.txt"
        if self.dist.main and not (stamp.is_file() and stamp.read_text() == key):
            model, tok = self.policy(r)
            with atomic_dir(folder) as tmp:
                model.save_pretrained(str(tmp))
                tok.save_pretrained(str(tmp))
                (tmp / "policy_key.txt").write_text(key)
        self.dist.wait()
        return str(folder)

    def round_dir(self, r: int) -> Path:
        return self.dir / f"round-{r}"

    # -- prompts ----------------------------------------------------------------------------

    def split(self) -> None:
        """Record the train / held-out split of the prompts (`self.keys.split()`) in `split.json`."""
        path = self.dir / "split.json"
        split = self.keys.split()
        make = lambda: write_json(path, {"source": str(split.source), "train": split.train, "heldout": split.heldout})
        self.stage("split", self.keys.split_key(), make, [path])

    # -- the stages of a round --------------------------------------------------------------

    def generate(self, r: int) -> None:
        out = self.round_dir(r) / "pool.parquet"
        key = self.keys.generate(r)
        self.stage(f"round-{r}/generate", key, lambda: self._generate(r, key, out), [out], everyone=True)

    def _generate(self, r: int, key: str, out: Path) -> dict:
        from .backends import BACKENDS, make_generator
        from .generation import GenerationConfig

        prompts = self.keys.round_prompts(r)
        g = self.c.generate

        from_disk = BACKENDS[g.backend].loads_from_disk
        source = self.policy_folder(r) if from_disk else self.c.model.policy  # no merged copy for in-memory

        def work(s: int, shard: list[dict]) -> list[dict]:
            model, tok = (None, None) if from_disk else self.policy(r)
            cfg = GenerationConfig(n=g.n, temperature=g.temperature, top_p=g.top_p, max_new_tokens=g.max_new_tokens,
                                   prompts_per_batch=g.prompts_per_batch, share_prefill=g.share_prefill,
                                   batching=g.batching, batch_rows=g.batch_rows, dtype=g.dtype,
                                   seed=seed_from("generate", self.c.seed, r))
            gen = make_generator(g.backend, source, model=model, tokenizer=tok, config=cfg)
            rows = sample_rows(gen, shard, progress=self.progress)
            if self.c.data.gold_field:  # DNO's gold response: off-policy, scored and selectable with the rest
                from transformers import AutoTokenizer

                from .data import add_gold
                from .logprobs import response_ids

                tok = tok or AutoTokenizer.from_pretrained(source)
                rows = [add_gold(row, p["gold"], len(response_ids(tok, p["gold"], True)))
                        for row, p in zip(rows, shard)]
            return rows

        rows, info = sharded_map(prompts, g.shard_prompts, work, self.round_dir(r) / "generate.parts", key, self.dist)
        if self.dist.main:
            write_rows(out, rows)
        return info

    def score(self, r: int) -> None:
        out = self.round_dir(r) / "rewards.parquet"
        key = self.keys.score(r)

        def run() -> dict:
            from .rewards import score_records

            pool, _ = read_pool(self.round_dir(r) / "pool.parquet")
            work = lambda s, shard: [{"id": rec.id, **row}
                                     for rec, row in zip(shard, score_records(self.reward_fn(), shard, aggregate(self.c),
                                                                       self.c.score.unfinished_reward))]
            rows, info = sharded_map(pool, self.c.generate.shard_prompts, work,
                                     self.round_dir(r) / "score.parts", key, self.dist)
            if self.dist.main:
                write_rows(out, rows)
            return info

        self.stage(f"round-{r}/score", key, run, [out], everyone=True)

    def embed(self, r: int) -> None:
        out = self.round_dir(r) / "embeddings.npy"
        key = self.keys.embed(r)

        def run() -> dict:
            pool, _ = read_pool(self.round_dir(r) / "pool.parquet")

            def work(s: int, shard: list[PoolRecord]) -> list[dict]:
                return [{"id": rec.id, "embeddings": e.tolist()}
                        for rec, e in zip(shard, embed_pool(self.embedder(round_idx=r), shard))]

            rows, info = sharded_map(pool, self.c.generate.shard_prompts, work,
                                     self.round_dir(r) / "embed.parts", key, self.dist)
            if self.dist.main:
                emb = np.concatenate([np.asarray(row["embeddings"], dtype=np.float32) for row in rows])
                with atomic_path(out) as tmp:
                    with tmp.open("wb") as f:
                        np.save(f, emb)
            return info

        self.stage(f"round-{r}/embed", key, run, [out], everyone=True)

    def select(self, r: int) -> None:
        out = self.round_dir(r) / "selection.parquet"

        def run() -> dict:
            pool = self.scored_pool(r, with_selection=False)
            s = self.c.select
            sel = select_pool(s.strategy, s.k, pool, self.c.seed, progress=self.progress,
                              require_beats=s.require_beats, min_margin=s.min_margin)
            if sel.short.any():
                log.warning("%d prompts had fewer than k+1=%d candidates: took all of them",
                            int(sel.short.sum()), s.k + 1)
            write_rows(out, [{"id": p.id, "selected": idx.tolist(), "short": bool(sh)}
                             for p, idx, sh in zip(pool, sel.indices, sel.short)])
            return sel.counts

        self.stage(f"round-{r}/select", self.keys.select(r), run, [out])

    def scored_pool(self, r: int, with_selection: bool = True) -> list[PoolRecord]:
        """The round's pool with rewards, embeddings and (optionally) the selection joined in."""
        return read_scored_pool(self.round_dir(r), with_selection)

    def training_pool(self, r: int) -> list[PoolRecord]:
        """The selected groups the loss can train on: a prompt dropped by selection
        (`select.min_margin`) or left with fewer negatives than the loss needs is left out, and so
        is a group of one response even for a loss that takes one (grpo: its advantage is 0, so
        it would add no policy gradient, only forward passes, a KL pull with `kl > 0`, and a
        smaller step for the batch's other groups, since the loss is a mean over prompts)."""
        from .losses import LOSSES

        pool = self.scored_pool(r)
        need = max(LOSSES[self.c.train.loss].negatives, 1)
        keep = [rec for rec in pool if len(rec.selected) > need]
        if not keep:
            raise ValueError(f"round {r}: no prompt has enough selected responses to train on "
                             f"(select.min_margin={self.c.select.min_margin}, select.require_beats="
                             f"{self.c.select.require_beats})")
        if len(keep) < len(pool):
            log.info("round %d: training on %d of %d prompts (the others have too few selected responses)",
                     r, len(keep), len(pool))
        return keep

    def refs(self, r: int) -> None:
        """Reference log-probs of every selected response, once per round, one column per reference."""
        if not n_refs(self.c):
            return
        out = self.round_dir(r) / "ref_logps.parquet"

        def run():
            pool = self.training_pool(r)
            first = self.policy(0 if self.c.train.reference == "initial" else r)
            rows = reference_logps(references(self.c, first), pool, self.c.train.shared_prefix, self.progress,
                                   dtype=train_dtype(self.c))
            write_rows(out, [{"id": rec.id, "ref_logps": row} for rec, row in zip(pool, rows)])

        self.stage(f"round-{r}/refs", self.keys.refs(r), run, [out])

    def old(self, r: int) -> None:
        """The sampling policy's log-probs of every selected response (`LossSpec.old`: grpo), once
        per round: the round-start policy generated the round's pool. Skipped when the loss reads
        none, or when the round's first reference is the round-start policy: then the refs
        stage's first column is the same numbers and serves (`RunKeys.old_in_refs`)."""
        key = self.keys.old(r)
        if key is None:
            return
        out = self.round_dir(r) / "old_logps.parquet"

        def run():
            pool = self.training_pool(r)
            column = self.selected_logprobs(self.policy(r), pool)
            write_rows(out, [{"id": rec.id, "old_logps": col.tolist()} for rec, col in zip(pool, column)])

        self.stage(f"round-{r}/old", key, run, [out])

    def old_rows(self, r: int, ref_rows: list | None) -> list[list[float]] | None:
        """Round r's sampling-policy log-probs per training record (`[K]` each), in the order of
        `training_pool(r)`: the old stage's file, or the first reference column; None when the
        loss reads none."""
        if self.keys.old_in_refs(r):
            return [row[0] for row in ref_rows]
        if self.keys.old(r) is None:
            return None
        import pyarrow.parquet as pq

        return [row["old_logps"] for row in pq.read_table(self.round_dir(r) / "old_logps.parquet").to_pylist()]

    def selected_logprobs(self, policy, pool: list[PoolRecord]) -> list[np.ndarray]:
        """Summed log-probs of each record's selected responses under `policy` (model, tokenizer),
        in the training numerics (`train.dtype` resolved)."""
        return selected_logprobs(policy, pool, self.c.train.shared_prefix, self.progress, dtype=train_dtype(self.c))

    def train(self, r: int) -> None:
        out = self.round_dir(r) / "checkpoint"
        key = self.keys.train(r)
        work = self._train_pair_stages if self.c.train.curriculum == "pairs" else self._train
        self.stage(f"round-{r}/train", key, lambda: work(r, key, out),
                   [out, self.round_dir(r) / "train_log.json"], everyone=True)

    def _train(self, r: int, key: str, out: Path) -> dict:
        from .trainer import train_round

        pool = self.training_pool(r)
        ref_rows = None
        if n_refs(self.c):
            import pyarrow.parquet as pq

            ref_rows = [row["ref_logps"] for row in pq.read_table(self.round_dir(r) / "ref_logps.parquet").to_pylist()]
        old_rows = self.old_rows(r, ref_rows)
        model, tok = self.policy(r)
        self._loaded.clear()  # training modifies the model in place (LoRA) or its weights
        return train_round(self.c, model, tok, pool, ref_rows, self.round_dir(r) / "train", key, out,
                           progress=self.progress, lora_seed=lora_seed(self.c, r), old_rows=old_rows)

    # -- the whole run ----------------------------------------------------------------------

    def run(self) -> list[dict]:
        """All rounds, then the report. Returns each round's eval.json. Releases the run folder."""
        with self:
            return self._run()

    def _run(self) -> list[dict]:
        self.split()
        self.baseline()
        self.benchmarks(-1)
        results = []
        for r in range(self.c.rounds):
            for step in (self.generate, self.score, self.embed, self.select, self.refs, self.old, self.train,
                         self.benchmarks, self.evaluate):
                step(r)
            results.append(json.loads((self.round_dir(r) / "eval.json").read_text()))
        if self.dist.main:
            try:
                self.report()
            except OSError as e:  # e.g. a finished run in a read-only folder: the results stand
                log.warning("the report was not written: %s", e.strerror or e)
        return results

    def report(self) -> Path:
        """Write report.md and its plots unless they match every round's evaluation (main process
        only); return the report's path."""
        from .report import REPORT_FILES, write_run_report

        outputs = [self.dir / name for name in REPORT_FILES]
        key = self.keys.report()  # not `self.stage`: only the main process writes it, the others do not wait
        if not (self.manifest.done("report", key) and self._intact("report", outputs)):
            log.info("[report] running (key %s)", key)
            write_run_report(self.dir, self.c)
            self.manifest.mark("report", key, "done", outputs=fingerprints(self.dir, outputs))
        return outputs[0]

