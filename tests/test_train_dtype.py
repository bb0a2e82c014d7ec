"""`train.dtype`: one native-bf16 check for generation and training, bf16 autocast training with
fp32 master weights and fp32 log-probs and losses, the same numerics in the reference pass, seeded
determinism per dtype. Nothing here depends on the CPU running the tests: the capability check is
mocked where it matters, and "bfloat16" forced elsewhere (autocast runs, emulated or not, on any CPU)."""

import pytest
import torch

import ampo.generation
import ampo.precision
from ampo.config import ConfigError, load_config
from ampo.layouts import response_logprobs
from ampo.precision import compute_context, resolve_train_dtype
from ampo.trainer import GroupCollator, GroupDataset, GroupTrainer, build_groups, training_args
from helpers import make_tiny_model, make_tiny_tokenizer
from helpers import pool_records


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize(("flags", "expected"), [
    ({"avx2", "fma"}, "float32"),  # AVX2 only: bf16 would be emulated, slower than fp32
    ({"avx512f", "avx512_vnni"}, "float32"),  # AVX-512 without its bf16 extension
    ({"avx512f", "avx512_bf16"}, "bfloat16"),
    ({"amx_bf16", "amx_tile"}, "bfloat16"),
])
def test_auto_follows_the_mocked_cpu(monkeypatch, cpu_only, flags, expected):
    monkeypatch.setattr(ampo.precision, "cpu_flags", lambda: set(flags))
    assert resolve_train_dtype("auto") == expected
    # generation asks the same function: one place decides what "native bf16" means
    assert ampo.generation.resolve_dtype("auto", torch.device("cpu")) == expected
    for forced in ("float32", "bfloat16"):
        assert resolve_train_dtype(forced) == forced


def test_auto_is_bf16_on_cuda(monkeypatch):
    monkeypatch.setattr(ampo.precision, "cpu_flags", lambda: {"avx2"})
    assert resolve_train_dtype("auto", torch.device("cuda")) == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_train_dtype("auto") == "bfloat16"


def test_bad_dtypes_are_refused():
    with pytest.raises(ConfigError, match="'train.dtype': must be one of auto, float32, bfloat16, got 'float16'"):
        load_config(overrides=["train.dtype=float16"])
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_train_dtype("fp16")
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        compute_context("auto", "cpu")  # the context takes a resolved dtype
    assert load_config().train.dtype == "auto"


def make_trainer(tmp_path, dtype, seed=0, steps_data=2):
    tok = make_tiny_tokenizer()
    model = make_tiny_model(tok, seed=seed).train()
    c = load_config(overrides=[f"train.dtype={dtype}", "train.prompts_per_step=2", "train.learning_rate=0.05",
                               "train.lr_scheduler=constant", "train.warmup_ratio=0", "train.save_steps=1000",
                               "model.lora=false", f"seed={seed}"])
    return GroupTrainer(model=model, args=training_args(c, tmp_path, progress=False),
                        train_dataset=GroupDataset(build_groups(tok, pool_records() * steps_data)),
                        data_collator=GroupCollator(tok.pad_token_id), loss_name="ampo",
                        loss_hparams=c.train.hparams, compute_dtype=resolve_train_dtype(c.train.dtype))


def test_bf16_loss_and_gradients_are_close_to_fp32_on_the_same_batch(tmp_path):
    results = {}
    for dtype in ("float32", "bfloat16"):
        trainer = make_trainer(tmp_path / dtype, dtype)
        batch = trainer.data_collator(build_groups(make_tiny_tokenizer(), pool_records()))
        trainer.model.zero_grad()
        loss, out = trainer.compute_loss(trainer.model, batch, return_outputs=True)
        assert loss.dtype == out["logps"].dtype == torch.float32  # log-probs and the loss stay fp32
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters()])
        results[dtype] = (loss.detach(), out["logps"].detach(), grads)
    (loss32, logps32, g32), (loss16, logps16, g16) = results["float32"], results["bfloat16"]
    assert not torch.equal(logps16, logps32)  # autocast did run in bf16
    assert torch.allclose(logps16, logps32, rtol=2e-2)
    assert abs(float(loss16 - loss32)) <= 0.05 * abs(float(loss32)) + 1e-3
    assert float((g16 - g32).norm() / g32.norm()) < 0.1


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bf16_training_keeps_fp32_master_weights_and_is_seeded(tmp_path, dtype):
    weights = []
    for run in range(2):
        trainer = make_trainer(tmp_path / f"{dtype}-{run}", dtype, steps_data=3)
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        assert losses and all(torch.isfinite(torch.tensor(losses)))
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
        weights.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])  # same seed + dtype: same weights


def test_the_dtypes_train_different_weights(tmp_path):
    finals, first_losses = [], []
    for dtype in ("float32", "bfloat16"):
        trainer = make_trainer(tmp_path / dtype, dtype)
        trainer.train()
        finals.append(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]))
        first_losses.append(next(h["loss"] for h in trainer.state.log_history if "loss" in h))
    assert not torch.equal(*finals)  # the option reaches the trainer
    assert first_losses[1] == pytest.approx(first_losses[0], rel=0.01)


@pytest.mark.parametrize("shared_prefix", [False, True])
def test_reference_pass_uses_the_training_numerics(tiny_model, tiny_tokenizer, shared_prefix):
    """A reference computed in the policy's training dtype starts the log-ratios at (about) 0;
    one computed in the other dtype does not."""
    records = pool_records()
    groups = build_groups(tiny_tokenizer, records)
    collate = GroupCollator(tiny_tokenizer.pad_token_id, shared_prefix=shared_prefix)
    prompts = [r.prompt for r in records]
    texts = [[r.responses[i] for i in r.selected] for r in records]
    finished = [[r.finished[i] if r.finished else True for i in r.selected] for r in records]
    with torch.no_grad(), compute_context("bfloat16", "cpu"):
        policy, _ = collate.layout.logprobs(tiny_model, collate(groups))
    mask = collate(groups)["mask"]
    gaps = {}
    for dtype in ("float32", "bfloat16"):
        refs, _ = response_logprobs(tiny_model, tiny_tokenizer, prompts, texts, finished, dtype=dtype,
                                    shared_prefix=shared_prefix)
        ref = torch.zeros_like(policy)
        for b, row in enumerate(refs):
            ref[b, : len(row)] = torch.from_numpy(row)
        gaps[dtype] = float((policy - ref)[mask].abs().max())
    assert gaps["bfloat16"] < 1e-3 < gaps["float32"]


def test_cpu_bf16_autocast_runs_sdpa_attention_in_fp32():
    """CPU bf16 sdpa's backward is about 2x slower than fp32's (torch 2.13): under CPU bf16 autocast
    transformers' sdpa entry computes on fp32 copies; elsewhere it is the original function."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    with compute_context("bfloat16", "cpu"):  # installs it
        pass
    attention = ALL_ATTENTION_FUNCTIONS["sdpa"]
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = True, 1
    q, k, v = (torch.randn(2, 4, 7, 8) for _ in range(3))
    exact, _ = sdpa_attention_forward(module, q, k, v, None, is_causal=True)
    with compute_context("bfloat16", "cpu"):
        out, _ = attention(module, q.bfloat16(), k, v.bfloat16(), None, is_causal=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain, _ = sdpa_attention_forward(module, q.bfloat16(), k, v.bfloat16(), None, is_causal=True)
    inputs_fp32, _ = sdpa_attention_forward(module, q.bfloat16().float(), k, v.bfloat16().float(), None, is_causal=True)
    assert out.dtype == plain.dtype == torch.bfloat16
    assert torch.equal(out, inputs_fp32.bfloat16())  # fp32 arithmetic on the bf16 inputs, rounded once
    assert (out.float() - exact).abs().max() <= (plain.float() - exact).abs().max()
    same, _ = attention(module, q, k, v, None, is_causal=True)  # no autocast: the original
    assert torch.equal(same, exact)
