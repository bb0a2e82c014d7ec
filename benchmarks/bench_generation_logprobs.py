"""Benchmark generation (prefill sharing on/off) and chunked log-probs on SmolLM2-135M-Instruct.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_generation_logprobs.py [--quick]

Generation: responses/s with and without prefill sharing, run back to back in one process,
alternating, repeated; the fastest repeat of each is reported (on a shared machine the minimum is
the least disturbed). Log-probs: forward + backward throughput (completion tokens/s) and peak
memory of the chunked `sequence_logprobs` against the naive full-logits computation, with and
without gradient checkpointing of the trunk (`-gc`, as the trainer can run it). Each log-prob
variant runs in its own subprocess; memory is the kernel's
peak resident set size (VmHWM, reset through /proc/self/clear_refs just before the measured pass)
minus the resident size before it, i.e. what the pass itself added (torch's CPU tensors live in
ordinary process memory, so this counts them; tracemalloc would not).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from ampo.generation import GenerationConfig, HFGenerator
from ampo.logprobs import build_rows, sequence_logprobs
from ampo.models import DEFAULT_POLICY, encode_prompt, load_policy

PROMPTS = [
    "Write a short, cheerful story about a cat who learns to swim.",
    "Explain in two sentences why the sky is blue.",
    "Give me three tips for staying focused while studying.",
    "What is a good name for a friendly robot, and why?",
]


def bench_generation(n: int, n_prompts: int, max_new_tokens: int, repeats: int) -> dict:
    """Responses/s for share_prefill True and False, alternating in one process."""
    model, tokenizer = load_policy(DEFAULT_POLICY)
    prompts = PROMPTS[:n_prompts]
    times: dict[bool, list[float]] = {True: [], False: []}
    tokens: dict[bool, int] = {}
    for _ in range(repeats):
        for share in (True, False):
            config = GenerationConfig(n=n, max_new_tokens=max_new_tokens, share_prefill=share)
            start = time.perf_counter()
            out = HFGenerator(model, tokenizer, config).generate(prompts, progress=False)
            times[share].append(time.perf_counter() - start)
            tokens[share] = sum(s.n_tokens for group in out for s in group)
    result = {"prompts": len(prompts), "n": n, "max_new_tokens": max_new_tokens, "repeats": repeats}
    result["prompt_tokens"] = [len(encode_prompt(tokenizer, p)) for p in prompts]
    for share, label in ((True, "shared"), (False, "unshared")):
        result[label] = {
            "seconds": [round(t, 2) for t in times[share]],
            "responses_per_s": round(len(prompts) * n / min(times[share]), 2),
            "generated_tokens": tokens[share],
        }
    result["speedup"] = round(min(times[False]) / min(times[True]), 2)
    return result


def rss_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ValueError(f"{field} missing from /proc/self/status")


def naive_logprobs(model, input_ids, attention_mask, completion_mask) -> torch.Tensor:
    """Full `[rows, L, vocab]` fp32 logits, then log-softmax and gather."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    token_logps = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (token_logps * completion_mask[:, 1:]).sum(-1)


def logprob_child(variant: str, rows: int, response_tokens: int, repeats: int) -> dict:
    """One log-prob variant (`naive` or `chunk<N>`, `-gc` for gradient checkpointing): forward +
    backward, time and peak memory."""
    model, tokenizer = load_policy(DEFAULT_POLICY)
    model.train()
    method, _, gc = variant.partition("-")
    if gc:
        model.gradient_checkpointing_enable()
    gen = torch.Generator().manual_seed(0)
    prompts = [encode_prompt(tokenizer, PROMPTS[i % len(PROMPTS)]) for i in range(rows)]
    responses = [
        torch.randint(100, 40000, (response_tokens - 8 * (i % 4),), generator=gen).tolist() for i in range(rows)
    ]
    batch = build_rows(prompts, responses, tokenizer.pad_token_id)

    def step() -> None:
        model.zero_grad(set_to_none=False)  # keep the gradient buffers: they are not the pass's
        if method == "naive":
            logps = naive_logprobs(model, *batch)
        else:
            logps = sequence_logprobs(model, *batch, chunk_size=int(method.removeprefix("chunk")))[0]
        logps.sum().backward()

    step()  # warm-up; also allocates the parameter gradients
    times, peaks = [], []
    for _ in range(repeats):
        before = rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        peaks.append(rss_kib("VmHWM") - before)
    completion_tokens = int(batch[2].sum())
    return {
        "variant": variant,
        "rows": rows,
        "row_length": batch[0].shape[1],
        "completion_tokens": completion_tokens,
        "seconds": [round(t, 2) for t in times],
        "tokens_per_s": round(completion_tokens / min(times), 1),
        "peak_added_mib": round(max(peaks) / 1024, 1),
    }


def bench_logprobs(variants: list[str], rows: int, response_tokens: int, repeats: int) -> list[dict]:
    """Run each variant in a fresh subprocess so that peaks do not mix."""
    results = []
    for variant in variants:
        cmd = [sys.executable, __file__, "--child", variant, "--rows", str(rows),
               "--threads", str(torch.get_num_threads()), "--response-tokens", str(response_tokens),
               "--repeats", str(repeats)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (a smoke run)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--response-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--only", choices=["generation", "logprobs"], help="run one half")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(logprob_child(args.child, args.rows, args.response_tokens, args.repeats)))
        return

    if args.quick:
        gen_sizes = {"n": 4, "n_prompts": 2, "max_new_tokens": 16, "repeats": 1}
        lp_sizes = {"rows": 4, "response_tokens": 32, "repeats": 1}
    else:
        gen_sizes = {"n": 8, "n_prompts": 4, "max_new_tokens": 64, "repeats": args.repeats}
        lp_sizes = {"rows": args.rows, "response_tokens": args.response_tokens, "repeats": args.repeats}
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads", flush=True)
    if args.only != "logprobs":
        print("generation:", json.dumps(bench_generation(**gen_sizes)), flush=True)
    if args.only != "generation":
        variants = ["naive", "chunk1024", "chunk256"]
        bench_logprobs(variants + [v + "-gc" for v in variants], **lp_sizes)


if __name__ == "__main__":
    main()
