"""The `ampo` command: `run` and `demo` for whole self-play runs (`export` writes a round's
policy as one model folder), one command per stage (`generate`, `score`, `embed`, `select`,
`train-rm`, `report`) for files a user already has, and the IFEval task's `evaluate` and
`make-prompts`.

Bad input exits with status 2 and one line naming the file, row and field; outputs are written
atomically, so a failed command leaves no partial file.

This module holds the parser and `main`; the commands are in `ampo.commands`, one module per
group, and import their heavy libraries only when they run.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .commands.evaluate import cmd_evaluate, cmd_make_prompts
from .commands.export import cmd_export
from .commands.pool import cmd_embed, cmd_generate, cmd_score, cmd_select
from .commands.run import DEMO_RECIPE, RECIPES, cmd_demo, cmd_report, cmd_run
from .commands.store import cmd_store
from .commands.sweep import cmd_sweep, cmd_sweep_worker
from .commands.train import TRAIN_FLAGS, cmd_train, cmd_train_rm, train_config
from .config import AGGREGATES, CLI_RANGES, Range, short

__all__ = ["DEMO_RECIPE", "RECIPES", "TRAIN_FLAGS", "build_parser", "main", "train_config"]


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line too (exit 2), like every other ampo error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _ranged(kind: type, allowed: Range):
    """An argparse `type`: a number of `kind` within `allowed`."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {short(text)}") from None
        if problem := allowed.problem(value):
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


def _like(option: str, kind: type = int):
    """An argparse `type` for a flag that sets what config `option` sets: the same range
    (`CLI_RANGES`: the config's `RANGES`, except `generate --n`, which may be 1)."""
    return _ranged(kind, CLI_RANGES[option])


def _losses_epilog(losses: dict) -> str:
    """`ampo train --help`'s list of the losses, one line each (`LossSpec.description`)."""
    width = max(map(len, losses))
    return "losses (--loss; hyperparameters and formulas: docs/losses.md):\n" + "\n".join(
        f"  {name:<{width}}  {spec.description}" for name, spec in losses.items())


def build_parser() -> argparse.ArgumentParser:
    from .backends import BACKENDS
    from .losses import LOSSES
    from .selection import SELECTORS

    p = _Parser(prog="ampo", description=__doc__.split("\n\n")[0])
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("run", help="run self-play rounds from a YAML config",
                       description="Run R rounds of generate -> score -> embed -> select -> train -> evaluate. "
                                   "Rerunning resumes; changed options rerun only the stages they affect.")
    s.add_argument("config", nargs="?", help="YAML config (see src/ampo/recipes/demo.yaml)")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. select.k=5 train.loss=swepo")
    s.add_argument("--dry-run", action="store_true",
                   help="print every stage's key and whether it is done, would resume, be redone or run; "
                        "loads no model and writes nothing")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("demo", help="the built-in offline recipe (SmolLM2-135M, built-in reward, LoRA)")
    s.add_argument("--recipe", default="demo", choices=list(RECIPES),
                   help="demo: the sentiment recipe; ifeval: verifiable instruction following (docs/ifeval.md)")
    s.add_argument("--out", help="run folder (default runs/<recipe>); rerunning on it resumes")
    s.add_argument("overrides", nargs="*", help="dotted overrides of the demo recipe, e.g. rounds=1")
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("generate", help="sample N responses per prompt into a pool file")
    s.add_argument("--input", required=True, help="prompts: JSONL/Parquet with a 'prompt' field, or .txt")
    s.add_argument("--output", required=True, help="pool file (.jsonl or .parquet)")
    s.add_argument("--policy", default="smollm2-135m-instruct", help="built-in name, local folder or hub id")
    s.add_argument("--backend", default="hf", choices=list(BACKENDS),
                   help="; ".join(f"{name}: {b.description}" for name, b in BACKENDS.items()))
    s.add_argument("--n", type=_like("generate.n"), default=8,
                   help="responses per prompt (1 for single answers; a self-play round needs >= 2)")
    s.add_argument("--temperature", type=_like("generate.temperature", float), default=0.8)
    s.add_argument("--top-p", type=_like("generate.top_p", float), default=1.0)
    s.add_argument("--max-new-tokens", type=_like("generate.max_new_tokens"), default=64)
    s.add_argument("--batching", default="continuous", choices=["continuous", "hf"],
                   help="continuous: finished rows leave the batch and waiting prompts fill in; "
                        "hf: transformers generate, --prompts-per-batch prompts at a time")
    s.add_argument("--batch-rows", type=_like("generate.batch_rows"), default=128,
                   help="rows decoded together (continuous batching)")
    s.add_argument("--prompts-per-batch", type=_like("generate.prompts_per_batch"), default=8,
                   help="prompts per generate call (--batching hf)")
    s.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: bf16 on a CPU with native bf16 (avx512_bf16, AMX) or CUDA, else fp32")
    s.add_argument("--seed", type=_like("seed"), default=0)
    s.add_argument("--trust-remote-code", action="store_true")
    s.set_defaults(fn=cmd_generate)

    s = sub.add_parser("score", help="add rewards to a pool file")
    s.add_argument("--input", required=True)
    s.add_argument("--output", required=True)
    s.add_argument("--reward", default="builtin",
                   help="builtin | ifeval[:loose=W,degeneracy=W] | module:function | pairwise:module:function "
                        "| reward-model folder (one logit or GPM)")
    s.add_argument("--aggregate", default="auto", choices=["auto", *AGGREGATES],
                   help="what 'rewards' holds: auto = the reward (scalar scorers) or win_rate (pairwise ones); "
                        "any other choice also writes the preference matrix 'pref_logits' (docs/preferences.md)")
    s.add_argument("--unfinished-reward", type=float, default=None,
                   help="the reward of a response cut at the token limit (finished false): open-instruct's "
                        "non-stop penalty (scalar rewards only)")
    s.set_defaults(fn=cmd_score)

    s = sub.add_parser("embed", help="add response embeddings to a pool file")
    s.add_argument("--input", required=True)
    s.add_argument("--output", required=True)
    s.add_argument("--embedder", default="minilm", help="minilm | policy | sentence-transformers folder")
    s.add_argument("--policy", default="smollm2-135m-instruct", help="the policy, for --embedder policy")
    s.set_defaults(fn=cmd_embed)

    s = sub.add_parser("select", help="active selection on a scored (and embedded) pool file")
    s.add_argument("--input", required=True)
    s.add_argument("--output", required=True)
    s.add_argument("--strategy", default="optselect", choices=list(SELECTORS))
    s.add_argument("--k", type=_like("select.k"), default=3, help="negatives per prompt")
    s.add_argument("--seed", type=_like("seed"), default=0)
    s.add_argument("--trl-pairs", help="also write the groups as TRL prompt/chosen/rejected pairs here")
    s.add_argument("--embedder", default="minilm",
                   help="embeds the pool first when the strategy needs embeddings and it has none "
                        "(minilm | policy | sentence-transformers folder)")
    s.add_argument("--policy", default="smollm2-135m-instruct", help="the policy, for --embedder policy")
    s.set_defaults(fn=cmd_select)

    s = sub.add_parser("train", help="train a policy on a pool you already have (any layout select reads)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_losses_epilog(LOSSES),
                       description="Select groups from a scored pool (embedding it on the fly when the strategy "
                                   "needs it), compute reference log-probs once when the loss needs them, and "
                                   "train with any loss (LoRA or full). Writes OUTPUT/checkpoint (a model, or a "
                                   "LoRA adapter; --merge adds OUTPUT/merged). Rerunning on OUTPUT resumes.")
    s.add_argument("--input", required=True, help="pool: JSONL/Parquet (any layout `ampo select` reads, A0..An / "
                                                   "score_A0..An too) or a datasets save_to_disk folder")
    s.add_argument("--output", required=True, help="output folder; rerunning on it resumes")
    s.add_argument("--config", help="YAML config (the sections of `ampo run`'s; generation and data are unused)")
    s.add_argument("--policy", help="built-in name or model folder (default smollm2-135m-instruct)")
    s.add_argument("--loss", choices=list(LOSSES), help="default ampo")
    s.add_argument("--strategy", choices=list(SELECTORS), help="default optselect; 'all' trains on every response")
    s.add_argument("--k", type=_like("select.k"), help="negatives per group (default 3)")
    s.add_argument("--epochs", type=_like("train.epochs", float), help="default 1")
    s.add_argument("--max-steps", type=_like("train.max_steps"), help="optimizer steps (default 0: as epochs make)")
    s.add_argument("--learning-rate", type=_like("train.learning_rate", float))
    s.add_argument("--embedder", help="for strategies that need embeddings when the pool has none "
                                      "(minilm | policy | sentence-transformers folder; default minilm)")
    s.add_argument("--lora", action=argparse.BooleanOptionalAction, default=None,
                   help="LoRA adapter (default) or, with --no-lora, a full fine-tune")
    s.add_argument("--merge", action="store_true", help="also write the base with the adapter merged in (LoRA)")
    s.add_argument("--seed", type=_like("seed"))
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.hparams.beta=2 train.prompts_per_step=4")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("train-rm", help="train a reward model on preference pairs (MMPO soft labels or BT)")
    s.add_argument("--input", required=True, help="JSONL/Parquet pairs: prompt, chosen, rejected "
                                                   "[, score_chosen, score_rejected]")
    s.add_argument("--output", required=True, help="folder for the reward model")
    s.add_argument("--soft-gamma", type=_ranged(float, Range(0, lo_open=True)), default=None,
                   help="MMPO: soft labels sigmoid(gamma * score margin); omit for hard labels")
    s.add_argument("--epochs", type=_ranged(int, Range(1)), default=2)
    s.add_argument("--lr", type=_ranged(float, Range(0, lo_open=True)), default=1e-4)
    s.add_argument("--batch-size", type=_ranged(int, Range(1)), default=16)
    s.add_argument("--seed", type=_like("seed"), default=0)
    s.add_argument("--head", default="bt", choices=["bt", "gpm"],
                   help="bt: one-logit Bradley-Terry model; gpm: General Preference Model (preference "
                        "embeddings of size --value-head-dim, pairwise scores that can be cyclic)")
    s.add_argument("--value-head-dim", type=_ranged(int, Range(2)), default=2, help="gpm: 2k, even")
    s.add_argument("--tau", type=_ranged(float, Range(0, lo_open=True)), default=0.1,
                   help="gpm: temperature, P(i beats j) = sigmoid(s / tau)")
    s.add_argument("--gate", default="none", choices=["none", "softmax", "k_softmax_sqrtH"],
                   help="gpm: optional prompt gate weighting the k blocks")
    s.set_defaults(fn=cmd_train_rm)

    s = sub.add_parser("evaluate", help="a policy against another on held-out prompts, or IFEval / IFBench",
                       description="Without --benchmark: sample a policy and --against on held-out prompts "
                                   "(same seed), score both with --reward, and write OUTPUT/eval.json (reward, win "
                                   "rate with a bootstrap interval, length, diversity, drift; a round's schema). "
                                   "With --benchmark: score responses to IFEval or IFBench with the official checks "
                                   "(offline), or generate them first with a policy; writes OUTPUT/metrics.json, "
                                   "OUTPUT/results.jsonl (and OUTPUT/responses.jsonl). See docs/ifeval.md.")
    s.add_argument("--benchmark", choices=["ifeval", "ifbench"])
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("--responses", help="JSONL/Parquet rows with 'key' (the benchmark's) or 'prompt', and 'response'")
    what.add_argument("--policy", help="built-in name, model folder, or LoRA adapter folder (merged into --base)")
    s.add_argument("--output", required=True, help="output folder; rerunning a --policy evaluation on it resumes")
    s.add_argument("--base", default="smollm2-135m-instruct", help="base model of a LoRA adapter --policy")
    s.add_argument("--against", help="held-out: the policy to compare with (default --base)")
    s.add_argument("--prompts", default="builtin", help="held-out: prompt file (JSONL/Parquet/TXT) or a bundled set "
                                                        "(builtin, builtin-ifeval)")
    s.add_argument("--reward", default="builtin", help="held-out: the judge (as `ampo score --reward`)")
    s.add_argument("--embedder", default="minilm", help="held-out: for embedding diversity")
    s.add_argument("--samples-per-prompt", type=_like("eval.samples_per_prompt"), default=2)
    s.add_argument("--temperature", type=_like("eval.temperature", float), default=0.8)
    s.add_argument("--limit", type=_like("eval.benchmark_limit"), default=0,
                   help="evaluate a fixed, seeded subset of N prompts (0 = all)")
    s.add_argument("--seed", type=_like("seed"), default=0, help="seed of the --limit subset and of the bootstrap")
    s.add_argument("--max-new-tokens", type=_like("eval.benchmark_max_new_tokens"),
                   help="default 256 with --benchmark, 64 held-out")
    s.add_argument("--prompts-per-batch", type=_like("eval.benchmark_prompts_per_batch"), default=16)
    s.add_argument("--shard-prompts", type=_like("generate.shard_prompts"), default=64,
                   help="prompts per resumable shard")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    s.add_argument("--bootstrap", type=_like("eval.bootstrap"), default=1000,
                   help="bootstrap samples for the interval")
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("make-prompts", help="build training prompts for a task (ifeval: verifiable constraints)")
    s.add_argument("--task", required=True, choices=["ifeval"])
    s.add_argument("--output", required=True, help="prompt file (.jsonl or .parquet) with id, prompt, meta")
    s.add_argument("--n", type=_ranged(int, Range(1)), default=1920, help="number of prompts")
    s.add_argument("--seed", type=_like("seed"), default=0)
    s.add_argument("--max-constraints", type=_ranged(int, Range(1, 3)), default=3,
                   help="1 to this many constraints per prompt (at most 3)")
    s.add_argument("--base", help="base prompts (JSONL/Parquet/TXT); default: ampo's bundled prompts")
    s.set_defaults(fn=cmd_make_prompts)

    s = sub.add_parser("sweep", help="a hyperparameter study: one `ampo run` per trial, shared stages made once",
                       description="Sweep options of a run config with Optuna (grid, TPE or random): each trial is a "
                                   "run folder OUT/trials/NNN; stages trials share are made once (OUT/store). "
                                   "Rerunning the command resumes the sweep. Writes OUT/sweep.md, OUT/sweep.png "
                                   "and OUT/best.yaml. See docs/sweep.md.")
    s.add_argument("config", nargs="?", help="YAML config (as `ampo run`)")
    s.add_argument("overrides", nargs="*", help="dotted overrides of the config, fixed for every trial")
    s.add_argument("--out", required=True, help="the sweep folder; rerunning on it resumes")
    s.add_argument("--grid", action="append", metavar="KEY=V1,V2,...",
                   help="values of an option (repeatable), e.g. train.learning_rate=1e-5,3e-5; a loss "
                        "hyperparameter as train.beta or train.hparams.beta")
    s.add_argument("--range", action="append", metavar="KEY=LOW:HIGH[:log]",
                   help="a numeric range for --sampler tpe|random (repeatable), e.g. train.learning_rate=1e-6:1e-3:log")
    s.add_argument("--sampler", choices=["grid", "tpe", "random"],
                   help="default: grid with only --grid, tpe with a --range")
    s.add_argument("--trials", type=int, help="number of trials (grid: at most, and by default, the grid's size)")
    s.add_argument("--metric", default="mean_reward",
                   help="a figure of the last round's eval.json (default mean_reward: the held-out reward of the "
                        "run's own task); benchmark figures are refused without --allow-benchmark-metric")
    s.add_argument("--direction", choices=["maximize", "minimize"], help="default: the metric's (drift: minimize)")
    s.add_argument("--allow-benchmark-metric", action="store_true",
                   help="allow a metric computed on IFEval / IFBench (contaminates that benchmark)")
    s.add_argument("--jobs", type=int, default=1, help="trials at once, as single-threaded processes")
    s.add_argument("--storage", help="Optuna storage shared by several machines: an RDB URL (sqlite:///path, "
                                     "postgresql://...) or a journal file; default OUT/study.journal")
    s.add_argument("--study", help="the study's name in --storage (default: derived from the swept options, "
                                   "the metric and the base config)")
    s.add_argument("--estimate", action="store_true",
                   help="print the number of trials and the stages and time they need, and run nothing")
    s.set_defaults(fn=cmd_sweep)

    s = sub.add_parser("sweep-worker", help="one process of `ampo sweep --jobs N` (started by it)")
    s.add_argument("folder", help="the sweep folder (holding sweep.json)")
    s.add_argument("--parent", type=int, help="the coordinator's pid: this worker dies with it")
    s.set_defaults(fn=cmd_sweep_worker)

    s = sub.add_parser("store", help="list a stage store's entries, or prune those no run folder records",
                       description="A stage store (`store:` in a config; SWEEP/store for `ampo sweep`) keeps every "
                                   "finished stage by key. Without options: one line per entry. With --prune: "
                                   "delete the entries that no run folder under the --keep folders records in its "
                                   "manifest (their files stay in the run folders that hold them).")
    s.add_argument("store", help="the store folder")
    s.add_argument("--prune", action="store_true", help="delete the entries no --keep folder records")
    s.add_argument("--keep", nargs="+", metavar="DIR", help="run or sweep folders (searched recursively)")
    s.add_argument("--dry-run", action="store_true", help="with --prune: say what would go, delete nothing")
    s.set_defaults(fn=cmd_store)

    s = sub.add_parser("export", help="the policy after a round of a run, as one model folder",
                       description="Write the policy after a finished round of RUN (default: the last) as a "
                                   "plain model folder (safetensors and tokenizer; a LoRA run's adapters merged "
                                   "in order), for transformers, vLLM or `ampo evaluate --policy`.")
    s.add_argument("run", help="a run folder (`out` of `ampo run` / `ampo demo`)")
    s.add_argument("--out", required=True, help="new or empty folder for the model")
    s.add_argument("--round", type=_ranged(int, Range(0)), help="0-based round (default: the last finished one)")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("report", help="rewrite report.md and plots of a finished run folder")
    s.add_argument("run")
    s.set_defaults(fn=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "sweep" and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]  # `ampo sweep CONFIG --out DIR --grid ... key=value`
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s ampo %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.quiet:
        _no_library_progress_bars()
    try:
        args.fn(args)
    except (ValueError, OSError) as e:  # bad input, a full disk, a read-only folder: one line, no traceback
        print(f"ampo: error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0


def _no_library_progress_bars() -> None:
    """-q silences the Hugging Face libraries' bars too (loading and writing weights)."""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    if "transformers" in sys.modules:  # already imported (as in tests): it read the switch at import
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _one_line(error: Exception, limit: int = 2000) -> str:
    """An error as one line: an OSError as 'file: reason', no line breaks, at most `limit` characters."""
    if isinstance(error, OSError) and error.strerror:
        text = f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    else:
        text = str(error)
    text = " ".join(text.splitlines())
    return text if len(text) <= limit else text[:limit] + "..."


if __name__ == "__main__":
    sys.exit(main())
