"""Time one generation backend on the IFEval workload (greedy, up to 512 tokens) on a CUDA GPU.

    python scripts/gpu_timing.py --backend hf|vllm --prompts 64 --out timing.json

Part of `scripts/gpu_check.sh`. `hf` times today's path (transformers `generate`, 8 prompts per
call) and the continuous-batching loop, both in bf16 on the GPU, and counts identical greedy
answers; `vllm` times `VLLMGenerator` (one `LLM.generate` call) and stores its answers so that the
report can compare them with the continuous loop's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_generation_logprobs import ifeval_prompts  # noqa: E402

from ampo.backends import make_generator  # noqa: E402
from ampo.generation import GenerationConfig, HFGenerator  # noqa: E402
from ampo.models import DEFAULT_POLICY, load_policy, resolve_policy  # noqa: E402

GREEDY = {"n": 1, "temperature": 0.0, "max_new_tokens": 512, "dtype": "bfloat16"}


def timed(generate, prompts) -> tuple[float, list]:
    """Seconds (after a CUDA sync) and outputs of one generate call."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = generate(prompts)
    torch.cuda.synchronize()
    return time.perf_counter() - start, out


def summary(seconds: float, out: list) -> dict:
    tokens = sum(s.n_tokens for group in out for s in group)
    return {"seconds": round(seconds, 2), "responses_per_s": round(len(out) / seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1), "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["hf", "vllm"], required=True)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    prompts, source = ifeval_prompts(args.prompts)
    result = {"prompts": len(prompts), "source": source, "gpu": torch.cuda.get_device_name()}
    if args.backend == "hf":
        model, tokenizer = load_policy(DEFAULT_POLICY, dtype="bfloat16", device="cuda")
        outputs = {}
        for name, batching in (("hf-generate", {"batching": "hf", "prompts_per_batch": 8}),
                               ("continuous", {"batching": "continuous", "batch_rows": 256})):
            generator = HFGenerator(model, tokenizer, GenerationConfig(**GREEDY, **batching))
            generator.generate(prompts[:2], progress=False)  # warm-up
            seconds, outputs[name] = timed(lambda p: generator.generate(p, progress=False), prompts)
            result[name] = summary(seconds, outputs[name])
        result["greedy_identical"] = sum(a == b for a, b in zip(outputs["hf-generate"], outputs["continuous"]))
        result["texts"] = [group[0].text for group in outputs["continuous"]]
    else:
        generator = make_generator("vllm", resolve_policy(DEFAULT_POLICY), config=GenerationConfig(**GREEDY))
        seconds, out = timed(lambda p: generator.generate(p, progress=False), prompts)
        result["vllm"] = summary(seconds, out)
        result["texts"] = [group[0].text for group in out]
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "texts"}))


if __name__ == "__main__":
    main()
