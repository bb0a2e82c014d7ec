"""`ampo evaluate --benchmark ifeval|ifbench`: score a file of responses, or generate the
responses with a policy first (greedy, chat template, batched, resumable in shards), and write
`metrics.json`, `results.jsonl` (and `responses.jsonl`) into an output folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np

from ampo.data import read_rows, write_json, write_rows

from .bench import BENCHMARKS, Item, load_items, sha256_file, data_path
from .offline import NEEDS_MISSING_NLTK_DATA, registry
from .scoring import MODEL_CARD_METRIC, PromptResult, aggregate, score_item

log = logging.getLogger("ampo")
TITLES = {"ifeval": "IFEval", "ifbench": "IFBench"}
SKIP = {"ifeval": frozenset(), "ifbench": NEEDS_MISSING_NLTK_DATA}


def subset(items: Sequence[Item], limit: int, seed: int) -> list[Item]:
    """A fixed, seeded subset of `limit` prompts (in benchmark order); all of them if limit <= 0."""
    if limit <= 0 or limit >= len(items):
        return list(items)
    keep = np.random.default_rng(seed).choice(len(items), size=limit, replace=False)
    return [items[i] for i in sorted(keep.tolist())]


def score(benchmark: str, pairs: Sequence[tuple[Item, str]], n_boot: int = 1000,
          seed: int = 0) -> tuple[dict[str, Any], list[PromptResult]]:
    """Metrics and per-prompt results of (item, response) pairs."""
    checks = registry(benchmark)
    results = [score_item(checks, item, response, SKIP[benchmark]) for item, response in pairs]
    metrics = aggregate(results, n_boot=n_boot, seed=seed)
    metrics.update(benchmark=benchmark, n_benchmark_prompts=BENCHMARKS[benchmark].rows,
                   data_sha256=sha256_file(data_path(benchmark)))
    if metrics["unscored_instructions"]:
        metrics["unscored_reason"] = ("these IFBench checks need NLTK data (stopwords, POS tagger) "
                                      "that ships in no PyPI package; they count in no accuracy")
    return metrics, results


def result_rows(results: Sequence[PromptResult]) -> list[dict]:
    return [{"key": r.key, "instruction_id_list": list(r.instruction_id_list),
             "follow_instruction_list_strict": r.strict, "follow_instruction_list_loose": r.loose,
             "follow_all_instructions_strict": all(f for f in r.strict if f is not None),
             "follow_all_instructions_loose": all(f for f in r.loose if f is not None)}
            for r in results]


def write_outputs(out_dir: Path, metrics: dict, results: Sequence[PromptResult]) -> None:
    """`results.jsonl`, then `metrics.json` (its presence marks a finished evaluation), each
    written atomically. A previous `metrics.json` is removed first and a failed write removes the
    new `results.jsonl`, so a failure never leaves a pair of files that do not belong together."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        (out_dir / "metrics.json").unlink()
    write_rows(out_dir / "results.jsonl", result_rows(results))
    try:
        write_json(out_dir / "metrics.json", metrics)
    except OSError:
        (out_dir / "results.jsonl").unlink(missing_ok=True)
        raise


def output_lock(out_dir: str | Path):
    """The lock `ampo evaluate` holds while it writes into `out_dir` (a `RunLock`): the enclosing
    run folder's when `out_dir` lies in one, so that it never writes under a running `ampo run`,
    else `out_dir`'s own, so that two evaluations never mix their shards or files."""
    from ampo.data import ensure_dir
    from ampo.runner import RunLock

    out = Path(out_dir)
    for folder in (out, *out.absolute().parents):
        if (folder / "manifest.json").is_file() and (folder / "config.yaml").is_file():
            return RunLock(folder)
    return RunLock(ensure_dir(out), what="output folder", option="--output")


def table(metrics: dict) -> str:
    """A short plain-text summary of the metrics."""
    m = metrics
    lo, hi = m["avg_prompt_inst_strict_acc_ci"]
    scope = f"{m['n_prompts']} of {m['n_benchmark_prompts']} prompts" + (
        f" (fixed subset, seed {m['subset_seed']})" if m.get("limit") else "")
    lines = [f"{TITLES[m['benchmark']]}: {scope}, {m['n_instructions']} instructions",
             f"  {'':<22}{'strict':>8}{'loose':>8}",
             f"  {'prompt-level acc':<22}{m['prompt_level_strict_acc']:>8.3f}{m['prompt_level_loose_acc']:>8.3f}",
             f"  {'instruction-level acc':<22}{m['inst_level_strict_acc']:>8.3f}{m['inst_level_loose_acc']:>8.3f}",
             f"  {'average prompt/inst':<22}{m['avg_prompt_inst_strict_acc']:>8.3f}{m['avg_prompt_inst_loose_acc']:>8.3f}",
             f"  model-card figure ({MODEL_CARD_METRIC}): {100 * m[MODEL_CARD_METRIC]:.1f} "
             f"[95% CI {100 * lo:.1f}, {100 * hi:.1f}]"]
    if m["unscored_instructions"]:
        lines.append(f"  not scored offline: {m['unscored_instructions']}")
    return "\n".join(lines)


def score_file(benchmark: str, responses: str | Path, out_dir: str | Path, n_boot: int = 1000,
               seed: int = 0, hold: Callable[[Path], Any] | None = None) -> dict:
    """Score a responses file (see `bench.match_responses`) and write the outputs; `hold(out_dir)`,
    if given, is a context manager held while writing (`output_lock`). Bad input raises before
    anything is written."""
    from .bench import match_responses

    pairs = match_responses(responses, load_items(benchmark))
    metrics, results = score(benchmark, pairs, n_boot, seed)
    metrics["responses"] = str(responses)
    with hold(Path(out_dir)) if hold else contextlib.nullcontext():
        write_outputs(Path(out_dir), metrics, results)
    return metrics


def generate(policy, items: Sequence[Item], parts: Path, key: str, max_new_tokens: int,
             prompts_per_batch: int = 16, shard_prompts: int = 64, progress: bool = True,
             dtype: str = "auto") -> list[dict]:
    """Greedy responses to `items` with the chat template, batched, resumable: finished shards
    live in `parts/` (tagged with `key`) until all are done. One row per item, in order."""
    from ampo.generation import GenerationConfig, HFGenerator
    from ampo.runner import sharded_map

    model, tok = policy
    cfg = GenerationConfig(n=1, temperature=0.0, max_new_tokens=max_new_tokens, prompts_per_batch=prompts_per_batch,
                           dtype=dtype)
    n_shards = -(-len(items) // shard_prompts)

    def work(s: int, shard: list[Item]) -> list[dict]:
        log.info("benchmark generation: shard %d/%d (%d prompts)", s + 1, n_shards, len(shard))
        samples = HFGenerator(model, tok, cfg).generate([it.prompt for it in shard], progress=progress)
        return [{"key": it.key, "prompt": it.prompt, "response": ss[0].text, "n_tokens": ss[0].n_tokens,
                 "finished": ss[0].finished} for it, ss in zip(shard, samples)]

    solo = SimpleNamespace(rank=0, world=1, main=True, wait=lambda: None)
    rows, _ = sharded_map(list(items), shard_prompts, work, parts, key, solo)
    return rows


def finished_generation(out_dir: Path) -> str | None:
    """The generation key of a finished policy evaluation in `out_dir` (None if there is none, or
    its metrics.json is unreadable)."""
    if not (out_dir / "responses.jsonl").is_file() or not (out_dir / "metrics.json").is_file():
        return None
    try:
        metrics = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
    except (ValueError, RecursionError):  # damaged: not a finished evaluation
        return None
    return metrics.get("generation_key") if isinstance(metrics, dict) else None


def finished_responses(out_dir: Path, items: Sequence[Item], gen_key: str) -> list[dict] | None:
    """The rows of `out_dir/responses.jsonl` if a finished evaluation with generation key `gen_key`
    wrote them and they are whole (one row per item, in order, each with a string response, its
    token count and finish flag); None otherwise (the responses are generated again)."""
    if finished_generation(out_dir) != gen_key:
        return None
    try:
        rows = [row for _, row in read_rows(out_dir / "responses.jsonl")]
    except ValueError:
        return None
    whole = len(rows) == len(items) and all(
        row.get("key") == it.key and isinstance(row.get("response"), str) and isinstance(row.get("finished"), bool)
        and isinstance(row.get("n_tokens"), int) for row, it in zip(rows, items))
    return rows if whole else None


def evaluate_policy(benchmark: str, policy, out_dir: str | Path, *, key: str, limit: int = 0, seed: int = 0,
                    max_new_tokens: int = 256, prompts_per_batch: int = 16, shard_prompts: int = 64,
                    n_boot: int = 1000, progress: bool = True, info: dict | None = None,
                    dtype: str = "auto") -> dict:
    """Generate greedy responses to the benchmark (or its fixed `limit` subset), score them and
    write `responses.jsonl`, `results.jsonl` and `metrics.json` into `out_dir`. `key` identifies
    the policy: the generation resumes from finished shards, and a finished run with the same key
    and settings is rescored without generating again. Generation runs in `dtype` as resolved here
    ("auto": bf16 on CPUs with native bf16 matmuls, else fp32), which is part of the key: a run
    resumed on a machine that resolves it differently regenerates instead of mixing dtypes. So is
    `shard_prompts`: a shard's prompts decode in one batch, and bf16 greedy answers depend on the
    batch (docs/models_generation.md), and finished shards of another size would not line up."""
    from ampo.hashing import config_key
    from ampo.generation import resolve_dtype

    out_dir = Path(out_dir)
    items = subset(load_items(benchmark), limit, seed)
    dtype = resolve_dtype(dtype, policy[0].device)
    gen_key = config_key("benchmark-generate", benchmark, key, [it.key for it in items], max_new_tokens,
                         prompts_per_batch, dtype, shard_prompts)
    rows = finished_responses(out_dir, items, gen_key)  # the same responses exist: rescore them
    if rows is None:
        rows = generate(policy, items, out_dir / "responses.parts", gen_key, max_new_tokens, prompts_per_batch,
                        shard_prompts, progress, dtype)
        write_rows(out_dir / "responses.jsonl", rows)
    metrics, results = score(benchmark, list(zip(items, [r["response"] for r in rows])), n_boot, seed)
    metrics.update(info or {}, generation_key=gen_key, generation_dtype=dtype, subset_seed=seed,
                   limit=limit if 0 < limit < len(load_items(benchmark)) else 0,
                   decoding="greedy", max_new_tokens=max_new_tokens,
                   finished_rate=float(np.mean([r["finished"] for r in rows])),
                   mean_new_tokens=float(np.mean([r["n_tokens"] for r in rows])))
    write_outputs(out_dir, metrics, results)
    return metrics


def load_eval_policy(policy: str, base: str, dtype: str = "float32"):
    """(model, tokenizer): a policy by built-in name or folder, or a LoRA adapter folder merged
    into `base`."""
    from ampo.models import load_adapter, load_policy

    if (Path(policy) / "adapter_config.json").is_file():
        model, tok = load_policy(base, dtype=dtype)
        return load_adapter(model, policy).merge_and_unload().eval(), tok
    return load_policy(policy, dtype=dtype)


def policy_fingerprint(policy: str, base: str, dtype: str) -> list:
    """What identifies a policy for resuming its generation: its name, and for a folder the
    names, sizes and modification times of its files (a checkpoint rewritten in place differs)."""
    folder = Path(policy)
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file()) \
        if folder.is_dir() else []
    return [policy, base if (folder / "adapter_config.json").is_file() else None, dtype, files]


SUMMARY_KEYS = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc",
                "avg_prompt_inst_strict_acc", "avg_prompt_inst_strict_acc_ci", "avg_prompt_inst_loose_acc",
                "n_prompts", "limit", "max_new_tokens", "finished_rate")


def summary(metrics: dict) -> dict:
    """The headline figures of a benchmark run, for a round's `eval.json`."""
    return {k: metrics[k] for k in SUMMARY_KEYS if k in metrics}
