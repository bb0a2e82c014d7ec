"""Benchmark training throughput and peak memory: ampo's GroupTrainer against TRL's DPOTrainer.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/bench_train_vs_trl.py [--quick]

Both arms fully fine-tune SmolLM2-135M-Instruct (fp32, CPU, AdamW, no activation checkpointing)
on the same selected groups: per prompt 1 positive + K-1 = 7 negatives, fixed synthetic responses
of 32-64 tokens (EOS included). ampo trains each group with loss `dpo` (beta 0.1); TRL trains the
7 equivalent (positive, negative) pairs with loss `sigmoid` (beta 0.1). Both precompute reference
log-probs with the initial policy before training. A step holds the same prompts in both arms
(`--prompts-per-step` groups for ampo, 7x as many pairs for TRL), in the same order.

Throughput is unique responses trained per second (K per prompt in both arms; TRL forwards the
positive once per pair) at the median step time, the first step being a warm-up, both per wall
second and per second of process CPU time (steadier on a shared machine, where a process waits for
a core). Each arm runs in a fresh subprocess, the arms alternating, `--repeats` times; a ratio is
the median of the per-repeat ratios. Work per step (rows, padded trunk positions, positions the LM
head scores) is read from the batches each trainer's own collator builds. Memory: the whole
process's peak resident set size (`ru_maxrss`), and the peak the training loop adds over the
resident size just before it (VmHWM, reset through /proc/self/clear_refs), which holds gradients,
optimiser state and activations. Results and their explanation: docs/benchmarks_training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from transformers import TrainerCallback

from ampo.layouts import response_logprobs
from ampo.logprobs import response_ids
from ampo.models import DEFAULT_POLICY, chat_prompt, encode_prompt, load_policy

K = 8
BETA = 0.1
PROMPTS = [
    "Write a short, cheerful story about a cat who learns to swim.",
    "Explain in two sentences why the sky is blue.",
    "Give me three tips for staying focused while studying.",
    "What is a good name for a friendly robot, and why?",
    "Describe a rainy afternoon in a small town.",
    "How do plants turn sunlight into food?",
    "Suggest a simple recipe for a quick breakfast.",
    "Why do people enjoy listening to music?",
]
WORDS = (
    "the a cat dog sun rain garden robot music light water tree small happy quiet bright slowly "
    "because every morning evening friend story learns sings walks finds gives simple warm blue "
    "green river city book tea bread window and but so then with under over near"
).split()


def synthetic_response(tokenizer, rng: random.Random, tokens: int) -> str:
    """A fixed pseudo-sentence whose `response_ids` (EOS included) has exactly `tokens` tokens."""
    words: list[str] = []
    while len(response_ids(tokenizer, " ".join(words), finished=True)) < tokens:
        words.append(rng.choice(WORDS))
    while len(response_ids(tokenizer, " ".join(words), finished=True)) > tokens:
        words.pop()  # a word can take more than one token: drop until it fits, then pad below
    text = " ".join(words)
    while len(response_ids(tokenizer, text, finished=True)) < tokens:
        text += "."
    return text


def make_data(tokenizer, n_prompts: int, min_tokens: int, max_tokens: int) -> tuple[list[str], list[list[str]]]:
    """`n_prompts` prompts (cycling `PROMPTS`) with K fixed responses each, positive first."""
    rng = random.Random(0)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n_prompts)]
    responses = [
        [synthetic_response(tokenizer, rng, rng.randint(min_tokens, max_tokens)) for _ in range(K)]
        for _ in prompts
    ]
    return prompts, responses


class StepTimer(TrainerCallback):
    """Wall and process CPU time of each optimiser step (forward, backward, clipping, AdamW update)."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._start = (0.0, 0.0)

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kwargs):
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])


def common_args(output_dir: str, batch: int, steps: int) -> dict:
    """TrainingArguments shared by both arms: fp32 CPU, no checkpointing, sequential batches."""
    return dict(
        output_dir=output_dir, per_device_train_batch_size=batch, max_steps=steps, learning_rate=1e-6,
        lr_scheduler_type="constant", logging_steps=10**6, save_strategy="no", report_to="none", use_cpu=True,
        bf16=False, activation_checkpointing=False, disable_tqdm=True, dataloader_num_workers=0,
        train_sampling_strategy="sequential", seed=0,
    )


def ampo_trainer(model, tokenizer, prompts, responses, args: dict, chunk: int, shared_prefix: bool = False):
    """ampo's GroupTrainer (loss dpo) on the groups, reference log-probs computed first; with
    `shared_prefix`, one row per group (the prompt forwarded once)."""
    from transformers import TrainingArguments

    from ampo.trainer import Group, GroupCollator, GroupDataset, GroupTrainer

    refs, _ = response_logprobs(model, tokenizer, prompts, responses, batch_rows=K, shared_prefix=shared_prefix)
    groups = [
        Group(prompt_ids=encode_prompt(tokenizer, p), response_ids=[response_ids(tokenizer, t, True) for t in texts],
              rewards=[1.0] + [0.0] * (K - 1), ref_logps=[ref.tolist()])
        for p, texts, ref in zip(prompts, responses, refs)
    ]
    return GroupTrainer(model=model, args=TrainingArguments(**args, remove_unused_columns=False),
                        train_dataset=GroupDataset(groups),
                        data_collator=GroupCollator(tokenizer.pad_token_id, shared_prefix=shared_prefix),
                        loss_name="dpo", loss_hparams={"beta": BETA}, logprob_chunk=chunk)


def trl_trainer(model, tokenizer, prompts, responses, args: dict):
    """TRL's DPOTrainer (sigmoid) on the K-1 pairs per prompt, reference log-probs precomputed."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    rows = [{"prompt": chat_prompt(tokenizer, p), "chosen": texts[0], "rejected": neg}
            for p, texts in zip(prompts, responses) for neg in texts[1:]]
    config = DPOConfig(**args, beta=BETA, loss_type=["sigmoid"], max_length=None, precompute_ref_log_probs=True,
                       precompute_ref_batch_size=K - 1)
    trainer = DPOTrainer(model=model, args=config, processing_class=tokenizer, train_dataset=Dataset.from_list(rows))
    check_same_ids(trainer.train_dataset, tokenizer, prompts, responses)
    return trainer


def check_same_ids(dataset, tokenizer, prompts, responses) -> None:
    """Refuse to compare if TRL tokenised the pairs differently from ampo's groups."""
    expected = [
        (encode_prompt(tokenizer, p), response_ids(tokenizer, texts[0], True), response_ids(tokenizer, neg, True))
        for p, texts in zip(prompts, responses) for neg in texts[1:]
    ]
    got = list(zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"]))
    if got != expected:
        raise ValueError("TRL's token ids differ from ampo's: the comparison would not be controlled")


def work_per_step(trainer, batch_size: int, steps: int, head_on_all_positions: bool) -> dict:
    """Mean rows, padded positions run through the trunk, and positions scored by the LM head per
    step, read from the batches the trainer's own collator builds."""
    data = trainer.train_dataset
    batches = [trainer.data_collator([data[i] for i in range(s * batch_size, (s + 1) * batch_size)])
               for s in range(steps)]
    rows = [b["input_ids"].shape[0] for b in batches]
    positions = [b["input_ids"].numel() for b in batches]
    if head_on_all_positions:  # TRL's fused head on CPU scores every shifted position
        head = [p - r for p, r in zip(positions, rows)]
    elif "segment_ids" in batches[0]:  # shared-prefix rows: the response tokens
        head = [int((b["segment_ids"] > 0).sum()) for b in batches]
    else:  # ampo's head sees the completion tokens only
        head = [int(b["completion_mask"].sum()) for b in batches]
    return {name: round(statistics.mean(v), 1) for name, v in
            (("rows", rows), ("trunk_positions", positions), ("head_positions", head))}


def status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ValueError(f"{field} missing from /proc/self/status")


def quiet() -> None:
    """Silence progress bars and deprecation chatter in a child; errors still reach stderr."""
    import datasets
    import transformers

    os.environ["TQDM_DISABLE"] = "1"  # TRL's reference pass reads this
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


def check_arm(arm: str) -> str:
    """Accept `ampo`, `ampo-shared` (shared-prefix rows), `ampo-chunk<N>` (N >= 1) or `trl`."""
    suffix = arm.removeprefix("ampo-chunk")
    if arm in ("ampo", "ampo-shared", "trl") or (suffix != arm and suffix.isdigit() and int(suffix) >= 1):
        return arm
    raise ValueError(f"unknown arm {arm!r}: use ampo, ampo-shared, ampo-chunk<N> or trl")


def child(arm: str, prompts_per_step: int, steps: int, min_tokens: int, max_tokens: int) -> dict:
    """Train one arm (`ampo`, `ampo-shared`, `ampo-chunk<N>` or `trl`) for `steps` steps and measure it."""
    quiet()
    model, tokenizer = load_policy(DEFAULT_POLICY)
    model.train()
    prompts, responses = make_data(tokenizer, prompts_per_step * steps, min_tokens, max_tokens)
    start = time.perf_counter()
    batch = prompts_per_step * (K - 1) if arm == "trl" else prompts_per_step
    with tempfile.TemporaryDirectory() as out:
        if arm == "trl":
            trainer = trl_trainer(model, tokenizer, prompts, responses, common_args(out, batch, steps))
        else:
            chunk = int(arm.removeprefix("ampo-chunk")) if arm.startswith("ampo-chunk") else 1024
            trainer = ampo_trainer(model, tokenizer, prompts, responses, common_args(out, batch, steps), chunk,
                                   shared_prefix=arm == "ampo-shared")
        setup_seconds = time.perf_counter() - start
        work = work_per_step(trainer, batch, steps, head_on_all_positions=arm == "trl")
        timer = StepTimer()
        trainer.add_callback(timer)
        before = status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        trainer.train()
        train_peak = status_kib("VmHWM") - before
    skip = 1 if len(timer.wall) > 1 else 0  # a single step (--quick) is timed warm-up included
    wall, cpu = statistics.median(timer.wall[skip:]), statistics.median(timer.cpu[skip:])
    unique_tokens = sum(len(response_ids(tokenizer, t, True)) for texts in responses for t in texts) / steps
    return {
        "arm": arm,
        "step_wall_s": [round(s, 2) for s in timer.wall],
        "step_cpu_s": [round(s, 2) for s in timer.cpu],
        "unique_responses_per_s": round(prompts_per_step * K / wall, 3),
        "unique_responses_per_cpu_s": round(prompts_per_step * K / cpu, 3),
        "unique_response_tokens_per_s": round(unique_tokens / wall, 1),
        **work,
        "setup_seconds": round(setup_seconds, 1),  # includes the reference log-prob pass
        "train_peak_added_mib": round(train_peak / 1024),
        "process_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def run_child(arm: str, args) -> dict:
    """One arm in a fresh interpreter, so that peaks and allocator state do not mix."""
    cmd = [sys.executable, __file__, "--child", arm, "--prompts-per-step", str(args.prompts_per_step),
           "--steps", str(args.steps), "--min-tokens", str(args.min_tokens), "--max-tokens", str(args.max_tokens)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Medians per arm, and each arm's median per-repeat ratio against the last arm listed."""
    keys = ("unique_responses_per_s", "unique_responses_per_cpu_s", "train_peak_added_mib", "process_peak_rss_mib")
    summary = {arm: {key: round(statistics.median(r[key] for r in results), 3) for key in keys}
               for arm, results in runs.items()}
    baseline = list(runs)[-1]
    for arm in list(runs)[:-1]:
        for key in ("unique_responses_per_s", "unique_responses_per_cpu_s"):
            ratios = [a[key] / b[key] for a, b in zip(runs[arm], runs[baseline])]
            summary[arm][f"{key}_ratio_vs_{baseline}"] = round(statistics.median(ratios), 2)
            summary[arm][f"{key}_ratios_per_repeat"] = [round(r, 2) for r in ratios]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a CI smoke run: short responses, one repeat")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--prompts-per-step", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="optimiser steps per run, the first a warm-up")
    parser.add_argument("--min-tokens", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--arms", nargs="+", type=check_arm, default=["ampo", "trl"],
                        help="arms in the order they alternate: ampo, ampo-shared, ampo-chunk<N>, trl; "
                        "ratios are against the last")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        result = child(check_arm(args.child), args.prompts_per_step, args.steps, args.min_tokens, args.max_tokens)
        print(json.dumps(result))
        return
    if args.quick:
        args.prompts_per_step, args.steps, args.min_tokens, args.max_tokens, args.repeats = 1, 1, 8, 16, 1

    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"torch {torch.__version__}, K={K}, prompts/step {args.prompts_per_step}, steps {args.steps}, "
          f"response tokens {args.min_tokens}-{args.max_tokens}", flush=True)
    runs: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    for _ in range(args.repeats):
        for arm in args.arms:
            runs[arm].append(run_child(arm, args))
    print("summary:", json.dumps(summarise(runs)), flush=True)


if __name__ == "__main__":
    main()
