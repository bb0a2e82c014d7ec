"""`ampo evaluate` (a policy against another on held-out prompts, or IFEval / IFBench) and
`ampo make-prompts` (the IFEval task's training prompts)."""

from __future__ import annotations

from pathlib import Path


def cmd_evaluate(args) -> None:
    if args.benchmark is None:
        return cmd_evaluate_held_out(args)
    from ..ifeval.evaluate import (evaluate_policy, load_eval_policy, output_lock, policy_fingerprint, score_file,
                                  table)

    if args.max_new_tokens is None:
        args.max_new_tokens = 256
    if args.responses:
        metrics = score_file(args.benchmark, args.responses, args.output, n_boot=args.bootstrap, seed=args.seed,
                             hold=output_lock)
    else:
        from ..config import config_key

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


def cmd_evaluate_held_out(args) -> None:
    """`ampo evaluate --policy P [--against Q]`: held-out reward, win rate, length, diversity, drift."""
    import numpy as np

    from ..config import EvalConfig
    from ..data import read_prompt_rows
    from ..evaluation import evaluate_policies
    from ..recipes import BUILTIN_PROMPT_SETS

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


def cmd_make_prompts(args) -> None:
    from ..data import output_format, read_prompt_rows, write_rows
    from ..ifeval.prompts import build_prompts
    from ..recipes import BUILTIN_PROMPTS

    output_format(args.output)
    base = read_prompt_rows(args.base or BUILTIN_PROMPTS)
    rows = build_prompts(base, args.n, seed=args.seed, max_constraints=args.max_constraints)
    write_rows(args.output, rows)
    print(f"wrote {len(rows)} {args.task} training prompts ({len(base)} base prompts, seed {args.seed}) "
          f"-> {args.output}")
