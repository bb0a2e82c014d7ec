"""The evaluation stages of a self-play run: the initial policy's held-out samples (`baseline/`,
once per run), the benchmarks (IFEval, IFBench) on the initial policy and after each round, and
each round's `eval.json` (`ampo.evaluation.compare` against the baseline); their keys are
`ampo.stage_keys.RunKeys`'.

`EvalStages` is part of `ampo.pipeline.Pipeline` (a mixin over `Runner`): it uses the
pipeline's config, keys, reward function, embedder and policies, declared below.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .hashing import seed_from
from .data import write_json, write_rows
from .runner import Runner, fingerprints

if TYPE_CHECKING:
    from .config import RunConfig
    from .stage_keys import RunKeys

log = logging.getLogger("ampo")


class EvalStages(Runner):
    """The held-out evaluation and benchmark stages of `Pipeline`."""

    # what `Pipeline` provides
    c: RunConfig
    keys: RunKeys
    policy: Callable[[int], tuple]  # (model, tokenizer) that round r starts from
    reward_fn: Callable[[], Any]
    embedder: Callable[..., Any]
    round_dir: Callable[[int], Path]

    def benchmark_dir(self, name: str, r: int) -> Path:
        return (self.dir / "baseline" if r < 0 else self.round_dir(r)) / name

    def benchmarks(self, r: int) -> None:
        """Greedy runs of `eval.benchmarks` (IFEval, IFBench) on the policy after round r, or on the
        initial policy (r = -1, once per run): metrics.json, results.jsonl, responses.jsonl."""
        from .ifeval.evaluate import evaluate_policy

        e = self.c.eval
        for name in e.benchmarks:
            out, key = self.benchmark_dir(name, r), self.keys.benchmark(name, r)
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
                                    dtype=self.c.generate.dtype,
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

            held = self.keys.split().heldout
            rows = sample_and_score(self.policy(0), self.reward_fn(), held, self.c.eval,
                                    seed=seed_from("eval", self.c.seed), progress=self.progress,
                                    dtype=self.c.generate.dtype)
            write_rows(out, rows)
            write_json(summary, baseline_summary(self.policy(0), self.embedder(round_idx=0), rows))

        self.stage("baseline", self.keys.baseline(), run, [out, summary])

    def evaluate(self, r: int) -> None:
        out = self.round_dir(r) / "eval.json"

        def run():
            result = self._evaluate(r)
            write_json(out, result)
            log.info("round %d: held-out reward %.4f (initial %.4f), win rate %.3f [%.3f, %.3f]", r,
                     result["mean_reward"], result["baseline_mean_reward"], result["win_rate"],
                     *result["win_rate_ci"])

        self.stage(f"round-{r}/evaluate", self.keys.evaluate(r), run, [out, self.round_dir(r) / "eval_samples.parquet"])

    def _evaluate(self, r: int) -> dict:
        """The policy after round `r` against the baseline samples, plus the benchmarks' figures."""
        import pyarrow.parquet as pq

        from .evaluation import compare, judge_against, sample_and_score

        rows = sample_and_score(self.policy(r + 1), self.reward_fn(), self.keys.split().heldout, self.c.eval,
                                seed=seed_from("eval", self.c.seed), progress=self.progress,
                                dtype=self.c.generate.dtype)
        base_rows = pq.read_table(self.dir / "baseline" / "samples.parquet").to_pylist()
        pairwise = judge_against(self.reward_fn(), rows, base_rows)  # a pairwise scorer judges new vs baseline
        write_rows(self.round_dir(r) / "eval_samples.parquet", rows)
        base = json.loads((self.dir / "baseline" / "summary.json").read_text())
        result = {"round": r, **compare(rows, base_rows, base, self.embedder(round_idx=r + 1), self.policy(0),
                                        self.c.eval.bootstrap, self.c.seed, pairwise)}
        if self.c.eval.benchmarks:
            from .ifeval.evaluate import summary

            read = lambda name, i: json.loads((self.benchmark_dir(name, i) / "metrics.json").read_text())
            result["benchmarks"] = {name: {**summary(read(name, r)), "initial": summary(read(name, -1))}
                                    for name in self.c.eval.benchmarks}
        return result
