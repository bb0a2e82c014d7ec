"""Multi-process training details the HF Trainer leaves to us: FSDP and DeepSpeed on CPU
processes, the model's full state dict under a sharding wrapper, the loss's metrics reduced over
ranks, and a record of which wrapper trained.

Accelerate builds its FSDP and DeepSpeed state only for accelerator devices: started on CPU
processes (`accelerate launch` with an FSDP or DeepSpeed config on a machine without CUDA: torch
elastic, gloo), it silently trains plain DDP instead. `enable_cpu_sharding` puts that state back,
so the config the user gave is the one that trains (FSDP2's `fully_shard` works on CPU tensors
over gloo, DeepSpeed ZeRO through its CPU accelerator); `parallel_info` records which wrapper
trained, and the tests check it (tests/test_distributed.py).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

log = logging.getLogger("ampo")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def enable_cpu_sharding(trainer) -> None:
    """After the Trainer made its Accelerator: on CPU processes started with an FSDP or a DeepSpeed
    config (`ACCELERATE_USE_FSDP` / `ACCELERATE_USE_DEEPSPEED`), switch accelerate's state from
    MULTI_CPU (DDP) to the wrapper that config describes. FSDP2 only (`fsdp_version: 2`; FSDP1 on
    CPU is refused); DeepSpeed through its CPU accelerator over gloo."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        return
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        _enable_cpu_deepspeed(trainer)
        return
    if not _env_flag("ACCELERATE_USE_FSDP"):
        return
    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables accelerate launch set
    if plugin.fsdp_version != 2:
        raise ValueError("FSDP on CPU processes needs `fsdp_version: 2` in the accelerate config (FSDP1 needs CUDA)")
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    # every `AcceleratorState()` made later copies the process state's `distributed_type` over its
    # own: set both, or accelerate's FSDP branches (state dicts, clipping) fall back to DDP's midway
    state.distributed_type = PartialState().distributed_type = DistributedType.FSDP
    trainer.is_fsdp_enabled = True
    if state.is_main_process:
        log.info("FSDP2 on %d CPU processes (gloo)", state.num_processes)


def _enable_cpu_deepspeed(trainer) -> None:
    """DeepSpeed (its CPU accelerator) over the gloo group accelerate made. The first run builds
    DeepSpeed's `deepspeed_shm_comm` op (a C++ compiler and ninja; minutes, then cached)."""
    import deepspeed
    from accelerate import PartialState
    from accelerate.utils import DeepSpeedPlugin, DistributedType
    from transformers.integrations.deepspeed import propagate_args_to_deepspeed

    state = trainer.accelerator.state
    deepspeed.comm.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision(state.mixed_precision)
    plugin.select(_from_accelerator_state=True)
    state.deepspeed_plugins = plugin
    state.distributed_type = PartialState().distributed_type = DistributedType.DEEPSPEED
    trainer.is_deepspeed_enabled = True
    propagate_args_to_deepspeed(trainer.accelerator, trainer.args)
    if state.is_main_process:
        log.info("DeepSpeed ZeRO-%s on %d CPU processes (gloo)", plugin.zero_stage, state.num_processes)


def parallel_info(trainer) -> dict[str, Any]:
    """What trained: the wrapper (`none`, `ddp`, `fsdp2`, `fsdp1`, `deepspeed-zero<stage>`) and the
    number of processes, from the Trainer's accelerator state after training (DDP: its wrapped model)."""
    from accelerate.utils import DistributedType

    acc = trainer.accelerator
    world = acc.num_processes
    kind = acc.distributed_type
    if kind == DistributedType.FSDP:
        wrapper = "fsdp2" if acc.is_fsdp2 else "fsdp1"
    elif kind == DistributedType.DEEPSPEED:
        stage = trainer.deepspeed.config.get("zero_optimization", {}).get("stage", 0) if trainer.deepspeed else 0
        wrapper = f"deepspeed-zero{stage}"
    elif isinstance(trainer.model_wrapped, torch.nn.parallel.DistributedDataParallel):
        wrapper = "ddp"
    else:
        wrapper = "none"
    return {"wrapper": wrapper, "processes": world}


def full_state_dict(trainer) -> dict[str, torch.Tensor] | None:
    """The trained model's full state dict when a sharding wrapper holds it (FSDP, DeepSpeed;
    collective: call on every process, the main one gets the tensors), else None (the unwrapped
    model's own `save_pretrained` reads it)."""
    if trainer.is_fsdp_enabled:
        from torch.distributed.tensor import DTensor

        # FSDP2 on CPU processes: torch's full state dict leaves the CPU shards as DTensors
        # (safetensors cannot save them); gather each, in the same order on every process
        state = trainer.accelerator.get_state_dict(trainer.model)
        return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in state.items()}
    if trainer.is_deepspeed_enabled:
        return trainer.accelerator.get_state_dict(trainer.deepspeed)
    return None


def reduce_metrics(values: dict[str, list[float]], counts: set[str], tokens: int, elapsed: float,
                   device: torch.device) -> tuple[dict[str, float], float]:
    """The step metrics over every process: the mean of every rank's values (`counts`, such as
    `zero_signal_groups`, are summed instead), and tokens per second of all processes together
    (their tokens over the slowest one's time). One process: the same sums and means locally."""
    import torch.distributed as dist

    names = sorted(values)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world > 1:  # the metric names can differ between ranks in principle: agree on their union
        gathered: list[list[str] | None] = [None] * world
        dist.all_gather_object(gathered, names)
        names = sorted(set().union(*gathered))
    flat = []
    for name in names:
        v = values.get(name, [])
        flat += [float(sum(v)), float(len(v))]
    sums = torch.tensor([*flat, float(tokens)], dtype=torch.float64, device=device)
    slowest = torch.tensor([elapsed], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    sums = sums.tolist()
    out = {}
    for i, name in enumerate(names):
        total, n = sums[2 * i], sums[2 * i + 1]
        if n:
            out[name] = total if name in counts else total / n
    return out, sums[-1] / max(float(slowest), 1e-9)
