"""The group trainer on a tiny in-process model: layout, every loss through the Trainer,
every trainable parameter changes, the loss goes down, LoRA, curriculum order, grpo with the
sampling policy's log-probs."""

import numpy as np
import pytest
import torch

from ampo.config import load_config
from ampo.data import PoolRecord
from ampo.logprobs import build_rows, sequence_logprobs
from ampo.losses import LOSSES
from ampo.trainer import Group, GroupCollator, GroupDataset, GroupTrainer, build_groups, training_args
from helpers import make_tiny_model, make_tiny_tokenizer, pool_records


def test_collator_layout_and_layout_logprobs_match_rows(tiny_tokenizer, tiny_model):
    groups = build_groups(tiny_tokenizer, pool_records())
    assert [len(g.response_ids) for g in groups] == [4, 2]
    assert groups[0].rewards == [1.0, -1.0, 0.0, 0.2]  # in selection order, positive first
    eos = tiny_tokenizer.eos_token_id
    assert groups[0].response_ids[3][-1] != eos  # selected index 2 was truncated: no EOS appended
    assert groups[0].response_ids[0][-1] == eos
    collate = GroupCollator(tiny_tokenizer.pad_token_id)
    batch = collate(groups)
    assert batch["row_slot"].tolist() == [0, 1, 2, 3, 4, 5]
    assert batch["mask"].tolist() == [[True] * 4, [True, True, False, False]]
    logps, lengths = collate.layout.logprobs(tiny_model, batch, chunk_size=7)
    # each grid slot equals the same row computed on its own
    for b, g in enumerate(groups):
        for k, ids in enumerate(g.response_ids):
            row = build_rows([g.prompt_ids], [ids], tiny_tokenizer.pad_token_id)
            alone, n = sequence_logprobs(tiny_model, *row)
            assert torch.allclose(logps[b, k], alone[0], atol=1e-5)
            assert lengths[b, k] == n[0] == len(ids)
    assert logps[1, 2:].abs().sum() == 0


def test_collator_carries_reference_logps(tiny_tokenizer):
    refs = [[[-1.0, -2.0, -3.0, -4.0], [-1.5, -2.5, -3.5, -4.5]], [[-5.0, -6.0], [-7.0, -8.0]]]
    batch = GroupCollator(tiny_tokenizer.pad_token_id)(build_groups(tiny_tokenizer, pool_records(), refs))
    assert batch["ref_logps"].shape == (2, 2, 4)
    assert batch["ref_logps"][1, 1, :2].tolist() == [-7.0, -8.0]


def test_collator_carries_old_logps(tiny_tokenizer):
    old = [[-1.0, -2.0, -3.0, -4.0], [-5.0, -6.0]]
    groups = build_groups(tiny_tokenizer, pool_records(), old_rows=old)
    assert groups[1].old_logps == [-5.0, -6.0]
    batch = GroupCollator(tiny_tokenizer.pad_token_id)(groups)
    assert batch["old_logps"].dtype == torch.float64 and batch["old_logps"].tolist() == [old[0], [-5.0, -6.0, 0, 0]]
    assert "old_logps" not in GroupCollator(tiny_tokenizer.pad_token_id)(build_groups(tiny_tokenizer, pool_records()))
    with pytest.raises(ValueError, match="3 old log-probs for 4 selected responses"):
        build_groups(tiny_tokenizer, pool_records(), old_rows=[old[0][:3], old[1]])


def start_logps(model, tok, records, shared_prefix=False) -> list[list[float]]:
    """Each record's selected responses' log-probs under `model` now: the sampling policy's
    log-probs (`old_logps`) of a round whose responses this model generated."""
    groups = build_groups(tok, records)
    collate = GroupCollator(tok.pad_token_id, shared_prefix=shared_prefix)
    with torch.no_grad():
        logps, _ = collate.layout.logprobs(model, collate(groups))
    return [logps[b, : len(g.response_ids)].tolist() for b, g in enumerate(groups)]


def test_curriculum_orders_easy_first():
    gs = [Group([1], [[2], [3]], [0.0, -0.1]), Group([1], [[2], [3]], [1.0, -1.0]), Group([1], [[2], [3]], [0.5, 0.0])]
    assert [g.reward_gap() for g in GroupDataset(gs, curriculum=True)] == pytest.approx([2.0, 0.5, 0.1])
    assert list(GroupDataset(gs)) == gs


def run_trainer(tmp_path, model, tok, loss, lora=False, steps_data=4, lr=0.05, extra=(), shared_prefix=False,
                records=None):
    extra = [*extra, *(["train.extra_references=[unused-in-this-test]"] if LOSSES[loss].refs > 1 else [])]
    c = load_config(overrides=[f"train.loss={loss}", f"train.learning_rate={lr}", "train.epochs=1",
                               "train.prompts_per_step=2", "train.warmup_ratio=0", "train.lr_scheduler=constant",
                               f"model.lora={str(lora).lower()}", "train.save_steps=1000", *extra])
    unique = [r for r in (records or pool_records()) if len(r.selected) > LOSSES[loss].negatives]  # tripo: 2
    records = unique * steps_data
    old = start_logps(model, tok, unique, shared_prefix) * steps_data if LOSSES[loss].old else None
    refs = None
    if LOSSES[loss].needs_refs(c.train.hparams):
        n_refs = max(LOSSES[loss].refs, 1)
        rng = np.random.default_rng(0)
        refs = [[(-20 + rng.normal(size=len(r.selected))).tolist() for _ in range(n_refs)] for r in records]
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.train()
    trainer = GroupTrainer(model=model, args=training_args(c, tmp_path, progress=False),
                           train_dataset=GroupDataset(build_groups(tok, records, refs, old)),
                           data_collator=GroupCollator(tok.pad_token_id, shared_prefix=shared_prefix),
                           loss_name=loss, loss_hparams=c.train.hparams, eos_id=tok.eos_token_id)
    trainer.train()
    return trainer, model


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_trains_and_changes_every_parameter(tmp_path, loss):
    tok = make_tiny_tokenizer()
    model = make_tiny_model(tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer, model = run_trainer(tmp_path, model, tok, loss)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(np.isfinite(h["loss"]) for h in logs)
    for key in ("reward_accuracy", "margin", "logp_positive", "logp_negative", "tokens_per_s"):
        assert key in logs[0], key
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert unchanged == []


@pytest.mark.parametrize("loss", ["ampo", "dpo", "swepo", "infonca"])
def test_loss_decreases_on_a_fixed_group(tmp_path, loss):
    tok = make_tiny_tokenizer()
    model = make_tiny_model(tok)
    trainer, _ = run_trainer(tmp_path, model, tok, loss, steps_data=6, lr=0.01)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) >= 4
    assert np.mean(losses[-2:]) < np.mean(losses[:2])


def test_grpo_trains_from_the_sampling_policy(tmp_path):
    # old_logps = the model's own log-probs at the start (the round-start policy), so every ratio
    # starts at 1 and the first loss is -mean(A) = 0; training then raises the advantage-weighted
    # per-token log-probs sum_i A_i lp_i / L_i of every group (the surrogate's direction) and the
    # loss goes below 0.
    from ampo.losses import grpo_advantages

    tok = make_tiny_tokenizer()
    model = make_tiny_model(tok)
    flat = PoolRecord(prompt="Once upon a time", responses=["The quick brown fox.", "I love this."],
                      rewards=[0.5, 0.5], selected=[0, 1])
    records = [*pool_records(), flat]
    before = start_logps(model, tok, records)
    trainer, model = run_trainer(tmp_path, model, tok, "grpo", steps_data=8, lr=0.002, records=records,
                                 extra=["train.hparams.eps_low=0.2", "train.hparams.eps_high=0.2",
                                        "train.grad_accum=2"])
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 6 and abs(logs[0]["loss"]) < 1e-4 and np.mean([h["loss"] for h in logs[-2:]]) < -1e-3
    for key in ("ratio", "clip_fraction", "logp_positive", "logp_negative"):
        assert key in logs[0], key
    # a count, summed over each logging step's micro-batches: the flat group, seen 8 times
    assert sum(h["zero_signal_groups"] for h in logs) == 8
    after = start_logps(model.eval(), tok, records)
    groups = build_groups(tok, records)
    for b, g in enumerate(groups[:2]):
        adv, _ = grpo_advantages(torch.tensor([g.rewards]), torch.ones(1, len(g.rewards), dtype=torch.bool))
        lengths = np.array([len(ids) for ids in g.response_ids])
        moved = np.array(after[b]) - np.array(before[b])
        assert float(np.sum(adv[0].numpy() * moved / lengths)) > 0, b


def test_grpo_without_old_logps_is_refused(tmp_path):
    tok = make_tiny_tokenizer()
    c = load_config(overrides=["train.loss=grpo", "train.save_steps=1000"])
    trainer = GroupTrainer(model=make_tiny_model(tok).train(), args=training_args(c, tmp_path, progress=False),
                           train_dataset=GroupDataset(build_groups(tok, pool_records())),
                           data_collator=GroupCollator(tok.pad_token_id), loss_name="grpo",
                           loss_hparams=c.train.hparams)
    with pytest.raises(ValueError, match="'grpo' needs the sampling policy's log-probs"):
        trainer.train()


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_trains_only_adapters(tmp_path, checkpointing):
    tok = make_tiny_tokenizer()
    model = make_tiny_model(tok)
    _, peft_model = run_trainer(tmp_path, model, tok, "ampo", lora=True, lr=0.05,
                                extra=[f"train.gradient_checkpointing={str(checkpointing).lower()}"])
    changed = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert changed and all("lora_" in n for n in changed)
    base = make_tiny_model(tok)  # same seed: the frozen weights must be untouched
    for n, p in peft_model.get_base_model().named_parameters():
        if "lora_" not in n:
            ref = dict(base.named_parameters())[n.replace("base_layer.", "")]
            assert torch.equal(p.detach(), ref.detach()), n


@pytest.mark.parametrize("shared_prefix", [False, True])
def test_eos_regularizer_trains_in_both_layouts(tmp_path, shared_prefix):
    tok = make_tiny_tokenizer()
    model = make_tiny_model(tok)
    groups = build_groups(tok, pool_records())
    collate = GroupCollator(tok.pad_token_id, shared_prefix=shared_prefix)
    logps, lengths, eos = collate.layout.logprobs(model, collate(groups), chunk_size=7, eos_id=tok.eos_token_id)
    assert eos.shape == logps.shape and (eos[0] < 0).all() and (eos[1, :2] < 0).all()  # [1, 2:] are empty slots
    trainer, _ = run_trainer(tmp_path, model, tok, "ampo", extra=["train.hparams.eos_reg=targeted",
                                                                  "train.hparams.eos_lambda=0.01"],
                             shared_prefix=shared_prefix)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(h["eos_reg"] >= 0 for h in logs) and any(h["eos_reg"] > 0 for h in logs)


def test_trainer_refuses_a_missing_eos_id_and_other_collators(tmp_path):
    tok = make_tiny_tokenizer()
    c = load_config(overrides=["train.hparams.eos_reg=independent"])
    with pytest.raises(ValueError, match="needs the tokenizer's eos_id"):
        GroupTrainer(model=make_tiny_model(tok), args=training_args(c, tmp_path, progress=False),
                     train_dataset=GroupDataset([]), data_collator=GroupCollator(tok.pad_token_id),
                     loss_name="ampo", loss_hparams=c.train.hparams)
    with pytest.raises(TypeError, match="needs a GroupCollator"):
        GroupTrainer(model=make_tiny_model(tok), args=training_args(c, tmp_path, progress=False),
                     train_dataset=GroupDataset([]), data_collator=lambda rows: rows, loss_name="ampo")


def test_resume_skips_incomplete_checkpoints(tmp_path):
    from ampo.trainer import last_complete_checkpoint

    def make(step, files):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        for f in files:
            (d / f).write_text("x")

    full = ["trainer_state.json", "optimizer.pt", "scheduler.pt", "model.safetensors"]
    assert last_complete_checkpoint(tmp_path) is None
    make(2, full)
    make(10, ["trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt"])
    make(20, ["trainer_state.json"])  # killed while saving
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    make(30, ["trainer_state.json", "scheduler.pt", "optimizer.bin", "pytorch_model_fsdp.bin"])  # FSDP, full state
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-30"
    make(40, ["trainer_state.json", "scheduler.pt", "latest"])  # DeepSpeed: `latest` names a folder not there
    (tmp_path / "checkpoint-40" / "latest").write_text("global_step40")
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-30"
    (tmp_path / "checkpoint-40" / "global_step40").mkdir()
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-40"
    make(50, ["trainer_state.json", "scheduler.pt", "model.safetensors"])  # no optimizer state of any kind
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-40"
