"""The `ampo` command: `run` and `demo` for whole self-play runs, one command per stage
(`generate`, `score`, `embed`, `select`, `train-rm`, `report`) for files a user already has, and
the IFEval task's `evaluate` and `make-prompts`.

Bad input exits with status 2 and one line naming the file, row and field; outputs are written
atomically, so a failed command leaves no partial file.
"""

from __future__ import annotations

import argparse
import os
import logging
import sys
from pathlib import Path

from .config import AGGREGATES, CLI_RANGES, Range, short

DEMO_RECIPE = Path(__file__).parent / "recipes" / "demo.yaml"
RECIPES = {"demo": DEMO_RECIPE, "ifeval": Path(__file__).parent / "recipes" / "ifeval.yaml"}


def _cmd_run(args) -> None:
    from .config import load_config
    from .pipeline import Pipeline

    overrides = list(args.overrides)
    if args.config and "=" in args.config and not Path(args.config).exists():  # no config file, only overrides
        args.config, overrides = None, [args.config, *overrides]
    config = load_config(args.config, overrides)
    results = Pipeline(config, progress=not args.quiet).run()
    _print_results(config.out, results)


def _cmd_demo(args) -> None:
    from .config import load_config
    from .pipeline import Pipeline

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={args.out}")
    config = load_config(RECIPES[args.recipe], overrides)
    results = Pipeline(config, progress=not args.quiet).run()
    _print_results(config.out, results)


def _print_results(out: str, results: list[dict]) -> None:
    if os.environ.get("RANK", "0") != "0":  # one summary under torchrun / accelerate launch
        return
    print(f"\nheld-out reward: initial {results[0]['baseline_mean_reward']:.4f}")
    for e in results:
        lo, hi = e["win_rate_ci"]
        print(f"  after round {e['round']}: reward {e['mean_reward']:.4f}  "
              f"win rate vs initial {e['win_rate']:.3f} [{lo:.3f}, {hi:.3f}]")
        for name, m in e.get("benchmarks", {}).items():
            print(f"    {name} avg prompt/inst (strict): {100 * m['avg_prompt_inst_strict_acc']:.1f} "
                  f"(initial {100 * m['initial']['avg_prompt_inst_strict_acc']:.1f})")
    print(f"report: {Path(out) / 'report.md'}")


def _cmd_generate(args) -> None:
    import torch

    from .data import output_format, read_prompt_rows, write_rows
    from .generation import GenerationConfig, make_generator, resolve_dtype
    from .models import load_policy
    from .stages import sample_rows

    output_format(args.output)
    prompts = read_prompt_rows(args.input)
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))  # load in the generation dtype: no converted copy
    model, tok = load_policy(args.policy, dtype=dtype, trust_remote_code=args.trust_remote_code)
    cfg = GenerationConfig(n=args.n, temperature=args.temperature, top_p=args.top_p,
                           max_new_tokens=args.max_new_tokens, prompts_per_batch=args.prompts_per_batch,
                           batching=args.batching, batch_rows=args.batch_rows, dtype=args.dtype, seed=args.seed)
    gen = make_generator(args.backend, args.policy, model=model, tokenizer=tok, config=cfg)
    write_rows(args.output, sample_rows(gen, prompts, progress=not args.quiet))
    print(f"wrote {len(prompts)} prompts x {args.n} responses to {args.output}")


def _cmd_score(args) -> None:
    from .data import output_format, read_pool, write_pool
    from .rewards import load_reward, resolve_aggregate, reward_kind, score_records

    output_format(args.output)
    how = resolve_aggregate(args.aggregate, reward_kind(args.reward))
    pool, layout = read_pool(args.input)
    for rec, row in zip(pool, score_records(load_reward(args.reward), pool, how)):
        rec.rewards = row["rewards"]
        if "pref_logits" in row:
            rec.extra["pref_logits"] = row["pref_logits"]
    write_pool(args.output, pool)
    print(f"read {args.input} ({layout} layout); scored {sum(len(r.responses) for r in pool)} responses "
          f"with '{args.reward}' -> {args.output}")


def _embed_records(pool, embedder: str, policy: str) -> int:
    """Embed every response of `pool` in place with `embedder`; return the width."""
    from .embeddings import load_embedder
    from .stages import embed_pool

    loaded = None
    if embedder == "policy":
        from .models import load_policy

        loaded = load_policy(policy)
    for rec, emb in zip(pool, embed_pool(load_embedder(embedder, policy=loaded), pool)):
        rec.embeddings = emb
    return pool[0].embeddings.shape[1]


def _cmd_embed(args) -> None:
    from .data import output_format, read_pool, write_pool

    output_format(args.output)
    pool, layout = read_pool(args.input)
    width = _embed_records(pool, args.embedder, args.policy)
    write_pool(args.output, pool)
    print(f"read {args.input} ({layout} layout); embedded {sum(len(r.responses) for r in pool)} responses "
          f"({width}-d) -> {args.output}")


def _cmd_select(args) -> None:
    from .data import atomic_path, dump_rows, output_format, read_pool, trl_pairs, write_rows
    from .selection import SELECTORS
    from .stages import select_pool

    fmt = output_format(args.output)
    if args.trl_pairs:
        output_format(args.trl_pairs)
    pool, layout = read_pool(args.input, require=("rewards",))
    msg = f"read {args.input} ({layout} layout); "
    if SELECTORS[args.strategy].needs_embeddings and any(r.embeddings is None for r in pool):
        width = _embed_records(pool, args.embedder, args.policy)  # written with the selection
        msg += f"embedded {sum(len(r.responses) for r in pool)} responses ({args.embedder}, {width}-d); "
    sel = select_pool(args.strategy, args.k, pool, args.seed, progress=not args.quiet)
    for rec, idx in zip(pool, sel.indices):
        rec.selected = idx.tolist()
    msg += f"selected 1 positive + {args.k} negatives ({args.strategy}) -> {args.output}"
    if sel.short.any():
        msg += f"; {int(sel.short.sum())} prompt(s) had <= k+1 responses: took all"
    with atomic_path(args.output) as tmp:  # the output appears only if the TRL pairs were written too
        dump_rows(tmp, [rec.to_row() for rec in pool], fmt)
        if args.trl_pairs:
            pairs = trl_pairs(pool)
            write_rows(args.trl_pairs, pairs)
            msg += f"; {len(pairs)} TRL pairs -> {args.trl_pairs}"
    print(msg)


TRAIN_FLAGS = {"policy": "model.policy", "loss": "train.loss", "strategy": "select.strategy", "k": "select.k",
               "epochs": "train.epochs", "max_steps": "train.max_steps", "learning_rate": "train.learning_rate",
               "embedder": "embed.embedder", "lora": "model.lora", "seed": "seed"}


def train_config(args):
    """`ampo train`'s RunConfig: the `--config` YAML, then the flags, then the dotted overrides."""
    import json

    from .config import load_config

    flags = [f"{option}={json.dumps(getattr(args, flag))}" for flag, option in TRAIN_FLAGS.items()
             if getattr(args, flag) is not None]
    return load_config(args.config, [f"out={json.dumps(str(args.output))}", *flags, *args.overrides],
                       self_play=False)


def _cmd_train(args) -> None:
    from .pooltrain import PoolTraining

    config = train_config(args)
    s = PoolTraining(config, args.input, args.output, merge=args.merge, progress=not args.quiet).run()
    if os.environ.get("RANK", "0") != "0":
        return
    loss = "" if s["first_loss"] is None else f"; loss {s['first_loss']:.4f} -> {s['last_loss']:.4f}"
    print(f"trained {config.model.policy} with '{config.train.loss}' on {s['groups']} groups "
          f"({config.select.strategy}, k={config.select.k}) for {s['steps']} steps{loss}")
    what = "LoRA adapter + tokenizer" if s["adapter"] else "model + tokenizer"
    print(f"{what}: {s['checkpoint']}" + (f"; merged model: {s['merged']}" if s["merged"] else ""))


def _cmd_train_rm(args) -> None:
    from .data import PoolError, read_rows
    from .rewards import preference_labels, train_reward_model

    numbered = list(read_rows(args.input))
    if not numbered:
        raise PoolError(args.input, None, None, "no preference pairs")
    rows, pairs = zip(*numbered)
    preference_labels(pairs, args.soft_gamma, source=args.input, rows=rows)  # errors name the file's rows
    gpm = None
    if args.head == "gpm":
        from .gpm import GPMHead

        gpm = GPMHead(value_head_dim=args.value_head_dim, tau=args.tau, gate=args.gate)
    elif (args.value_head_dim, args.tau, args.gate) != (2, 0.1, "none"):
        raise ValueError("--value-head-dim, --tau and --gate are options of --head gpm")
    path = train_reward_model(pairs, args.output, soft_gamma=args.soft_gamma, epochs=args.epochs,
                              lr=args.lr, batch_size=args.batch_size, seed=args.seed, head=args.head, gpm=gpm)
    print(f"reward model ({args.head}) -> {path} (load it with --reward {path})")


def _cmd_evaluate(args) -> None:
    if args.benchmark is None:
        return _cmd_evaluate_held_out(args)
    from .ifeval.evaluate import (evaluate_policy, load_eval_policy, output_lock, policy_fingerprint, score_file,
                                  table)

    if args.max_new_tokens is None:
        args.max_new_tokens = 256
    if args.responses:
        metrics = score_file(args.benchmark, args.responses, args.output, n_boot=args.bootstrap, seed=args.seed,
                             hold=output_lock)
    else:
        from .config import config_key

        key = config_key(policy_fingerprint(args.policy, args.base, args.dtype))
        policy = load_eval_policy(args.policy, args.base, args.dtype)
        with output_lock(args.output):  # one evaluation per output folder, none inside a running run
            metrics = evaluate_policy(args.benchmark, policy, args.output, key=key, limit=args.limit, seed=args.seed,
                                      max_new_tokens=args.max_new_tokens, prompts_per_batch=args.prompts_per_batch,
                                      shard_prompts=args.shard_prompts, n_boot=args.bootstrap,
                                      progress=not args.quiet, info={"policy": args.policy})
    print(table(metrics))
    print(f"wrote {Path(args.output) / 'metrics.json'} and results.jsonl"
          + ("" if args.responses else " and responses.jsonl"))


def _cmd_evaluate_held_out(args) -> None:
    """`ampo evaluate --policy P [--against Q]`: held-out reward, win rate, length, diversity, drift."""
    import numpy as np

    from .config import EvalConfig
    from .data import read_prompt_rows
    from .evaluation import evaluate_policies
    from .pipeline import BUILTIN_PROMPT_SETS

    if args.responses or not args.policy:
        raise ValueError("ampo evaluate: --responses needs --benchmark; without --benchmark give --policy")
    prompts = read_prompt_rows(BUILTIN_PROMPT_SETS.get(args.prompts) or args.prompts)
    if 0 < args.limit < len(prompts):
        keep = np.sort(np.random.default_rng(args.seed).choice(len(prompts), args.limit, replace=False))
        prompts = [prompts[i] for i in keep]
    cfg = EvalConfig(samples_per_prompt=args.samples_per_prompt, temperature=args.temperature,
                     max_new_tokens=args.max_new_tokens or 64, bootstrap=args.bootstrap)
    against = args.against or args.base
    e = evaluate_policies(args.policy, against, args.base, prompts, Path(args.output), cfg, reward=args.reward,
                          embedder=args.embedder, seed=args.seed, dtype=args.dtype, progress=not args.quiet)
    lo, hi = e["win_rate_ci"]
    print(f"{len(prompts)} prompts x {cfg.samples_per_prompt} samples: reward {e['mean_reward']:.4f} "
          f"({against}: {e['baseline_mean_reward']:.4f}); win rate vs {against} {e['win_rate']:.3f} "
          f"[{lo:.3f}, {hi:.3f}]; length {e['mean_length']:.1f} tokens ({e['baseline_mean_length']:.1f}); "
          f"distinct-2 {e['distinct_2']:.3f}")
    print(f"wrote {Path(args.output) / 'eval.json'} and eval_samples.parquet")


def _cmd_make_prompts(args) -> None:
    from .data import output_format, read_prompt_rows, write_rows
    from .ifeval.prompts import build_prompts
    from .pipeline import BUILTIN_PROMPTS

    output_format(args.output)
    base = read_prompt_rows(args.base or BUILTIN_PROMPTS)
    rows = build_prompts(base, args.n, seed=args.seed, max_constraints=args.max_constraints)
    write_rows(args.output, rows)
    print(f"wrote {len(rows)} {args.task} training prompts ({len(base)} base prompts, seed {args.seed}) "
          f"-> {args.output}")


def _cmd_report(args) -> None:
    import dataclasses

    from .config import load_config
    from .pipeline import Pipeline

    run = Path(args.run)
    config = dataclasses.replace(load_config(run / "config.yaml"), out=str(run))  # RUN, wherever it is now
    with Pipeline(config, progress=False) as pipe:
        print(pipe.report(force=True))


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
    s.set_defaults(fn=_cmd_run)

    s = sub.add_parser("demo", help="the built-in offline recipe (SmolLM2-135M, built-in reward, LoRA)")
    s.add_argument("--recipe", default="demo", choices=list(RECIPES),
                   help="demo: the sentiment recipe; ifeval: verifiable instruction following (docs/ifeval.md)")
    s.add_argument("--out", help="run folder (default runs/<recipe>); rerunning on it resumes")
    s.add_argument("overrides", nargs="*", help="dotted overrides of the demo recipe, e.g. rounds=1")
    s.set_defaults(fn=_cmd_demo)

    s = sub.add_parser("generate", help="sample N responses per prompt into a pool file")
    s.add_argument("--input", required=True, help="prompts: JSONL/Parquet with a 'prompt' field, or .txt")
    s.add_argument("--output", required=True, help="pool file (.jsonl or .parquet)")
    s.add_argument("--policy", default="smollm2-135m-instruct", help="built-in name, local folder or hub id")
    s.add_argument("--backend", default="hf", choices=list(BACKENDS))
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
    s.set_defaults(fn=_cmd_generate)

    s = sub.add_parser("score", help="add rewards to a pool file")
    s.add_argument("--input", required=True)
    s.add_argument("--output", required=True)
    s.add_argument("--reward", default="builtin",
                   help="builtin | ifeval[:loose=W,degeneracy=W] | module:function | pairwise:module:function "
                        "| reward-model folder (one logit or GPM)")
    s.add_argument("--aggregate", default="auto", choices=["auto", *AGGREGATES],
                   help="what 'rewards' holds: auto = the reward (scalar scorers) or win_rate (pairwise ones); "
                        "any other choice also writes the preference matrix 'pref_logits' (docs/preferences.md)")
    s.set_defaults(fn=_cmd_score)

    s = sub.add_parser("embed", help="add response embeddings to a pool file")
    s.add_argument("--input", required=True)
    s.add_argument("--output", required=True)
    s.add_argument("--embedder", default="minilm", help="minilm | policy | sentence-transformers folder")
    s.add_argument("--policy", default="smollm2-135m-instruct", help="the policy, for --embedder policy")
    s.set_defaults(fn=_cmd_embed)

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
    s.set_defaults(fn=_cmd_select)

    s = sub.add_parser("train", help="train a policy on a pool you already have (any layout select reads)",
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
    s.set_defaults(fn=_cmd_train)

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
    s.set_defaults(fn=_cmd_train_rm)

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
    s.set_defaults(fn=_cmd_evaluate)

    s = sub.add_parser("make-prompts", help="build training prompts for a task (ifeval: verifiable constraints)")
    s.add_argument("--task", required=True, choices=["ifeval"])
    s.add_argument("--output", required=True, help="prompt file (.jsonl or .parquet) with id, prompt, meta")
    s.add_argument("--n", type=_ranged(int, Range(1)), default=1920, help="number of prompts")
    s.add_argument("--seed", type=_like("seed"), default=0)
    s.add_argument("--max-constraints", type=_ranged(int, Range(1, 3)), default=3,
                   help="1 to this many constraints per prompt (at most 3)")
    s.add_argument("--base", help="base prompts (JSONL/Parquet/TXT); default: ampo's bundled prompts")
    s.set_defaults(fn=_cmd_make_prompts)

    s = sub.add_parser("report", help="rewrite report.md and plots of a finished run folder")
    s.add_argument("run")
    s.set_defaults(fn=_cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
