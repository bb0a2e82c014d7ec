"""The `ampo` command: `run` and `demo` for whole self-play runs, and one command per stage
(`generate`, `score`, `embed`, `select`, `train-rm`, `report`) for files a user already has.

Bad input exits with status 2 and one line naming the file, row and field; outputs are written
atomically, so a failed command leaves no partial file.
"""

from __future__ import annotations

import argparse
import os
import logging
import sys
from pathlib import Path

DEMO_RECIPE = Path(__file__).parent / "recipes" / "demo.yaml"


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
    config = load_config(DEMO_RECIPE, overrides)
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
    print(f"report: {Path(out) / 'report.md'}")


def _cmd_generate(args) -> None:
    from .data import PoolRecord, read_prompts, write_pool
    import torch

    from .generation import GenerationConfig, make_generator, resolve_dtype
    from .models import load_policy

    prompts = read_prompts(args.input)
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))  # load in the generation dtype: no converted copy
    model, tok = load_policy(args.policy, dtype=dtype, trust_remote_code=args.trust_remote_code)
    cfg = GenerationConfig(n=args.n, temperature=args.temperature, top_p=args.top_p,
                           max_new_tokens=args.max_new_tokens, prompts_per_batch=args.prompts_per_batch,
                           batching=args.batching, batch_rows=args.batch_rows, dtype=args.dtype, seed=args.seed)
    gen = make_generator(args.backend, args.policy, model=model, tokenizer=tok, config=cfg)
    samples = gen.generate([p for _, p in prompts], progress=not args.quiet)
    write_pool(args.output, [
        PoolRecord(prompt=p, id=pid, responses=[s.text for s in ss], finished=[s.finished for s in ss],
                   n_tokens=[s.n_tokens for s in ss])
        for (pid, p), ss in zip(prompts, samples)
    ])
    print(f"wrote {len(prompts)} prompts x {args.n} responses to {args.output}")


def _cmd_score(args) -> None:
    from .data import read_pool, write_pool
    from .pipeline import score_pool
    from .rewards import load_reward

    pool, layout = read_pool(args.input)
    for rec, rewards in zip(pool, score_pool(load_reward(args.reward), pool)):
        rec.rewards = rewards.tolist()
    write_pool(args.output, pool)
    print(f"read {args.input} ({layout} layout); scored {sum(len(r.responses) for r in pool)} responses "
          f"with '{args.reward}' -> {args.output}")


def _cmd_embed(args) -> None:
    import numpy as np

    from .data import read_pool, write_pool
    from .embeddings import load_embedder

    pool, layout = read_pool(args.input)
    policy = None
    if args.embedder == "policy":
        from .models import load_policy

        policy = load_policy(args.policy)
    emb = load_embedder(args.embedder, policy=policy)([t for rec in pool for t in rec.responses])
    offset = 0
    for rec in pool:
        rec.embeddings = np.asarray(emb[offset: offset + len(rec.responses)], dtype=np.float32)
        offset += len(rec.responses)
    write_pool(args.output, pool)
    print(f"read {args.input} ({layout} layout); embedded {offset} responses ({emb.shape[1]}-d) -> {args.output}")


def _cmd_select(args) -> None:
    import numpy as np

    from .data import read_pool, trl_pairs, write_pool, write_rows
    from .selection import select_batch

    needs_embeddings = args.strategy in ("coreset", "optselect", "exact")
    pool, layout = read_pool(args.input, require=("rewards", "embeddings") if needs_embeddings else ("rewards",))
    embeddings = [r.embeddings if r.embeddings is not None else np.zeros((len(r.responses), 1), np.float32)
                  for r in pool]
    sel = select_batch(args.strategy, [np.asarray(r.rewards) for r in pool], embeddings, args.k,
                       seed=args.seed, progress=not args.quiet)
    for rec, idx in zip(pool, sel.indices):
        rec.selected = idx.tolist()
    write_pool(args.output, pool)
    msg = f"read {args.input} ({layout} layout); selected 1 positive + {args.k} negatives ({args.strategy}) -> {args.output}"
    if sel.short.any():
        msg += f"; {int(sel.short.sum())} prompt(s) had <= k+1 responses: took all"
    if args.trl_pairs:
        pairs = trl_pairs(pool)
        write_rows(args.trl_pairs, pairs)
        msg += f"; {len(pairs)} TRL pairs -> {args.trl_pairs}"
    print(msg)


def _cmd_train_rm(args) -> None:
    from .data import prompt_text, read_rows
    from .rewards import train_reward_model

    pairs = [{**row, "prompt": prompt_text(row["prompt"])} if "prompt" in row else row
             for _, row in read_rows(args.input)]
    path = train_reward_model(pairs, args.output, soft_gamma=args.soft_gamma, epochs=args.epochs,
                              lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    print(f"reward model -> {path} (load it with --reward {path})")


def _cmd_report(args) -> None:
    from .config import load_config
    from .pipeline import Pipeline
    from .report import write_report

    print(write_report(Pipeline(load_config(Path(args.run) / "config.yaml"), progress=False)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ampo", description=__doc__.split("\n\n")[0])
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("run", help="run self-play rounds from a YAML config",
                       description="Run R rounds of generate -> score -> embed -> select -> train -> evaluate. "
                                   "Rerunning resumes; changed options rerun only the stages they affect.")
    s.add_argument("config", nargs="?", help="YAML config (see src/ampo/recipes/demo.yaml)")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. select.k=5 train.loss=swepo")
    s.set_defaults(fn=_cmd_run)

    s = sub.add_parser("demo", help="the built-in offline recipe (SmolLM2-135M, built-in reward, LoRA)")
    s.add_argument("--out", help="run folder (default runs/demo); rerunning on it resumes")
    s.add_argument("overrides", nargs="*", help="dotted overrides of the demo recipe, e.g. rounds=1")
    s.set_defaults(fn=_cmd_demo)

    s = sub.add_parser("generate", help="sample N responses per prompt into a pool file")
    s.add_argument("--input", required=True, help="prompts: JSONL/Parquet with a 'prompt' field, or .txt")
    s.add_argument("--output", required=True, help="pool file (.jsonl or .parquet)")
    s.add_argument("--policy", default="smollm2-135m-instruct", help="built-in name, local folder or hub id")
    s.add_argument("--backend", default="hf", choices=["hf", "vllm"])
    s.add_argument("--n", type=int, default=8, help="responses per prompt")
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--batching", default="continuous", choices=["continuous", "hf"],
                   help="continuous: finished rows leave the batch and waiting prompts fill in; "
                        "hf: transformers generate, --prompts-per-batch prompts at a time")
    s.add_argument("--batch-rows", type=int, default=128, help="rows decoded together (continuous batching)")
    s.add_argument("--prompts-per-batch", type=int, default=8, help="prompts per generate call (--batching hf)")
    s.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: bf16 on a CPU with native bf16 (avx512_bf16, AMX) or CUDA, else fp32")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--trust-remote-code", action="store_true")
    s.set_defaults(fn=_cmd_generate)

    s = sub.add_parser("score", help="add rewards to a pool file")
    s.add_argument("--input", required=True)
    s.add_argument("--output", required=True)
    s.add_argument("--reward", default="builtin", help="builtin | module:function | reward-model folder")
    s.set_defaults(fn=_cmd_score)

    s = sub.add_parser("embed", help="add response embeddings to a pool file")
    s.add_argument("--input", required=True)
    s.add_argument("--output", required=True)
    s.add_argument("--embedder", default="minilm", help="minilm | policy | sentence-transformers folder")
    s.add_argument("--policy", default="smollm2-135m-instruct", help="the policy, for --embedder policy")
    s.set_defaults(fn=_cmd_embed)

    from .selection import SELECTORS

    s = sub.add_parser("select", help="active selection on a scored (and embedded) pool file")
    s.add_argument("--input", required=True)
    s.add_argument("--output", required=True)
    s.add_argument("--strategy", default="optselect", choices=list(SELECTORS))
    s.add_argument("--k", type=int, default=3, help="negatives per prompt")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--trl-pairs", help="also write the groups as TRL prompt/chosen/rejected pairs here")
    s.set_defaults(fn=_cmd_select)

    s = sub.add_parser("train-rm", help="train a reward model on preference pairs (MMPO soft labels or BT)")
    s.add_argument("--input", required=True, help="JSONL/Parquet pairs: prompt, chosen, rejected "
                                                   "[, score_chosen, score_rejected]")
    s.add_argument("--output", required=True, help="folder for the reward model")
    s.add_argument("--soft-gamma", type=float, default=None,
                   help="MMPO: soft labels sigmoid(gamma * score margin); omit for hard labels")
    s.add_argument("--epochs", type=int, default=2)
    s.add_argument("--lr", type=float, default=1e-4)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=_cmd_train_rm)

    s = sub.add_parser("report", help="rewrite report.md and plots of a finished run folder")
    s.add_argument("run")
    s.set_defaults(fn=_cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s ampo %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"ampo: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
