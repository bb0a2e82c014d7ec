"""Benchmark `train.dtype`: training step time in fp32 against bf16 autocast, and how closely the two agree.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/bench_train_dtype.py --threads 1 [--quick]

The real trainer (`ampo.trainer.GroupTrainer`, AdamW, no activation checkpointing) trains a LoRA
adapter (r=16, alpha 32, q/k/v/o: the demo's) on SmolLM2-135M-Instruct (fp32 weights) on real
batches: bundled demo prompts, K responses each sampled from the model itself (T=0.8, up to
`--max-new-tokens`), scored with the built-in reward, the best first. Four arms: the group loss
`ampo` and `dpo` (its reference log-probs computed first, in the arm's dtype), each with padded rows
and with shared-prefix rows (`train.shared_prefix`). Within an arm, fp32 and bf16 run back to back
in one process, alternating `--repeats` times, each from the same fresh adapter (one seed); the
speed-up is the median of the per-repeat ratios of median step times (the first step of each run
a warm-up), per wall second and per second of process CPU time (the steadier figure on a shared
machine; the load average is printed before and after). bf16 here is what `train.dtype: bfloat16`
runs: autocast, fp32 LoRA weights, fp32 log-softmax and loss, and on CPU the attention in fp32
(`ampo.precision.fp32_attention_under_cpu_autocast`: CPU bf16 attention's backward is slower than fp32's).

Agreement, per arm, on the first training batch, from the same fresh adapter: the loss and the
gradient (every LoRA parameter) in bf16 against fp32, as relative differences, plus the summed
log-probs' mean absolute difference. For dpo, the initial log-ratio policy - reference (0 in
exact arithmetic, since the fresh adapter leaves the policy equal to its reference) when the
reference is computed in the policy's dtype and when it is computed in fp32 under a bf16 policy.
The machine's CPU model and bf16 flags (avx512_bf16, amx_bf16) are printed first: "auto"
chooses bf16 only where they exist. Results and command: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_train_vs_trl import StepTimer  # noqa: E402

from ampo.layouts import response_logprobs  # noqa: E402
from ampo.logprobs import response_ids  # noqa: E402
from ampo.models import DEFAULT_POLICY, encode_prompt, load_policy  # noqa: E402
from ampo.precision import BF16_CPU_FLAGS, compute_context, cpu_flags, resolve_train_dtype  # noqa: E402

DTYPES = ("float32", "bfloat16")
ARMS = ("ampo", "ampo-shared", "dpo", "dpo-shared")
PROMPTS_FILE = Path(__file__).resolve().parents[1] / "src" / "ampo" / "recipes" / "prompts.jsonl"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def make_data(model, tokenizer, n_prompts: int, k: int, max_new_tokens: int) -> tuple[list, list, list]:
    """`n_prompts` bundled prompts, `k` responses each sampled from the model, scored with the built-in
    reward, best first: (prompts, responses, finished) with responses sorted by reward, descending."""
    from ampo.generation import GenerationConfig, HFGenerator
    from ampo.rewards import BuiltinReward

    rows = [json.loads(line) for line in PROMPTS_FILE.read_text().splitlines()[:n_prompts]]
    prompts = [row["prompt"] for row in rows]
    config = GenerationConfig(n=k, temperature=0.8, max_new_tokens=max_new_tokens, seed=0)
    samples = HFGenerator(model, tokenizer, config).generate(prompts, progress=False, keys=[r["id"] for r in rows])
    reward = BuiltinReward()
    responses, finished = [], []
    for prompt, group in zip(prompts, samples):
        scores = reward([prompt] * len(group), [s.text for s in group])
        order = sorted(range(len(group)), key=lambda j: -scores[j])
        responses.append([group[j].text for j in order])
        finished.append([group[j].finished for j in order])
    return prompts, responses, finished


def fresh_adapter(base):
    """The same LoRA adapter every time (seed 0) on a copy of the base model, in train mode."""
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    set_seed(0)
    model = get_peft_model(copy.deepcopy(base), LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM"))
    return model.train()


def make_trainer(model, tokenizer, data, arm: str, dtype: str, prompts_per_step: int, steps: int, out: str):
    """A GroupTrainer for `arm` computing in `dtype`; dpo's references are computed first, in `dtype`."""
    from transformers import TrainingArguments

    from ampo.trainer import Group, GroupCollator, GroupDataset, GroupTrainer

    prompts, responses, finished = data
    loss = arm.split("-")[0]
    shared = arm.endswith("-shared")
    refs = None
    if loss == "dpo":
        refs, _ = response_logprobs(model, tokenizer, prompts, responses, finished, batch_rows=16,
                                    shared_prefix=shared, dtype=dtype)
        model.train()
    groups = [Group(prompt_ids=encode_prompt(tokenizer, p),
                    response_ids=[response_ids(tokenizer, t, f) for t, f in zip(texts, flags)],
                    rewards=[1.0 - j / len(texts) for j in range(len(texts))],
                    ref_logps=None if refs is None else [refs[i].tolist()])
              for i, (p, texts, flags) in enumerate(zip(prompts, responses, finished))]
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=prompts_per_step, max_steps=steps, learning_rate=3e-4,
        lr_scheduler_type="constant", logging_steps=10**6, save_strategy="no", report_to="none", use_cpu=True,
        activation_checkpointing=False, disable_tqdm=True, dataloader_num_workers=0,
        train_sampling_strategy="sequential", seed=0, remove_unused_columns=False)
    return GroupTrainer(model=model, args=args, train_dataset=GroupDataset(groups),
                        data_collator=GroupCollator(tokenizer.pad_token_id, shared_prefix=shared),
                        loss_name=loss, loss_hparams={"beta": 0.1} if loss == "dpo" else {}, compute_dtype=dtype)


def time_run(base, tokenizer, data, arm: str, dtype: str, prompts_per_step: int, steps: int) -> dict:
    """`steps` training steps of a fresh adapter: median wall and CPU seconds per step after the first."""
    model = fresh_adapter(base)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        trainer = make_trainer(model, tokenizer, data, arm, dtype, prompts_per_step, steps, out)
        setup = time.perf_counter() - start  # includes dpo's reference pass
        timer = StepTimer()
        trainer.add_callback(timer)
        trainer.train()
    skip = 1 if len(timer.wall) > 1 else 0
    return {"step_wall_s": statistics.median(timer.wall[skip:]), "step_cpu_s": statistics.median(timer.cpu[skip:]),
            "steps_wall_s": [round(s, 2) for s in timer.wall], "setup_s": round(setup, 2)}


def agreement(base, tokenizer, data, arm: str, prompts_per_step: int) -> dict:
    """bf16 against fp32 on the first batch, from the same fresh adapter: loss, gradient, log-probs."""
    got = {}
    for dtype in DTYPES:
        model = fresh_adapter(base)
        with tempfile.TemporaryDirectory() as out:
            trainer = make_trainer(model, tokenizer, data, arm, dtype, prompts_per_step, 1, out)
            batch = trainer.data_collator([trainer.train_dataset[i] for i in range(prompts_per_step)])
            model.zero_grad()
            loss, outputs = trainer.compute_loss(model, batch, return_outputs=True)
            loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad and p.grad is not None])
        got[dtype] = (float(loss), outputs["logps"].detach()[batch["mask"]], grad, batch)
    (l32, lp32, g32, _), (l16, lp16, g16, _) = got["float32"], got["bfloat16"]
    result = {
        "loss_fp32": round(l32, 5), "loss_bf16": round(l16, 5),
        "loss_rel_diff": abs(l16 - l32) / max(abs(l32), 1e-12),
        "grad_rel_diff": float((g16 - g32).norm() / g32.norm()),
        "grad_cosine": float(torch.nn.functional.cosine_similarity(g16, g32, dim=0)),
        "logp_mean_abs_diff": float((lp16 - lp32).abs().mean()),
        "logp_mean_abs_fp32": float(lp32.abs().mean()),
    }
    if arm.startswith("dpo"):
        result.update(initial_log_ratios(base, tokenizer, data, arm, prompts_per_step))
    return result


def initial_log_ratios(base, tokenizer, data, arm: str, prompts_per_step: int) -> dict:
    """Mean |policy - reference| log-prob over the first batch's responses at the fresh adapter (0 in
    exact arithmetic): the policy as the trainer computes it, the references over the whole pool as
    the reference pass batches them, in each combination of dtypes."""
    shared = arm.endswith("-shared")
    model = fresh_adapter(base)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(model, tokenizer, data, arm, "bfloat16", prompts_per_step, 1, tmp)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(prompts_per_step)])
        with torch.no_grad():
            policies = {}
            for dtype in DTYPES:
                with compute_context(dtype, "cpu"):
                    policies[dtype] = trainer.layout.logprobs(model, batch)[0]
            for ref_dtype in DTYPES:
                refs, _ = response_logprobs(model, tokenizer, *data, batch_rows=16, shared_prefix=shared,
                                            dtype=ref_dtype)
                ref = torch.zeros_like(policies["float32"])
                for b, row in enumerate(refs[:prompts_per_step]):
                    ref[b, : len(row)] = torch.from_numpy(row)
                for dtype, policy in policies.items():
                    gap = (policy - ref)[batch["mask"]].abs()
                    out[f"log_ratio_policy_{dtype}_ref_{ref_dtype}"] = float(gap.mean())
    return out


def quiet() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a CI smoke run: one arm pair, short responses")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--k", type=int, default=4, help="responses per group (the demo: 1 positive + 3 negatives)")
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps per run, the first a warm-up")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.arms, args.k, args.prompts_per_step, args.steps, args.max_new_tokens, args.repeats = (
            ["ampo", "dpo-shared"], 2, 1, 2, 8, 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    flags = cpu_flags()
    native = sorted(flags & BF16_CPU_FLAGS)
    print(f"cpu: {cpu_model()}; bf16 flags: {', '.join(native) or 'none'} (train.dtype auto -> "
          f"{resolve_train_dtype('auto')}); torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    base, tokenizer = load_policy(DEFAULT_POLICY)
    start = time.perf_counter()
    data = make_data(base, tokenizer, args.prompts_per_step * args.steps, args.k, args.max_new_tokens)
    tokens = [len(response_ids(tokenizer, t, f)) for texts, flags_ in zip(data[1], data[2])
              for t, f in zip(texts, flags_)]
    prompt_tokens = [len(encode_prompt(tokenizer, p)) for p in data[0]]
    print(f"data: {len(data[0])} prompts ({statistics.mean(prompt_tokens):.0f} tokens on average) x {args.k} "
          f"sampled responses ({statistics.mean(tokens):.1f} tokens on average, max {max(tokens)}) in "
          f"{time.perf_counter() - start:.0f} s; {args.prompts_per_step} groups per step, {args.steps} steps per run "
          f"(the first a warm-up), {args.repeats} repeats", flush=True)
    results = {"cpu": cpu_model(), "bf16_flags": native, "threads": torch.get_num_threads(), "args": vars(args),
               "arms": {}}
    for arm in args.arms:
        runs: dict[str, list[dict]] = {d: [] for d in DTYPES}
        for _ in range(args.repeats):
            for dtype in DTYPES:
                runs[dtype].append(time_run(base, tokenizer, data, arm, dtype, args.prompts_per_step, args.steps))
                print(f"  {arm} {dtype}: steps {runs[dtype][-1]['steps_wall_s']} s", flush=True)
        ratios = {key: [a[key] / b[key] for a, b in zip(runs["float32"], runs["bfloat16"])]
                  for key in ("step_wall_s", "step_cpu_s")}
        summary = {
            "step_wall_s": {d: round(statistics.median(r["step_wall_s"] for r in runs[d]), 3) for d in DTYPES},
            "speedup_wall": round(statistics.median(ratios["step_wall_s"]), 2),
            "speedup_cpu": round(statistics.median(ratios["step_cpu_s"]), 2),
            "speedup_wall_per_repeat": [round(r, 2) for r in ratios["step_wall_s"]],
            "setup_s": {d: [r["setup_s"] for r in runs[d]] for d in DTYPES},
            "agreement": agreement(base, tokenizer, data, arm, args.prompts_per_step),
        }
        results["arms"][arm] = summary
        print(f"{arm}: {json.dumps(summary)}", flush=True)
    print("summary: " + json.dumps({arm: {"speedup_wall": s["speedup_wall"], "speedup_cpu": s["speedup_cpu"],
                                          "loss_rel_diff": f"{s['agreement']['loss_rel_diff']:.2e}",
                                          "grad_rel_diff": f"{s['agreement']['grad_rel_diff']:.2e}"}
                                    for arm, s in results["arms"].items()}), flush=True)
    results["load_average_end"] = os.getloadavg()
    print(f"load average at the end: {os.getloadavg()[0]:.2f}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
