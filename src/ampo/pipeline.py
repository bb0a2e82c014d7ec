"""Self-play rounds: generate -> score -> embed -> select -> (references) -> train -> evaluate.

Every stage writes its outputs atomically into the run folder and records a content key (a hash
of its inputs' keys and the config fields that change its numbers) in `manifest.json`. A rerun
skips stages whose key matches; a changed config field reruns exactly the stages downstream of it;
a killed run resumes: generation from its last finished shard, training from its last Trainer
checkpoint, everything else from the last finished stage.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__
from .config import RunConfig, config_key, dump_config, seed_from
from .data import (PoolRecord, atomic_dir, atomic_path, read_pool, read_prompt_rows,
                   write_json, write_rows)

log = logging.getLogger("ampo")

BUILTIN_PROMPTS = Path(__file__).parent / "recipes" / "prompts.jsonl"
# `data.prompts` names for the bundled prompt files
BUILTIN_PROMPT_SETS = {"builtin": BUILTIN_PROMPTS,
                       "builtin-ifeval": Path(__file__).parent / "recipes" / "ifeval_prompts.jsonl"}


class Manifest:
    """`manifest.json`: per stage its key, status, timing and outputs, written after every change."""

    def __init__(self, path: Path, write: bool = True):
        self.path = path
        self.write = write  # only the main process writes
        self.data = self._read(path)
        self.data["versions"] = _versions()

    @staticmethod
    def _read(path: Path) -> dict:
        """The manifest's content; a damaged one is named and counts as empty (every stage is redone)."""
        if not path.exists():
            return {"stages": {}}
        try:
            data = json.loads(path.read_bytes())
        except (ValueError, RecursionError):
            data = None
        if not (isinstance(data, dict) and isinstance(data.get("stages"), dict)
                and all(isinstance(e, dict) and {"key", "status"} <= e.keys() for e in data["stages"].values())):
            log.warning("%s is damaged: redoing every stage", path)
            return {"stages": {}}
        return data

    def done(self, stage: str, key: str) -> bool:
        entry = self.data["stages"].get(stage)
        return bool(entry) and entry["key"] == key and entry["status"] == "done"

    def mark(self, stage: str, key: str, status: str, **info: Any) -> None:
        self.data["stages"][stage] = {"key": key, "status": status, **info}
        if self.write:
            write_json(self.path, self.data)


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"ampo": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


class RunInUseError(ValueError):
    """Another process holds the run folder's lock."""


class RunLock:
    """An exclusive lock on a run folder (`flock` on `RUN/.lock`) for as long as a process uses it
    (also taken by `ampo evaluate` on its output folder: `what` and `option` name them).

    Two runs on one folder would overwrite each other's manifest and files, so the second is
    refused. The kernel drops the lock when its holder exits, even by SIGKILL, so a killed run
    never blocks the next one. In a folder this process cannot write, an existing lock file is
    locked through a read-only handle; without one there is nothing to lock (and nothing can be
    written).
    """

    def __init__(self, folder: Path, what: str = "run folder", option: str = "'out'"):
        path = folder / ".lock"
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            writable = True
        except OSError:
            try:
                self.fd, writable = os.open(path, os.O_RDONLY), False
            except OSError:
                self.fd = None
                return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip()
            os.close(self.fd)
            raise RunInUseError(f"{what} {folder} is in use by another ampo process"
                                f"{f' (pid {holder})' if holder else ''}; wait for it to end or choose "
                                f"another {option}") from None
        if writable:  # the holder's pid, for the message above
            os.ftruncate(self.fd, 0)
            os.write(self.fd, str(os.getpid()).encode())

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only handle drops the lock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Dist:
    """This process's rank among those started by `accelerate launch` or `torchrun` (one process
    otherwise). Without CUDA the processes talk over gloo."""

    def __init__(self):
        import torch
        from accelerate import PartialState

        self._state = PartialState(cpu=not torch.cuda.is_available())
        self.rank, self.world = self._state.process_index, self._state.num_processes

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wait(self) -> None:
        if self.world > 1:
            self._state.wait_for_everyone()

    def share(self, value: Any) -> Any:
        """The main process's `value`, on every process (so that all take the same branch)."""
        if self.world > 1:
            from accelerate.utils import broadcast_object_list

            value = broadcast_object_list([value])[0]
        return value


class Pipeline:
    """One run folder, its config and its stages.

    Under `accelerate launch` every process runs the pipeline: generation, scoring and embedding
    split their prompt shards across processes, training runs data-parallel through the Trainer,
    and the other (cheap) stages run on the main process while the others wait.
    """

    def __init__(self, config: RunConfig, progress: bool = True):
        self.c = config
        self.dir = Path(config.out)
        self.dist = Dist()
        self.progress = progress and self.dist.main
        self._lock = None
        if self.dist.main:  # one process per run takes the lock; the others are its helpers
            if not self.dir.is_dir():
                self.dir.mkdir(parents=True)
            self._lock = RunLock(self.dir)
            _write_if_changed(self.dir / "config.yaml", dump_config(config))
        self.dist.wait()
        self.manifest = Manifest(self.dir / "manifest.json", write=self.dist.main)
        self.dist.wait()  # every process reads the manifest before any stage changes it
        self._reward_fn = None
        self._embedder = None
        self._loaded: dict[str, Any] = {}  # policy key -> (model, tokenizer), one at a time
        self._split: dict | None = None

    def close(self) -> None:
        """Release the run folder for the next process."""
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- stage bookkeeping ------------------------------------------------------------------

    def stage(self, name: str, key: str, fn: Callable[[], Any], outputs: list[Path], everyone: bool = False) -> None:
        """Run `fn` unless this stage already finished with the same key and its outputs are the
        files it wrote (same size and sha256 as recorded in the manifest when it finished).

        `everyone`: every process runs `fn` (sharded or data-parallel work); otherwise only the
        main one does. A dict returned by `fn` is recorded in the manifest entry.
        """
        up_to_date = (self.manifest.done(name, key) and self._intact(name, outputs)) if self.dist.main else None
        if self.dist.share(up_to_date):
            if self.dist.main:
                log.info("[%s] up to date (key %s)", name, key)
            return
        if self.dist.main:
            log.info("[%s] running (key %s)", name, key)
        self.manifest.mark(name, key, "running")
        t0 = time.perf_counter()
        info = fn() if (everyone or self.dist.main) else None
        self.dist.wait()
        files = fingerprints(self.dir, outputs) if self.dist.main else {}
        self.manifest.mark(name, key, "done", seconds=round(time.perf_counter() - t0, 2),
                           finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"), **(info or {}), outputs=files)

    def _intact(self, name: str, outputs: list[Path]) -> bool:
        """Whether a finished stage's outputs still match their manifest record; if not, say which
        file does not (the stage then runs again)."""
        recorded = self.manifest.data["stages"][name].get("outputs")
        if recorded is None:
            log.warning("[%s] the manifest has no record of its outputs (an older ampo made it): redoing it", name)
            return False
        found = fingerprints(self.dir, outputs)
        for rel in sorted(recorded.keys() | found.keys()):
            if recorded.get(rel) != found.get(rel):
                problem = ("is missing" if rel not in found else "was not written by this stage" if rel not in recorded
                           else "does not match the size and sha256 recorded when the stage finished")
                log.warning("[%s] %s %s: redoing the stage", name, self.dir / rel, problem)
                return False
        return True

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

    def policy_key(self, r: int) -> str:
        """Key of the policy that round r starts from (the initial policy for r = 0)."""
        if r == 0:
            return config_key("policy", self.c.model.policy, self.c.model.dtype)
        return self.train_key(r - 1)

    def policy(self, r: int):
        """(model, tokenizer) that round r starts from; round checkpoints are applied in order."""
        key = self.policy_key(r)
        if key not in self._loaded:
            self._loaded.clear()  # keep one policy in memory
            self._loaded[key] = load_round_policy(self.c, [self.round_dir(i) / "checkpoint" for i in range(r)])
        return self._loaded[key]

    def policy_folder(self, r: int) -> str:
        """A model folder holding round r's starting policy, for engines that load from disk
        (vLLM): the initial policy's own folder, or the merged policy saved once per round."""
        from .models import resolve_policy

        if r == 0:
            return resolve_policy(self.c.model.policy)
        folder = self.round_dir(r) / "policy"
        if not (folder / "config.json").exists():
            model, tok = self.policy(r)
            with atomic_dir(folder) as tmp:
                model.save_pretrained(str(tmp))
                tok.save_pretrained(str(tmp))
        return str(folder)

    def round_dir(self, r: int) -> Path:
        return self.dir / f"round-{r}"

    # -- prompts ----------------------------------------------------------------------------

    def split(self) -> dict[str, list]:
        """Train / held-out split of the prompts, made once and recorded in `split.json`."""
        if self._split is None:
            self._split = self._make_split()
        return self._split

    def _make_split(self) -> dict[str, list]:
        path = self.dir / "split.json"
        source = BUILTIN_PROMPT_SETS.get(self.c.data.prompts) or Path(self.c.data.prompts)
        rows = read_prompt_rows(source, self.c.data.gold_field)
        prompts = [(row["id"], row["prompt"]) for row in rows]
        metas = [row.get("meta") for row in rows]
        golds = [row["gold"] for row in rows] if self.c.data.gold_field else []
        key = config_key("split", [p for _, p in prompts], [i for i, _ in prompts],
                         self.c.data.heldout, self.c.data.split_seed, *([metas] if any(metas) else []),
                         *([golds] if golds else []))

        def make():
            if self.c.data.heldout >= len(prompts):
                raise ValueError(f"data.heldout={self.c.data.heldout} leaves no training prompts "
                                 f"({len(prompts)} prompts in {source})")
            order = np.random.default_rng(self.c.data.split_seed).permutation(len(prompts))
            held = sorted(order[: self.c.data.heldout].tolist())
            train = sorted(order[self.c.data.heldout:].tolist())
            write_json(path, {"source": str(source), "train": [rows[i] for i in train],
                              "heldout": [rows[i] for i in held]})

        self.stage("split", key, make, [path])
        self._split_key = key
        return json.loads(path.read_text())

    def round_prompts(self, r: int) -> list[dict]:
        """The train prompts of round r: all of them, or a fresh rotating window of `train_prompts`."""
        train = self.split()["train"]
        n = self.c.data.train_prompts
        if n <= 0 or n >= len(train):
            return train
        start = (r * n) % len(train)
        return [train[(start + i) % len(train)] for i in range(n)]

    # -- the stages of a round --------------------------------------------------------------

    def generate_key(self, r: int) -> str:
        from .sampling import SAMPLER

        prompts = self.round_prompts(r)
        # all of it: batch sizes do not choose a response's random stream, but they can move its
        # logits by rounding, and with them (rarely) a sampled token
        g = dataclasses.asdict(self.c.generate)
        g["dtype"] = generation_dtype(g["dtype"])  # the dtype "auto" resolves to on this machine
        gold = [[p["gold"] for p in prompts]] if self.c.data.gold_field else []
        return config_key("generate", self.policy_key(r), [p["id"] for p in prompts], g, self.c.seed, r, SAMPLER,
                          *gold)

    def generate(self, r: int) -> None:
        out = self.round_dir(r) / "pool.parquet"
        key = self.generate_key(r)
        self.stage(f"round-{r}/generate", key, lambda: self._generate(r, key, out), [out], everyone=True)

    def _generate(self, r: int, key: str, out: Path) -> dict:
        from .generation import GenerationConfig, make_generator

        prompts = self.round_prompts(r)
        g = self.c.generate

        def work(s: int, shard: list[dict]) -> list[dict]:
            model, tok = (None, None) if g.backend == "vllm" else self.policy(r)
            cfg = GenerationConfig(n=g.n, temperature=g.temperature, top_p=g.top_p, max_new_tokens=g.max_new_tokens,
                                   prompts_per_batch=g.prompts_per_batch, share_prefill=g.share_prefill,
                                   batching=g.batching, batch_rows=g.batch_rows, dtype=g.dtype,
                                   seed=seed_from("generate", self.c.seed, r))
            gen = make_generator(g.backend, self.policy_folder(r), model=model, tokenizer=tok, config=cfg)
            # each response's random stream follows from (seed, round, prompt id, sample index)
            samples = gen.generate([p["prompt"] for p in shard], progress=self.progress, keys=[p["id"] for p in shard])
            rows = [{"id": p["id"], "prompt": p["prompt"], "responses": [x.text for x in ss],
                     "finished": [x.finished for x in ss], "n_tokens": [x.n_tokens for x in ss],
                     **({"meta": p["meta"]} if "meta" in p else {})}
                    for p, ss in zip(shard, samples)]
            if self.c.data.gold_field:  # DNO's gold response: off-policy, scored and selectable with the rest
                from transformers import AutoTokenizer

                from .data import add_gold
                from .logprobs import response_ids

                tok = tok or AutoTokenizer.from_pretrained(self.policy_folder(r))
                rows = [add_gold(row, p["gold"], len(response_ids(tok, p["gold"], True)))
                        for row, p in zip(rows, shard)]
            return rows

        rows, info = sharded_map(prompts, g.shard_prompts, work, self.round_dir(r) / "generate.parts", key, self.dist)
        if self.dist.main:
            write_rows(out, rows)
        return info

    def aggregate(self) -> str:
        """`score.aggregate` with "auto" resolved for the configured scorer."""
        from .rewards import resolve_aggregate, reward_kind

        return resolve_aggregate(self.c.score.aggregate, reward_kind(self.c.score.reward))

    def score_key(self, r: int) -> str:
        how = self.aggregate()  # keyed only when it is not the plain reward, so older runs keep their keys
        return config_key("score", self.generate_key(r), self.c.score.reward, *([how] if how != "reward" else []))

    def score(self, r: int) -> None:
        out = self.round_dir(r) / "rewards.parquet"
        key = self.score_key(r)

        def run() -> dict:
            from .rewards import score_records

            pool, _ = read_pool(self.round_dir(r) / "pool.parquet")
            work = lambda s, shard: [{"id": rec.id, **row}
                                     for rec, row in zip(shard, score_records(self.reward_fn(), shard, self.aggregate()))]
            rows, info = sharded_map(pool, self.c.generate.shard_prompts, work,
                                     self.round_dir(r) / "score.parts", key, self.dist)
            if self.dist.main:
                write_rows(out, rows)
            return info

        self.stage(f"round-{r}/score", key, run, [out], everyone=True)

    def embed_key(self, r: int) -> str:
        policy = self.policy_key(r) if self.c.embed.embedder == "policy" else None
        return config_key("embed", self.generate_key(r), self.c.embed.embedder, policy)

    def embed(self, r: int) -> None:
        out = self.round_dir(r) / "embeddings.npy"
        key = self.embed_key(r)

        def run() -> dict:
            pool, _ = read_pool(self.round_dir(r) / "pool.parquet")

            def work(s: int, shard: list[PoolRecord]) -> list[dict]:
                emb = self.embedder(round_idx=r)([t for rec in shard for t in rec.responses])
                return [{"id": rec.id, "embeddings": e.tolist()}
                        for rec, e in zip(shard, np.split(emb, np.cumsum([len(x.responses) for x in shard])[:-1]))]

            rows, info = sharded_map(pool, self.c.generate.shard_prompts, work,
                                     self.round_dir(r) / "embed.parts", key, self.dist)
            if self.dist.main:
                emb = np.concatenate([np.asarray(row["embeddings"], dtype=np.float32) for row in rows])
                with atomic_path(out) as tmp:
                    with tmp.open("wb") as f:
                        np.save(f, emb)
            return info

        self.stage(f"round-{r}/embed", key, run, [out], everyone=True)

    def select_key(self, r: int) -> str:
        s = dataclasses.asdict(self.c.select)
        for option in ("require_beats", "min_margin"):  # keyed only when set, so older runs keep their keys
            if s[option] is None:
                del s[option]
        return config_key("select", self.score_key(r), self.embed_key(r), s, self.c.seed)

    def select(self, r: int) -> None:
        out = self.round_dir(r) / "selection.parquet"

        def run() -> dict:
            from .selection import select_groups

            pool = self.scored_pool(r, with_selection=False)
            s = self.c.select
            sel = select_groups(s.strategy, [np.asarray(p.rewards) for p in pool], [p.embeddings for p in pool],
                                s.k, seed=self.c.seed, prefs=[p.extra.get("pref_logits") for p in pool],
                                require_beats=s.require_beats, min_margin=s.min_margin, progress=self.progress)
            if sel.short.any():
                log.warning("%d prompts had fewer than k+1=%d candidates: took all of them",
                            int(sel.short.sum()), s.k + 1)
            write_rows(out, [{"id": p.id, "selected": idx.tolist(), "short": bool(sh)}
                             for p, idx, sh in zip(pool, sel.indices, sel.short)])
            return sel.counts

        self.stage(f"round-{r}/select", self.select_key(r), run, [out])

    def scored_pool(self, r: int, with_selection: bool = True) -> list[PoolRecord]:
        """The round's pool with rewards, embeddings and (optionally) the selection joined in."""
        import pyarrow.parquet as pq

        rd = self.round_dir(r)
        pool, _ = read_pool(rd / "pool.parquet")
        rewards = pq.read_table(rd / "rewards.parquet").to_pylist()
        emb = np.load(rd / "embeddings.npy")
        offset = 0
        for rec, row in zip(pool, rewards, strict=True):
            n = len(rec.responses)
            rec.rewards = row["rewards"]
            if row.get("pref_logits") is not None:
                rec.extra["pref_logits"] = np.asarray(row["pref_logits"], dtype=np.float64)
            rec.embeddings = emb[offset: offset + n]
            offset += n
        if with_selection:
            for rec, row in zip(pool, pq.read_table(rd / "selection.parquet").to_pylist(), strict=True):
                rec.selected = row["selected"]
        return pool

    def training_pool(self, r: int) -> list[PoolRecord]:
        """The selected groups the loss can train on: a prompt dropped by selection
        (`select.min_margin`) or left with fewer negatives than the loss needs is left out."""
        from .losses import LOSSES

        pool = self.scored_pool(r)
        keep = [rec for rec in pool if len(rec.selected) > LOSSES[self.c.train.loss].negatives]
        if not keep:
            raise ValueError(f"round {r}: no prompt has enough selected responses to train on "
                             f"(select.min_margin={self.c.select.min_margin}, select.require_beats="
                             f"{self.c.select.require_beats})")
        if len(keep) < len(pool):
            log.info("round %d: training on %d of %d prompts (the others have too few selected responses)",
                     r, len(keep), len(pool))
        return keep

    def n_refs(self) -> int:
        from .losses import LOSSES

        return (1 + len(self.c.train.extra_references)) if LOSSES[self.c.train.loss].refs else 0

    def refs_key(self, r: int) -> str | None:
        if not self.n_refs():
            return None
        first = self.policy_key(0 if self.c.train.reference == "initial" else r)
        return config_key("refs", self.select_key(r), first, self.c.train.extra_references)

    def refs(self, r: int) -> None:
        """Reference log-probs of every selected response, once per round, one column per reference."""
        if not self.n_refs():
            return
        out = self.round_dir(r) / "ref_logps.parquet"

        def run():
            from .models import load_policy

            pool = self.training_pool(r)
            columns = [self.selected_logprobs(self.policy(0 if self.c.train.reference == "initial" else r), pool)]
            for path in self.c.train.extra_references:
                model, tok = load_policy(path, dtype=self.c.model.dtype,
                                         trust_remote_code=self.c.model.trust_remote_code)
                columns.append(self.selected_logprobs((model, tok), pool))
                del model
            write_rows(out, [{"id": rec.id, "ref_logps": [col[i].tolist() for col in columns]}
                             for i, rec in enumerate(pool)])

        self.stage(f"round-{r}/refs", self.refs_key(r), run, [out])

    def selected_logprobs(self, policy, pool: list[PoolRecord]) -> list[np.ndarray]:
        """Summed log-probs of each record's selected responses under `policy` (model, tokenizer)."""
        from .logprobs import response_logprobs

        prompts = [rec.prompt for rec in pool]
        responses = [[rec.responses[i] for i in rec.selected] for rec in pool]
        finished = [[rec.finished[i] if rec.finished else True for i in rec.selected] for rec in pool]
        return response_logprobs(*policy, prompts, responses, finished, progress=self.progress,
                                 shared_prefix=self.c.train.shared_prefix)[0]

    def train_key(self, r: int) -> str:
        t = dataclasses.asdict(self.c.train)
        for cosmetic in ("save_steps", "report_to", "logprob_chunk", "gradient_checkpointing", "shared_prefix"):
            t.pop(cosmetic)
        m = dataclasses.asdict(self.c.model)
        lora_seed = self.lora_seed(r) if self.c.model.lora else None
        return config_key("train", self.policy_key(r), self.select_key(r), self.refs_key(r), t, m, self.c.seed,
                          lora_seed)

    def lora_seed(self, r: int) -> int:
        """The seed of round r's new LoRA adapter: each round draws different initial weights."""
        return seed_from("lora", self.c.seed, r)

    def train(self, r: int) -> None:
        out = self.round_dir(r) / "checkpoint"
        key = self.train_key(r)
        work = self._train_pair_stages if self.c.train.curriculum == "pairs" else self._train
        self.stage(f"round-{r}/train", key, lambda: work(r, key, out),
                   [out, self.round_dir(r) / "train_log.json"], everyone=True)

    def _train(self, r: int, key: str, out: Path) -> None:
        from .trainer import train_round

        pool = self.training_pool(r)
        ref_rows = None
        if self.n_refs():
            import pyarrow.parquet as pq

            ref_rows = [row["ref_logps"] for row in pq.read_table(self.round_dir(r) / "ref_logps.parquet").to_pylist()]
        model, tok = self.policy(r)
        self._loaded.clear()  # training modifies the model in place (LoRA) or its weights
        train_round(self.c, model, tok, pool, ref_rows, self.round_dir(r) / "train", key, out, progress=self.progress,
                    lora_seed=self.lora_seed(r))

    # -- Curry-DPO stages (`train.curriculum: pairs`) ---------------------------------------

    def _train_pair_stages(self, r: int, key: str, out: Path) -> dict:
        """Train round r in stages 1..n (n = the most negatives of any group), each a resumable
        stage `round-r/train-s{t}` (with `round-r/refs-s{t}` before it for t >= 2), then copy the
        last stage's checkpoint to `out` and join the stages' logs (steps counted on)."""
        from .curriculum import stage_count

        n = stage_count([rec.selected for rec in self.training_pool(r)])
        pairs = []
        for t in range(1, n + 1):
            self.stage_refs(r, t)
            d, stage_key = self.stage_dir(r, t), config_key("train-stage", key, t)
            self.stage(f"round-{r}/train-s{t}", stage_key, lambda: self._train_stage(r, t, stage_key),
                       [d / "checkpoint", d / "train_log.json"], everyone=True)
            pairs.append(self.manifest.data["stages"][f"round-{r}/train-s{t}"].get("pairs"))
        if self.dist.main:
            with atomic_dir(out) as tmp:
                shutil.copytree(self.stage_dir(r, n) / "checkpoint", tmp, dirs_exist_ok=True)
            history, offset = [], 0
            for t in range(1, n + 1):
                stage_log = json.loads((self.stage_dir(r, t) / "train_log.json").read_text())
                history += [{**h, "stage": t, **({"step": h["step"] + offset} if "step" in h else {})}
                            for h in stage_log]
                offset += max((h.get("step", 0) for h in stage_log), default=0)
            write_json(self.round_dir(r) / "train_log.json", history)
        return {"stages": n, "pairs_per_stage": pairs}

    def stage_dir(self, r: int, t: int) -> Path:
        return self.round_dir(r) / f"stage-{t}"

    def stage_pool(self, r: int, t: int) -> tuple[list[PoolRecord], list[tuple[int, int]]]:
        """Round r's pool narrowed to stage t: each record's selection becomes its t-th easiest
        pair (positive, negative) and records with fewer negatives are left out. Also returns the
        `(record index, negative slot)` of each pair (`ampo.curriculum.stage_pairs`)."""
        from .curriculum import stage_pairs

        pool = self.training_pool(r)  # in the order of the round's ref_logps.parquet
        picked = stage_pairs([[rec.rewards[i] for i in rec.selected] for rec in pool], t)
        for i, slot in picked:
            pool[i].selected = [pool[i].selected[0], pool[i].selected[slot]]
        return [pool[i] for i, _ in picked], picked

    def stage_refs(self, r: int, t: int) -> None:
        """Reference log-probs of stage t's pairs under the policy after stage t - 1 (t >= 2; stage
        1 reads the round's `ref_logps.parquet`)."""
        if t == 1 or not self.n_refs():
            return
        out = self.stage_dir(r, t) / "ref_logps.parquet"

        def run():
            pool, _ = self.stage_pool(r, t)
            self._loaded.clear()  # one policy in memory
            previous = load_round_policy(self.c, [self.round_dir(i) / "checkpoint" for i in range(r)]
                                         + [self.stage_dir(r, t - 1) / "checkpoint"])
            column = self.selected_logprobs(previous, pool)
            write_rows(out, [{"id": rec.id, "ref_logps": [col.tolist()]} for rec, col in zip(pool, column)])

        self.stage(f"round-{r}/refs-s{t}", config_key("refs-stage", self.train_key(r), t), run, [out])

    def _train_stage(self, r: int, t: int, key: str) -> dict:
        """Stage t: train on its pairs, starting from the policy after stage t - 1 (LoRA: the same
        adapter trained further), into `stage-t/checkpoint`."""
        import pyarrow.parquet as pq

        from .trainer import train_round

        pool, picked = self.stage_pool(r, t)
        ref_rows = None
        if self.n_refs() and t == 1:
            rows = pq.read_table(self.round_dir(r) / "ref_logps.parquet").to_pylist()
            ref_rows = [[[col[0], col[slot]] for col in rows[i]["ref_logps"]] for i, slot in picked]
        elif self.n_refs():
            rows = pq.read_table(self.stage_dir(r, t) / "ref_logps.parquet").to_pylist()
            ref_rows = [row["ref_logps"] for row in rows]
        previous = self.stage_dir(r, t - 1) / "checkpoint" if t > 1 else None
        if previous is not None and not self.c.model.lora:
            self._loaded.clear()
            model, tok = load_round_policy(self.c, [previous])  # a full fine-tune's complete model
        else:
            model, tok = self.policy(r)
            self._loaded.clear()  # training changes the model in place
        d = self.stage_dir(r, t)
        train_round(self.c, model, tok, pool, ref_rows, d / "train", key, d / "checkpoint", progress=self.progress,
                    lora_seed=self.lora_seed(r), adapter=previous if self.c.model.lora else None)
        return {"pairs": len(pool)}

    def eval_options(self) -> dict:
        """The `eval` options of the held-out evaluation (the benchmark ones key their own stages)."""
        return {k: v for k, v in dataclasses.asdict(self.c.eval).items() if not k.startswith("benchmark")}

    def eval_key(self, r: int) -> str:
        benchmarks = [self.benchmark_key(name, i) for name in self.c.eval.benchmarks for i in (-1, r)]
        return config_key("eval", self.train_key(r), self.baseline_key(), self.eval_options(), *benchmarks)

    def baseline_key(self) -> str:
        from .sampling import SAMPLER

        self.split()
        return config_key("baseline", self.policy_key(0), self._split_key, self.c.score.reward,
                          self.c.embed.embedder, self.eval_options(), self.c.seed, SAMPLER)

    def benchmark_key(self, name: str, r: int) -> str:
        """Key of benchmark `name` on the policy after round r (the initial policy for r = -1)."""
        e = self.c.eval
        policy = self.policy_key(0) if r < 0 else self.train_key(r)
        return config_key("benchmark", name, policy, e.benchmark_max_new_tokens, e.benchmark_limit,
                          e.benchmark_prompts_per_batch, self.c.seed)

    def benchmark_dir(self, name: str, r: int) -> Path:
        return (self.dir / "baseline" if r < 0 else self.round_dir(r)) / name

    def benchmarks(self, r: int) -> None:
        """Greedy runs of `eval.benchmarks` (IFEval, IFBench) on the policy after round r, or on the
        initial policy (r = -1, once per run): metrics.json, results.jsonl, responses.jsonl."""
        from .ifeval.evaluate import evaluate_policy

        e = self.c.eval
        for name in e.benchmarks:
            out, key = self.benchmark_dir(name, r), self.benchmark_key(name, r)
            stage = f"baseline/{name}" if r < 0 else f"round-{r}/{name}"
            outputs = [out / f for f in ("metrics.json", "results.jsonl", "responses.jsonl")]
            recorded = (self.manifest.data["stages"].get(stage) or {}).get("outputs") or {}

            def run(name=name, out=out, key=key, recorded=recorded):
                # evaluate_policy rescores a finished generation instead of generating again: only
                # one whose responses.jsonl is the file this stage recorded (not a damaged one)
                responses = fingerprints(self.dir, [out / "responses.jsonl"])
                if any(recorded.get(rel) != fp for rel, fp in responses.items()):
                    (out / "responses.jsonl").unlink()
                m = evaluate_policy(name, self.policy(0 if r < 0 else r + 1), out, key=key, limit=e.benchmark_limit,
                                    seed=self.c.seed, max_new_tokens=e.benchmark_max_new_tokens,
                                    prompts_per_batch=e.benchmark_prompts_per_batch,
                                    shard_prompts=self.c.generate.shard_prompts, progress=self.progress,
                                    info={"policy": "initial" if r < 0 else f"after round {r}"})
                log.info("%s %s: average prompt/inst (strict) %.3f [%.3f, %.3f]", name,
                         "initial" if r < 0 else f"round {r}", m["avg_prompt_inst_strict_acc"],
                         *m["avg_prompt_inst_strict_acc_ci"])

            self.stage(stage, key, run, outputs)

    def baseline(self) -> None:
        """The initial policy's samples on the held-out prompts (what win rates compare against),
        and the metrics of those samples that every round's evaluation reuses."""
        out = self.dir / "baseline" / "samples.parquet"
        summary = self.dir / "baseline" / "summary.json"

        def run():
            from .evaluation import baseline_summary, sample_and_score

            held = self.split()["heldout"]
            rows = sample_and_score(self.policy(0), self.reward_fn(), held, self.c.eval,
                                    seed=seed_from("eval", self.c.seed), progress=self.progress)
            write_rows(out, rows)
            write_json(summary, baseline_summary(self.policy(0), self.embedder(round_idx=0), rows))

        self.stage("baseline", self.baseline_key(), run, [out, summary])

    def evaluate(self, r: int) -> None:
        out = self.round_dir(r) / "eval.json"

        def run():
            from .evaluation import evaluate_round

            result = evaluate_round(self, r)
            write_json(out, result)
            log.info("round %d: held-out reward %.4f (initial %.4f), win rate %.3f [%.3f, %.3f]", r,
                     result["mean_reward"], result["baseline_mean_reward"], result["win_rate"],
                     *result["win_rate_ci"])

        self.stage(f"round-{r}/evaluate", self.eval_key(r), run, [out, self.round_dir(r) / "eval_samples.parquet"])

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
            for step in (self.generate, self.score, self.embed, self.select, self.refs, self.train, self.benchmarks,
                         self.evaluate):
                step(r)
            results.append(json.loads((self.round_dir(r) / "eval.json").read_text()))
        if self.dist.main:
            try:
                self.report()
            except OSError as e:  # e.g. a finished run in a read-only folder: the results stand
                log.warning("the report was not written: %s", e.strerror or e)
        return results

    def report(self, force: bool = False) -> Path:
        """Write report.md and its plots unless they match every round's evaluation (main process
        only); return the report's path."""
        from .report import REPORT_FILES, write_report

        outputs = [self.dir / name for name in REPORT_FILES]
        key = config_key("report", [self.eval_key(r) for r in range(self.c.rounds)])
        if force or not (self.manifest.done("report", key) and self._intact("report", outputs)):
            log.info("[report] running (key %s)", key)
            write_report(self)
            self.manifest.mark("report", key, "done", outputs=fingerprints(self.dir, outputs))
        return outputs[0]


def fingerprints(root: Path, outputs: list[Path]) -> dict[str, dict]:
    """Size and sha256 of each output file, folders expanded to the files inside them, keyed by
    the path relative to `root`. Missing outputs are left out."""
    files = []
    for path in outputs:
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else
                     [path] if path.is_file() else [])
    return {p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_if_changed(path: Path, text: str) -> None:
    """Write `text` atomically unless `path` already holds it (a finished run may be read-only)."""
    if not (path.is_file() and path.read_text() == text):
        with atomic_path(path) as tmp:
            tmp.write_text(text)


def generation_dtype(requested: str) -> str:
    """The dtype generation runs in here: "auto" resolved for this machine's device, so that a run
    resumed on a machine that resolves it differently regenerates instead of mixing dtypes."""
    import torch

    from .generation import resolve_dtype

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return resolve_dtype(requested, device)


def sharded_map(items: list, shard_size: int, work: Callable[[int, list], list[dict]], parts: Path, key: str,
                dist: Dist) -> tuple[list[dict], dict]:
    """Apply `work(shard_index, shard)` to shards of `items`, spread over processes, resumably.

    Shard s is done by process s % world and written atomically to `parts/` (tagged with the
    stage key and the process that wrote it): a killed run redoes only unfinished shards, and a
    shard written once is read once. Returns all rows in item order (every process gets them)
    and {"shards_by_rank": {...}} for the manifest.
    """
    if dist.main:
        if parts.exists() and (not (parts / "KEY").exists() or (parts / "KEY").read_text() != key):
            shutil.rmtree(parts)
        parts.mkdir(parents=True, exist_ok=True)
        (parts / "KEY").write_text(key)
    dist.wait()
    shards = [items[i: i + shard_size] for i in range(0, len(items), shard_size)]
    for s in range(dist.rank, len(shards), dist.world):
        if not list(parts.glob(f"shard-{s:05d}-rank*.jsonl")):
            write_rows(parts / f"shard-{s:05d}-rank{dist.rank}.jsonl", work(s, shards[s]))
    dist.wait()
    rows, by_rank = [], {}
    for s in range(len(shards)):
        (path,) = parts.glob(f"shard-{s:05d}-rank*.jsonl")
        rank = path.stem.rsplit("rank", 1)[1]
        by_rank[rank] = by_rank.get(rank, 0) + 1
        with path.open() as f:
            rows.extend(json.loads(line) for line in f)
    dist.wait()
    if dist.main:
        shutil.rmtree(parts)
    return rows, {"shards_by_rank": by_rank}


def score_pool(reward_fn, pool: list[PoolRecord]) -> list[np.ndarray]:
    """Score every response of every record with a scalar reward in one batched call (with each
    record's `meta` for rewards that need it); one array per record."""
    from .rewards import score_records

    return [np.asarray(row["rewards"], dtype=np.float64) for row in score_records(reward_fn, pool)]


def load_round_policy(c: RunConfig, checkpoints: list[Path]):
    """The initial policy with the given round checkpoints applied in order.

    A LoRA checkpoint is an adapter merged into the weights; a full fine-tune checkpoint is a
    complete model folder, so only the last one matters.
    """
    from .models import load_policy

    full = [p for p in checkpoints if (p / "config.json").exists()]
    start = full[-1] if full else c.model.policy
    model, tok = load_policy(str(start), dtype=c.model.dtype, trust_remote_code=c.model.trust_remote_code)
    adapters = checkpoints[checkpoints.index(full[-1]) + 1:] if full else checkpoints
    if adapters:
        from peft import PeftModel

        for path in adapters:
            model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    return model, tok

