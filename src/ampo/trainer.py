"""Group training: a collator that lays out each prompt's selected group, and a HF `Trainer`
whose loss is any entry of `ampo.losses.LOSSES`.

Each response of a group is forwarded once per step (a pairwise trainer forwards the positive
once per pair), in the collator's row layout (`ampo.layouts`): by default one padded row per
response; with `shared_prefix`, one row per group holding the prompt once and all its responses.
Either way the LM head runs only on completion tokens, in chunks. Optimiser, schedule, clipping, accumulation,
checkpoints, resume and multi-process (DDP / DeepSpeed / FSDP via accelerate) are the Trainer's.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from .distributed import enable_cpu_sharding, full_state_dict, parallel_info, reduce_metrics
from .layouts import row_layout
from .losses import COUNT_METRICS, LOSSES, GroupBatch, compute, resolve_hparams
from .precision import compute_context, fp32_context, resolve_train_dtype

log = logging.getLogger("ampo")


@dataclass
class Group:
    """One training group: the prompt's token ids, then its responses (positive first)."""

    prompt_ids: list[int]
    response_ids: list[list[int]]
    rewards: list[float]
    ref_logps: list[list[float]] | None = None  # [R][K]: per reference model, per response
    pref_logits: list[list[float]] | None = None  # [K][K]: S_ij = logit P(response i beats response j)
    old_logps: list[float] | None = None  # [K]: under the policy that sampled the responses (grpo)

    def reward_gap(self) -> float:
        """Positive's reward minus the mean negative's: large = easy (`curriculum: groups`)."""
        negs = self.rewards[1:]
        return self.rewards[0] - sum(negs) / max(len(negs), 1)


class GroupDataset(torch.utils.data.Dataset):
    """A list of `Group`s, optionally ordered easy -> hard by `reward_gap` (`curriculum: groups`:
    whole groups in order, all of a prompt's pairs in one step; not Curry-DPO, whose stages
    `ampo.curriculum` and the pipeline run)."""

    def __init__(self, groups: list[Group], curriculum: bool = False):
        self.groups = sorted(groups, key=lambda g: -g.reward_gap()) if curriculum else list(groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> Group:
        return self.groups[i]


class GroupCollator:
    """Lay out a batch of groups in a row layout (`ampo.layouts.row_layout(shared_prefix)`): its
    rows and `mask` `[B, K]` (K = the largest group; False = empty slot), plus `rewards` `[B, K]`
    and, when the groups have them, `ref_logps` `[R, B, K]`, `pref_logits` `[B, K, K]` and
    `old_logps` `[B, K]` (float64)."""

    def __init__(self, pad_id: int, shared_prefix: bool = False):
        self.pad_id = pad_id
        self.layout = row_layout(shared_prefix)

    def __call__(self, groups: list[Group]) -> dict[str, Any]:
        batch = self.layout.rows([g.prompt_ids for g in groups], [g.response_ids for g in groups], self.pad_id)
        B, K = batch["mask"].shape
        rewards = torch.zeros(B, K)
        for b, g in enumerate(groups):
            for k in range(len(g.response_ids)):
                rewards[b, k] = g.rewards[k]
        batch["rewards"] = rewards
        if groups[0].ref_logps is not None:
            R = len(groups[0].ref_logps)
            ref = torch.zeros(R, B, K, dtype=torch.float64)
            for b, g in enumerate(groups):
                for r in range(R):
                    ref[r, b, : len(g.ref_logps[r])] = torch.tensor(g.ref_logps[r], dtype=torch.float64)
            batch["ref_logps"] = ref
        if groups[0].pref_logits is not None:
            prefs = torch.zeros(B, K, K, dtype=torch.float64)
            for b, g in enumerate(groups):
                n = len(g.pref_logits)
                prefs[b, :n, :n] = torch.tensor(g.pref_logits, dtype=torch.float64)
            batch["pref_logits"] = prefs
        if groups[0].old_logps is not None:
            old = torch.zeros(B, K, dtype=torch.float64)
            for b, g in enumerate(groups):
                old[b, : len(g.old_logps)] = torch.tensor(g.old_logps, dtype=torch.float64)
            batch["old_logps"] = old
        return batch


class GroupTrainer(Trainer):
    """`transformers.Trainer` whose loss is `LOSSES[loss_name]` over each batch of groups."""

    def __init__(self, *args, loss_name: str, loss_hparams: dict | None = None, logprob_chunk: int = 1024,
                 eos_id: int | None = None, compute_dtype: str = "float32", **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.data_collator, GroupCollator):
            raise TypeError("GroupTrainer needs a GroupCollator: its row layout computes the log-probs")
        self.layout = self.data_collator.layout
        self.loss_name = loss_name
        self.loss_hparams = dict(loss_hparams or {})
        self.logprob_chunk = logprob_chunk
        self.needs_eos = LOSSES[loss_name].needs_eos(resolve_hparams(loss_name, self.loss_hparams))
        if self.needs_eos and eos_id is None:
            raise ValueError(f"loss {loss_name!r} with {self.loss_hparams} needs the tokenizer's eos_id "
                             "(EOS log-probs)")
        self.eos_id = eos_id
        self.compute_dtype = compute_dtype  # resolved `train.dtype`: bfloat16 = autocast, fp32 weights kept
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._tokens = 0
        self._t0 = time.perf_counter()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        device_type = self.args.device.type
        with compute_context(self.compute_dtype, device_type):  # the log-probs come out in fp32 either way
            logps, lengths, *eos = self.layout.logprobs(model, inputs, self.logprob_chunk,
                                                         self.eos_id if self.needs_eos else None)
        lengths = lengths.to(logps.dtype)
        mask = inputs["mask"].to(logps.device)
        ref = inputs.get("ref_logps")
        prefs = inputs.get("pref_logits")
        old = inputs.get("old_logps")
        batch = GroupBatch(
            logps=logps,
            lengths=lengths.clamp(min=1),
            rewards=inputs["rewards"].to(logps.device, logps.dtype),
            mask=mask,
            ref_logps=None if ref is None else ref.to(logps.device, logps.dtype),
            eos_logps=eos[0] if eos else None,
            pref_logits=None if prefs is None else prefs.to(logps.device, logps.dtype),
            old_logps=None if old is None else old.to(logps.device, logps.dtype),
        )
        with fp32_context(device_type):  # the loss maths never autocast
            loss, metrics = compute(self.loss_name, batch, **self.loss_hparams)
        self._record(batch, metrics, int(lengths.sum()))
        return (loss, {"logps": logps}) if return_outputs else loss

    def _record(self, batch: GroupBatch, metrics: dict[str, torch.Tensor], tokens: int) -> None:
        """Keep step metrics for `log`: the loss's own (`logp_positive` / `logp_negative` among
        them, computed once, in `ampo.losses`)."""
        with torch.no_grad():
            for name, value in metrics.items():
                self._metrics[name].append(float(value))
        self._tokens += tokens

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        enable_cpu_sharding(self)  # an FSDP / DeepSpeed config on CPU processes: that, not silently DDP

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The Trainer's, except that an FSDP full state dict is gathered into plain tensors
        (`full_state_dict`: on CPU processes torch leaves DTensors that safetensors refuses)."""
        if self.is_fsdp_enabled and "FULL_STATE_DICT" in str(self.accelerator.state.fsdp_plugin.state_dict_type):
            self._save(output_dir or self.args.output_dir, state_dict=full_state_dict(self))
            return
        super().save_model(output_dir, _internal_call)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # every process logs the loss at the same steps (the Trainer averages it over them)
            # the loss's metrics over every process, like the loss: means of all ranks' values, counts
            # (zero_signal_groups) summed; tokens/s of all processes together (collective)
            metrics, tokens_per_s = reduce_metrics(self._metrics, COUNT_METRICS, self._tokens,
                                                   time.perf_counter() - self._t0, self.args.device)
            if metrics:
                logs.update(metrics)
                logs["tokens_per_s"] = tokens_per_s
            self._metrics.clear()
            self._tokens, self._t0 = 0, time.perf_counter()
        super().log(logs, start_time)


# ---------------------------------------------------------------------------------------------
# One round of training, as the pipeline runs it


def build_groups(tokenizer, pool, ref_rows: list[list[list[float]]] | None = None,
                 old_rows: list[list[float]] | None = None) -> list[Group]:
    """Training groups from selected pool records: chat-formatted prompt ids + response ids, and
    the group's preference logits `S[sel][:, sel]` (the record's `pref_logits` from a pairwise
    scorer or aggregate, else `S_ij = r_i - r_j`) for losses that read them (`mmpo target=pref`).
    `ref_rows[i]` (`[R][K]`) and `old_rows[i]` (`[K]`, the sampling policy's log-probs, for
    `LOSSES[name].old`) belong to record i, in its selection order."""
    import numpy as np

    from .logprobs import response_ids
    from .models import encode_prompt
    from .preferences import scalar_to_logits

    groups = []
    for i, rec in enumerate(pool):
        if rec.selected is None or rec.rewards is None:
            raise ValueError(f"record '{rec.id}' needs rewards and a selection to train on")
        prompt_ids = encode_prompt(tokenizer, rec.prompt)
        finished = rec.finished or [True] * len(rec.responses)
        S = rec.extra.get("pref_logits")
        S = scalar_to_logits(rec.rewards) if S is None else np.asarray(S, dtype=np.float64)
        if old_rows is not None and len(old_rows[i]) != len(rec.selected):
            raise ValueError(f"record '{rec.id}': {len(old_rows[i])} old log-probs for "
                             f"{len(rec.selected)} selected responses")
        groups.append(Group(
            prompt_ids=prompt_ids,
            response_ids=[response_ids(tokenizer, rec.responses[j], finished[j]) for j in rec.selected],
            rewards=[float(rec.rewards[j]) for j in rec.selected],
            ref_logps=None if ref_rows is None else ref_rows[i],
            pref_logits=S[np.ix_(rec.selected, rec.selected)].tolist(),
            old_logps=None if old_rows is None else [float(x) for x in old_rows[i]],
        ))
    return groups


def training_args(c, output_dir: Path, progress: bool = True):
    """HF `TrainingArguments` from ampo's train config."""
    from transformers import TrainingArguments

    t = c.train
    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=t.prompts_per_step,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=1,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=2,
        report_to=list(t.report_to) or "none",
        seed=c.seed,
        data_seed=c.seed,
        remove_unused_columns=False,
        train_sampling_strategy="sequential" if t.curriculum == "groups" else "random",
        use_cpu=not cuda,
        bf16=c.model.dtype == "bfloat16",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
    )


CHECKPOINT_FILES = ("trainer_state.json", "scheduler.pt")
# A checkpoint's optimizer state and weights, as each way of training writes them: one process or
# DDP (optimizer.pt; model / adapter safetensors), FSDP with a full or a sharded state dict
# (optimizer.bin or optimizer_0/; pytorch_model_fsdp.bin or pytorch_model_fsdp_0/). DeepSpeed keeps
# both in the engine's folder that the file `latest` names.
OPTIMIZER_STATES = ("optimizer.pt", "optimizer.bin", "optimizer_0")
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "pytorch_model_fsdp.bin", "pytorch_model_fsdp_0")


def is_complete_checkpoint(path: Path) -> bool:
    """Whether a Trainer checkpoint folder holds everything a resume reads."""
    if not all((path / f).exists() for f in CHECKPOINT_FILES):
        return False
    if (path / "latest").is_file():  # DeepSpeed
        return (path / (path / "latest").read_text().strip()).is_dir()
    return any((path / f).exists() for f in OPTIMIZER_STATES) and any((path / f).exists() for f in WEIGHT_FILES)


def last_complete_checkpoint(work_dir: Path) -> Path | None:
    """The newest Trainer checkpoint in `work_dir` with all its files.

    The Trainer writes a checkpoint's files one by one, so a run killed while saving leaves an
    incomplete folder; resuming from it would fail. Such folders are skipped.
    """
    def step(p: Path) -> int:
        return int(p.name.split("-")[1]) if p.name.split("-")[1].isdigit() else -1

    candidates = sorted((p for p in work_dir.glob("checkpoint-*") if p.is_dir()), key=step, reverse=True)
    for path in candidates:
        if is_complete_checkpoint(path):
            return path
    return None


def train_round(c, model, tokenizer, pool, ref_rows, work_dir: Path, key: str, out: Path, progress: bool = True, *,
                lora_seed: int, adapter: Path | None = None, save_tokenizer: bool = False,
                old_rows: list[list[float]] | None = None) -> dict:
    """Train `model` on the selected groups of `pool` and save the result atomically to `out`;
    returns what trained it (`parallel`: none, ddp, fsdp2, deepspeed-zero<stage>; `processes`).

    Trainer checkpoints go to `work_dir` (tagged with the stage key): a rerun with the same key
    resumes from the last one; a different key starts afresh. With LoRA, `out` holds the adapter:
    a new one drawn from `lora_seed`, or `adapter` (a saved one) trained further (and the
    tokenizer, with `save_tokenizer`). `old_rows` are the sampling policy's log-probs per record
    (`build_groups`), for losses with `LOSSES[name].old` (grpo).
    """
    import shutil

    from .data import atomic_dir, naming_write_errors, widen_permissions, write_json

    key_file = work_dir / "KEY"
    if work_dir.exists() and (not key_file.exists() or key_file.read_text() != key):
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key)

    if c.model.lora and adapter is not None:
        from .models import load_adapter

        model = load_adapter(model, adapter, is_trainable=True)
    elif c.model.lora:
        from peft import LoraConfig, get_peft_model
        from transformers import set_seed

        from .models import ordered_adapter_config

        set_seed(lora_seed)  # the adapter's initial weights are random: draw them from the given seed
        model = get_peft_model(model, LoraConfig(
            r=c.model.lora_r, lora_alpha=c.model.lora_alpha, lora_dropout=c.model.lora_dropout,
            target_modules=list(c.model.lora_targets), task_type="CAUSAL_LM"))
        ordered_adapter_config(model)  # adapter_config.json in a fixed order, not the string hash's
    model.train()
    dataset = GroupDataset(build_groups(tokenizer, pool, ref_rows, old_rows),
                           curriculum=c.train.curriculum == "groups")
    trainer = GroupTrainer(
        model=model,
        args=training_args(c, work_dir, progress),
        train_dataset=dataset,
        data_collator=GroupCollator(tokenizer.pad_token_id, shared_prefix=c.train.shared_prefix),
        loss_name=c.train.loss,
        loss_hparams=c.train.hparams,
        logprob_chunk=c.train.logprob_chunk,
        eos_id=tokenizer.eos_token_id,
        compute_dtype=resolve_train_dtype(c.train.dtype),
    )
    resume = last_complete_checkpoint(work_dir)
    with naming_write_errors(work_dir):  # a full disk in a checkpoint (safetensors, torch.save): one line
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    widen_permissions(work_dir)  # the Trainer's checkpoints, like every file of the run
    parallel = parallel_info(trainer)
    state_dict = full_state_dict(trainer)  # FSDP / DeepSpeed: gathered from every process (collective)
    if trainer.is_world_process_zero():
        if parallel["processes"] > 1:
            log.info("trained data-parallel: %s on %d processes", parallel["wrapper"], parallel["processes"])
        write_json(work_dir.parent / "train_log.json", trainer.state.log_history)
        with atomic_dir(out) as tmp:
            trainer.accelerator.unwrap_model(trainer.model).save_pretrained(str(tmp), safe_serialization=True,
                                                                             state_dict=state_dict)
            if save_tokenizer or not c.model.lora:
                tokenizer.save_pretrained(str(tmp))
    model.eval()
    return {"parallel": parallel["wrapper"], "processes": parallel["processes"]}
