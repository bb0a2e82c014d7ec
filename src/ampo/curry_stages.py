"""Curry-DPO stages (`train.curriculum: pairs`) of a self-play round: the round trains in
stages t = 1..n, stage t on each prompt's t-th easiest pair (`ampo.curriculum`), each a
resumable stage of the manifest (`round-R/train-s{t}`); the references of stage t >= 2 are
recomputed under the policy after stage t - 1 (`round-R/refs-s{t}`), and a LoRA round trains one
adapter on through its stages.

`CurryStages` is part of `ampo.pipeline.Pipeline` (a mixin over `Runner`): it uses the
pipeline's config, keys, round folders, pool and policies, declared below.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .stage_keys import lora_seed, n_refs
from .data import PoolRecord, atomic_dir, write_json, write_rows
from .runner import Runner
from .stages import load_round_policy

if TYPE_CHECKING:
    from .config import RunConfig
    from .stage_keys import RunKeys


class CurryStages(Runner):
    """The Curry-DPO part of `Pipeline`: `_train_pair_stages` is round r's train stage when
    `train.curriculum` is `pairs`."""

    # what `Pipeline` provides
    c: RunConfig
    keys: RunKeys
    _loaded: dict[str, Any]  # the policy in memory (cleared before loading another)
    policy: Callable[[int], tuple]  # (model, tokenizer) that round r starts from
    round_dir: Callable[[int], Path]
    training_pool: Callable[[int], list[PoolRecord]]
    selected_logprobs: Callable[..., list]

    def _train_pair_stages(self, r: int, key: str, out: Path) -> dict:
        """Train round r in stages 1..n (n = the most negatives of any group), each a resumable
        stage `round-r/train-s{t}` (with `round-r/refs-s{t}` before it for t >= 2), then copy the
        last stage's checkpoint to `out` and join the stages' logs (steps counted on)."""
        from .curriculum import stage_count

        n = stage_count([rec.selected for rec in self.training_pool(r)])
        pairs = []
        for t in range(1, n + 1):
            self.stage_refs(r, t)
            d, stage_key = self.stage_dir(r, t), self.keys.train_stage(r, t)
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
        if t == 1 or not n_refs(self.c):
            return
        out = self.stage_dir(r, t) / "ref_logps.parquet"

        def run():
            pool, _ = self.stage_pool(r, t)
            self._loaded.clear()  # one policy in memory
            previous = load_round_policy(self.c, [self.round_dir(i) / "checkpoint" for i in range(r)]
                                         + [self.stage_dir(r, t - 1) / "checkpoint"])
            column = self.selected_logprobs(previous, pool)
            write_rows(out, [{"id": rec.id, "ref_logps": [col.tolist()]} for rec, col in zip(pool, column)])

        self.stage(f"round-{r}/refs-s{t}", self.keys.refs_stage(r, t), run, [out])

    def _train_stage(self, r: int, t: int, key: str) -> dict:
        """Stage t: train on its pairs, starting from the policy after stage t - 1 (LoRA: the same
        adapter trained further), into `stage-t/checkpoint`."""
        import pyarrow.parquet as pq

        from .trainer import train_round

        pool, picked = self.stage_pool(r, t)
        ref_rows = None
        if n_refs(self.c) and t == 1:
            rows = pq.read_table(self.round_dir(r) / "ref_logps.parquet").to_pylist()
            ref_rows = [[[col[0], col[slot]] for col in rows[i]["ref_logps"]] for i, slot in picked]
        elif n_refs(self.c):
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
                    lora_seed=lora_seed(self.c, r), adapter=previous if self.c.model.lora else None)
        return {"pairs": len(pool)}
