"""Does a greedy benchmark answer depend on which other prompts share its decode batch?

The benchmark evaluation (`ampo.ifeval.evaluate.generate`) decodes the prompts in resumable
shards (`shard_prompts`) with continuous batching, so a shard's size sets which rows share each
decode step. This script answers the first PROMPTS IFEval prompts greedily (128 new tokens, the
initial policy) with two shard sizes, in each dtype, and prints the time, how many answers are
identical between the two shard sizes, and the IFEval average (strict) of each.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/bench_batch_invariance.py [--prompts 128] \
        [--shards 32 128] [--dtypes bfloat16 float32]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--shards", type=int, nargs=2, default=[32, 128])
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    from ampo.ifeval.evaluate import generate, load_items, score
    from ampo.models import DEFAULT_POLICY, load_policy

    torch.set_num_threads(args.threads)
    items = load_items("ifeval")[:args.prompts]
    policy = load_policy(DEFAULT_POLICY)
    print(f"{len(items)} IFEval prompts, greedy, 128 new tokens, {DEFAULT_POLICY}, {args.threads} thread(s)")
    for dtype in args.dtypes:
        answers = []
        for shard in args.shards:
            with tempfile.TemporaryDirectory() as d:
                wall, cpu = time.perf_counter(), time.process_time()
                rows = generate(policy, items, Path(d) / "parts", f"{dtype}-{shard}", 128, shard_prompts=shard,
                                progress=False, dtype=dtype)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            metrics, _ = score("ifeval", list(zip(items, [r["response"] for r in rows])), 200, 0)
            answers.append([r["response"] for r in rows])
            print(f"{dtype:>8} shard {shard:>3}: {wall:6.1f} s wall, {cpu:6.1f} s CPU, "
                  f"{sum(r['n_tokens'] for r in rows)} tokens, IFEval average {100 * metrics['avg_prompt_inst_strict_acc']:.2f}")
        same = sum(a == b for a, b in zip(*answers))
        print(f"{dtype:>8}: {same} of {len(items)} answers identical between shards of {args.shards[0]} and {args.shards[1]}")


if __name__ == "__main__":
    main()
