"""How much does the tuned study's held-out metric move when the policy does not change?

The tuned IFEval study (alignment_ifeval_tuned.py) chooses settings by the `ifeval` reward of one
greedy answer per held-out prompt (32 prompts). Greedy bf16 answers depend on the arithmetic's
rounding (docs/models_generation.md: the decode batch alone re-draws two thirds of them), so a
policy that is numerically a hair away from the initial one gets other answers. This script
measures the initial policy's metric under perturbations that do not change what it has learned:
the baseline's own setting, fp32, the prompts in another order, smaller decode batches, and the
weights plus noise far below what 16 LoRA steps at 3e-6 move them (relative 1e-4). The spread of
these values is the metric's floor: differences between trials smaller than it are noise.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/heldout_noise.py [--split FILE] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPLIT = HERE.parent / "runs" / "alignment_ifeval_tuned" / "sweeps" / "dpo_best-vs-worst" / "trials" / "000" / "split.json"


def held_out(split: Path) -> list[dict]:
    """The held-out prompt rows (id, prompt, meta) that a run's split.json records."""
    return json.loads(split.read_text())["heldout"]


def perturbed(policy, scale: float, seed: int):
    """A copy of the policy with every weight w -> w * (1 + scale * N(0, 1))."""
    import copy

    import torch

    model, tok = policy
    noisy = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in noisy.parameters():
            p.mul_(1 + scale * torch.randn(p.shape, generator=g))
    return noisy, tok


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default=str(SPLIT), help="a tuned trial's split.json (its held-out prompt ids)")
    ap.add_argument("--draws", type=int, default=10, help="draws of the weight noise")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from ampo.config import EvalConfig
    from ampo.evaluation import sample_and_score
    from ampo.hashing import seed_from
    from ampo.models import DEFAULT_POLICY, load_policy
    from ampo.rewards import load_reward

    torch.set_num_threads(1)
    prompts = held_out(Path(args.split))
    reward = load_reward("ifeval:degeneracy=0.2")
    cfg = EvalConfig(samples_per_prompt=1, temperature=0.0, max_new_tokens=128)
    policy = load_policy(DEFAULT_POLICY)
    seed = seed_from("eval", 0)  # the tuned trials' evaluation seed (seed 0); greedy: unused

    def metric(pol, order=None, dtype="auto"):
        chosen = [prompts[i] for i in order] if order is not None else prompts
        rows = sample_and_score(pol, reward, chosen, cfg, seed=seed, progress=False, dtype=dtype)
        by_id = {r["id"]: r for r in rows}
        return [by_id[p["id"]] for p in prompts]  # back in the baseline's order

    base = metric(policy)
    variants = {"as the baseline (bf16, one batch)": base,
                "fp32": metric(policy, dtype="float32"),
                "prompts reversed": metric(policy, order=list(range(len(prompts)))[::-1])}
    for s in range(1, args.draws + 1):
        variants[f"weights x (1 + 1e-4 noise), draw {s}"] = metric(perturbed(policy, 1e-4, s))
    out = {}
    print(f"{len(prompts)} held-out prompts, greedy, 128 new tokens; {DEFAULT_POLICY}")
    for name, rows in variants.items():
        value = float(np.mean([r["rewards"][0] for r in rows]))
        same = sum(r["responses"][0] == b["responses"][0] for r, b in zip(rows, base))
        out[name] = {"mean_reward": value, "identical_to_baseline": same}
        print(f"  {name:<42} mean_reward {value:.3f}   answers identical to the baseline's: {same}/{len(rows)}")
    values = [v["mean_reward"] for v in out.values()]
    noisy = [v["mean_reward"] for k, v in out.items() if k.startswith("weights")]
    print(f"  range {min(values):.3f} .. {max(values):.3f}; the {len(noisy)} noise draws: mean {np.mean(noisy):.3f}, "
          f"sd {np.std(noisy, ddof=1):.3f}" if len(noisy) > 1 else "")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
