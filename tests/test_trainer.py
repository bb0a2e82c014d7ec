"""The group trainer on a tiny in-process model: layout, every loss through the Trainer,
every trainable parameter changes, the loss goes down, LoRA, curriculum order."""

import numpy as np
import pytest
import torch

from ampo.config import load_config
from ampo.data import PoolRecord
from ampo.logprobs import build_rows, sequence_logprobs
from ampo.losses import LOSSES
from ampo.trainer import Group, GroupCollator, GroupDataset, GroupTrainer, build_groups, training_args
from conftest import make_tiny_model, make_tiny_tokenizer


def pool_records():
    texts = ["I love this, wonderful!", "This is terrible and sad.", "The quick brown fox.", "Once upon a time"]
    return [
        PoolRecord(prompt="Write a short happy story.", responses=texts, rewards=[1.0, -1.0, 0.2, 0.0],
                   selected=[0, 1, 3, 2], finished=[True, True, False, True]),
        PoolRecord(prompt=[{"role": "user", "content": "Explain why the sky is blue."}], responses=texts[:3],
                   rewards=[0.1, 0.9, -0.5], selected=[1, 2]),
    ]


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


def test_curriculum_orders_easy_first():
    gs = [Group([1], [[2], [3]], [0.0, -0.1]), Group([1], [[2], [3]], [1.0, -1.0]), Group([1], [[2], [3]], [0.5, 0.0])]
    assert [g.reward_gap() for g in GroupDataset(gs, curriculum=True)] == pytest.approx([2.0, 0.5, 0.1])
    assert list(GroupDataset(gs)) == gs


def run_trainer(tmp_path, model, tok, loss, lora=False, steps_data=4, lr=0.05, extra=(), shared_prefix=False):
    extra = [*extra, *(["train.extra_references=[unused-in-this-test]"] if LOSSES[loss].refs > 1 else [])]
    c = load_config(overrides=[f"train.loss={loss}", f"train.learning_rate={lr}", "train.epochs=1",
                               "train.prompts_per_step=2", "train.warmup_ratio=0", "train.lr_scheduler=constant",
                               f"model.lora={str(lora).lower()}", "train.save_steps=1000", *extra])
    records = [r for r in pool_records() if len(r.selected) > LOSSES[loss].negatives] * steps_data  # tripo: 2
    refs = None
    if LOSSES[loss].refs:
        n_refs = max(LOSSES[loss].refs, 1)
        rng = np.random.default_rng(0)
        refs = [[(-20 + rng.normal(size=len(r.selected))).tolist() for _ in range(n_refs)] for r in records]
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.train()
    trainer = GroupTrainer(model=model, args=training_args(c, tmp_path, progress=False),
                           train_dataset=GroupDataset(build_groups(tok, records, refs)),
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
