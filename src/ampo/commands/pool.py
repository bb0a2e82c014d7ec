"""One command per stage on files a user already has: `ampo generate`, `score`, `embed`, `select`."""

from __future__ import annotations


def cmd_generate(args) -> None:
    import torch

    from ..data import output_format, read_prompt_rows, write_rows
    from ..backends import make_generator
    from ..generation import GenerationConfig, resolve_dtype
    from ..models import load_policy
    from ..stages import sample_rows

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


def cmd_score(args) -> None:
    from ..data import output_format, read_pool, write_pool
    from ..rewards import load_reward, resolve_aggregate, reward_kind, score_records

    output_format(args.output)
    how = resolve_aggregate(args.aggregate, reward_kind(args.reward))
    pool, layout = read_pool(args.input)
    for rec, row in zip(pool, score_records(load_reward(args.reward), pool, how, args.unfinished_reward)):
        rec.rewards = row["rewards"]
        if "pref_logits" in row:
            rec.extra["pref_logits"] = row["pref_logits"]
    write_pool(args.output, pool)
    print(f"read {args.input} ({layout} layout); scored {sum(len(r.responses) for r in pool)} responses "
          f"with '{args.reward}' -> {args.output}")


def _embed_records(pool, embedder: str, policy: str) -> int:
    """Embed every response of `pool` in place with `embedder`; return the width."""
    from ..embeddings import load_embedder
    from ..stages import embed_pool

    loaded = None
    if embedder == "policy":
        from ..models import load_policy

        loaded = load_policy(policy)
    for rec, emb in zip(pool, embed_pool(load_embedder(embedder, policy=loaded), pool)):
        rec.embeddings = emb
    return pool[0].embeddings.shape[1]


def cmd_embed(args) -> None:
    from ..data import output_format, read_pool, write_pool

    output_format(args.output)
    pool, layout = read_pool(args.input)
    width = _embed_records(pool, args.embedder, args.policy)
    write_pool(args.output, pool)
    print(f"read {args.input} ({layout} layout); embedded {sum(len(r.responses) for r in pool)} responses "
          f"({width}-d) -> {args.output}")


def cmd_select(args) -> None:
    from ..data import atomic_path, dump_rows, output_format, read_pool, trl_pairs, write_rows
    from ..selection import SELECTORS
    from ..stages import select_pool

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
