"""GPM vs Bradley-Terry on a preference cycle: held-out pair accuracy of both reward-model heads.

Usage: python benchmarks/bench_gpm_cycle.py [--quick] [--out FILE.json]

Synthetic rock-paper-scissors preferences: a response names one of three moves inside a short
phrase, and rock beats scissors, scissors beats paper, paper beats rock (a balanced 3-cycle, so
no scalar reward can order more than 2 of the 3 pair types, and the Bradley-Terry optimum is
all moves tied). Both heads train with `ampo.rewards.train_reward_model` (what `ampo train-rm`
runs) on the bundled MiniLM backbone, on the same pair file; held-out pairs use phrases never
seen in training. Accuracy = share of held-out pairs scored the right way round (a tie counts as
wrong). Reported in docs/benchmarks.md and docs/preferences.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ampo.rewards.gpm import GPMHead
from ampo.rewards import load_reward, train_reward_model

MOVES = ("rock", "paper", "scissors")
BEATS = {"rock": "scissors", "scissors": "paper", "paper": "rock"}  # each move beats the next: a cycle
TRAIN_PHRASES = ("I pick {}.", "My choice is {}.", "Let's go with {}.", "Definitely {}!", "{} is my move.",
                 "I will play {}.")
HELD_OUT_PHRASES = ("I'd say {}.", "{}, for sure.", "My answer: {}.", "Going with {} this time.")
# A neutral prompt: one that names all three moves ("Rock, paper or scissors?") makes every
# response's starting embedding nearly the same, and from there neither head learns the cycle in
# this budget (docs/preferences.md: a balanced cycle starts at a saddle or a local minimum)
PROMPT = "Your move?"


def cycle_pairs(rng: random.Random, n: int, phrases: tuple[str, ...], prompt: str = PROMPT) -> list[dict]:
    """`n` pairs (winner, loser) of the cycle, each move pair equally often, phrased at random."""
    pairs = []
    for i in range(n):
        winner = MOVES[i % 3]
        pairs.append({"prompt": prompt, "chosen": rng.choice(phrases).format(winner),
                      "rejected": rng.choice(phrases).format(BEATS[winner])})
    rng.shuffle(pairs)
    return pairs


def accuracy(scorer, pairs: list[dict], pairwise: bool) -> dict[str, float]:
    """Held-out pair accuracy overall and per move pair (a tie is wrong)."""
    prompts = [p["prompt"] for p in pairs]
    if pairwise:
        margins = np.array([S[0, 1] for S in scorer.matrices(prompts, [[p["chosen"], p["rejected"]] for p in pairs])])
    else:
        margins = scorer(prompts, [p["chosen"] for p in pairs]) - scorer(prompts, [p["rejected"] for p in pairs])
    right = margins > 0
    per_move = {}
    for move in MOVES:
        rows = [i for i, p in enumerate(pairs) if move in p["chosen"].lower()]
        per_move[f"{move}>{BEATS[move]}"] = float(right[rows].mean())
    return {"accuracy": float(right.mean()), **per_move}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: few pairs, one epoch")
    ap.add_argument("--pairs", type=int, default=240, help="training pairs")
    ap.add_argument("--held-out", type=int, default=120, help="held-out pairs")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--dims", type=int, nargs="+", default=[4, 2], help="GPM value_head_dim values (2k) to train")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt", default=PROMPT, help="the one prompt of every pair")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    if args.quick:
        args.pairs, args.held_out, args.epochs, args.dims = 24, 24, 1, [4]
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    train = cycle_pairs(rng, args.pairs, TRAIN_PHRASES, args.prompt)
    held_out = cycle_pairs(rng, args.held_out, HELD_OUT_PHRASES, args.prompt)
    heads = [("bt", None)] + [("gpm", GPMHead(value_head_dim=d, tau=0.1)) for d in args.dims]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for head, gpm in heads:
            name = head if gpm is None else f"gpm 2k={gpm.value_head_dim}"
            t0 = time.perf_counter()
            folder = train_reward_model(train, Path(tmp) / name.replace(" ", "_"), epochs=args.epochs, lr=args.lr,
                                        max_length=32, seed=args.seed, head=head, gpm=gpm)
            seconds = time.perf_counter() - t0
            scorer = load_reward(str(folder))
            result = {"head": name, **accuracy(scorer, held_out, gpm is not None),
                      "train_accuracy": accuracy(scorer, train, gpm is not None)["accuracy"],
                      "train_seconds": round(seconds, 1)}
            results.append(result)
            print(json.dumps(result), flush=True)
    setup = {"pairs": args.pairs, "held_out": args.held_out, "epochs": args.epochs, "lr": args.lr,
             "batch_size": 16, "backbone": "bundled all-MiniLM-L6-v2", "prompt": args.prompt, "seed": args.seed, "quick": args.quick,
             "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
             "torch_threads": torch.get_num_threads()}
    print(f"\n{args.pairs} training pairs, {args.held_out} held-out pairs (unseen phrasings), "
          f"{args.epochs} epochs, lr {args.lr}, MiniLM backbone, prompt {args.prompt!r}\n")
    print("| head | held-out accuracy | " + " | ".join(f"{m}>{BEATS[m]}" for m in MOVES)
          + " | training-pair accuracy | train s |")
    print("|---|---|" + "---|" * len(MOVES) + "---|---|")
    for r in results:
        print(f"| {r['head']} | {r['accuracy']:.3f} | " + " | ".join(f"{r[f'{m}>{BEATS[m]}']:.2f}" for m in MOVES)
              + f" | {r['train_accuracy']:.3f} | {r['train_seconds']} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"setup": setup, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
