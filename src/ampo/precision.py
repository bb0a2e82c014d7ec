"""Which floating-point format the model's arithmetic runs in: the one place that decides whether
this machine has native bf16, for generation (`generate.dtype`) and for training and the
reference / old log-prob passes (`train.dtype`).

"auto" means bf16 on CUDA and on CPUs with native bf16 matmuls (avx512_bf16 or AMX), where it is
about twice as fast as fp32, and fp32 everywhere else: on an AVX2-only CPU bf16 is emulated and
slower than fp32 (docs/models_generation.md, docs/benchmarks.md).

Generation converts the weights to the chosen dtype. Training does not: `train.dtype: bfloat16`
runs the forward and backward passes under `torch.autocast` (bf16 matmuls) while the weights, their
gradients and the optimiser state stay in the weights' own dtype (`model.dtype`, fp32 by default:
fp32 master weights), and log-probs and losses are computed in fp32 (`ampo.logprobs`).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

DTYPE_CHOICES = ("auto", "float32", "bfloat16")
BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}  # /proc/cpuinfo flags of CPUs with native bf16 matmuls


def choose_dtype(requested: str, device_type: str, cpu_flags: set[str]) -> str:
    """The compute dtype for `requested` ("auto", "float32" or "bfloat16") on a device type with
    these CPU flags: "auto" is "bfloat16" on CUDA or a CPU with native bf16, else "float32"."""
    if requested not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, got {requested!r}")
    if requested != "auto":
        return requested
    if device_type == "cuda" or (device_type == "cpu" and cpu_flags & BF16_CPU_FLAGS):
        return "bfloat16"
    return "float32"


def cpu_flags() -> set[str]:
    """This machine's CPU feature flags (from /proc/cpuinfo), plus `avx512_bf16` / `amx_bf16` when
    torch detects them (for systems without /proc; every AMX CPU so far has AMX-BF16)."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    if torch.cpu._is_avx512_bf16_supported():
        flags.add("avx512_bf16")
    if torch.cpu._is_amx_tile_supported():
        flags.add("amx_bf16")
    return flags


def resolve_dtype(requested: str, device: torch.device) -> str:
    """`choose_dtype` for this machine's `device`."""
    return choose_dtype(requested, device.type, cpu_flags() if device.type == "cpu" else set())


def default_device() -> torch.device:
    """The device training runs on here: CUDA when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_train_dtype(requested: str, device: torch.device | None = None) -> str:
    """The dtype `train.dtype` (`requested`) means on this machine: "float32" or "bfloat16".

    It governs the training passes and the reference / old log-prob passes, which must agree
    (a policy and its reference in different numerics start with non-zero log-ratios), so both
    resolve it here. `device` defaults to where training runs (`default_device`). Stage keys hold
    this resolved value, so a run resumed on a machine that resolves "auto" otherwise recomputes.
    """
    return resolve_dtype(requested, device or default_device())


def compute_context(dtype: str, device_type: str) -> contextlib.AbstractContextManager:
    """The context that runs a model's passes in the resolved compute `dtype`: bf16 autocast
    (the weights keep their dtype) for "bfloat16", nothing for "float32"."""
    if dtype == "bfloat16":
        if device_type == "cpu":
            fp32_attention_under_cpu_autocast()
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    if dtype == "float32":
        return contextlib.nullcontext()
    raise ValueError(f"compute dtype must be float32 or bfloat16, got {dtype!r}")


def fp32_context(device_type: str) -> contextlib.AbstractContextManager:
    """Leave any enclosing autocast: what runs inside (the losses) computes in its inputs' dtype."""
    return torch.autocast(device_type=device_type, enabled=False)


@functools.cache
def fp32_attention_under_cpu_autocast() -> None:
    """Under CPU bf16 autocast, run transformers' `sdpa` attention on fp32 copies of its inputs.

    On CPU (torch 2.13) the bf16 scaled-dot-product attention's backward pass is about twice as
    slow as fp32's, which ate a third of bf16 training's gain on SmolLM2 (benchmarks/bench_train_dtype.py);
    in fp32 the attention costs what it costs in an fp32 step, and the matmuls around it keep bf16's
    speed. Installed once, as the process's `sdpa` entry of transformers' attention table; it
    changes nothing outside CPU autocast (generation, fp32 training, CUDA), where it calls the
    original. Same memory behaviour as before (no L x L scores), and the attention is exact fp32.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    original = ALL_ATTENTION_FUNCTIONS.get("sdpa", sdpa_attention_forward)

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        if not (query.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16):
            return original(module, query, key, value, attention_mask, *args, **kwargs)
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
        with torch.autocast("cpu", enabled=False):
            out, weights = original(module, query.float(), key.float(), value.float(), attention_mask, *args, **kwargs)
        return out.to(torch.bfloat16), weights  # what autocast's sdpa returns

    ALL_ATTENTION_FUNCTIONS["sdpa"] = attention
