"""Embedders: unit-norm float32 rows; policy mean pooling is padding-invariant; MiniLM is sane."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ampo.embeddings import PolicyEmbedder, SentenceEmbedder, load_embedder, minilm_path

WORDS = "the a cat dog sat on mat sun is warm happy sad garden robot sings today very".split()


@pytest.fixture(scope="module")
def policy():
    """A tiny random Llama and a whitespace word-level tokenizer, built in-process."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
    )
    return LlamaForCausalLM(config).eval(), tokenizer


def test_policy_embedder_shape_dtype_unit_norm(policy):
    vectors = PolicyEmbedder(*policy)(["the cat sat", "a dog", "happy robot sings today"])
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_policy_embedder_is_the_normalised_mean_of_last_hidden_states(policy):
    model, tokenizer = policy
    ids = torch.tensor([tokenizer("the sun is warm", add_special_tokens=False).input_ids])
    with torch.no_grad():
        states = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
    expected = states.mean(0) / states.mean(0).norm()
    vector = PolicyEmbedder(model, tokenizer)(["the sun is warm"])[0]
    np.testing.assert_allclose(vector, expected, atol=1e-5)


def test_policy_embedding_does_not_depend_on_padding_or_batching(policy):
    texts = ["the cat", "the cat sat on the mat in the warm sun today", "a very happy robot sings"]
    alone = PolicyEmbedder(*policy)(["the cat"])[0]
    batched = PolicyEmbedder(*policy, batch_size=8)(texts)
    one_by_one = PolicyEmbedder(*policy, batch_size=1)(texts)
    np.testing.assert_allclose(batched[0], alone, atol=1e-5)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert not np.allclose(batched[0], batched[1], atol=1e-3)


def test_policy_embedder_restores_training_mode_and_embeds_empty_text_as_eos(policy):
    model, tokenizer = policy
    model.train()
    try:
        vectors = PolicyEmbedder(model, tokenizer)(["", "</s>"])
        assert model.training
    finally:
        model.eval()
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    assert PolicyEmbedder(model, tokenizer)([]).shape == (0, 32)


def test_load_embedder_specs(policy, tmp_path):
    assert isinstance(load_embedder("policy", policy=policy, batch_size=4), PolicyEmbedder)
    assert isinstance(load_embedder(), SentenceEmbedder)
    folder = load_embedder(str(tmp_path))
    assert isinstance(folder, SentenceEmbedder) and folder.path == tmp_path
    with pytest.raises(ValueError, match="policy=\\(model, tokenizer\\)"):
        load_embedder("policy")
    with pytest.raises(ValueError, match="unknown embedder 'nope'"):
        load_embedder("nope")
    with pytest.raises(ValueError, match="not found"):
        SentenceEmbedder(tmp_path / "missing")


def test_minilm_path_is_the_bundled_model():
    assert (minilm_path() / "model.safetensors").is_file()


def test_sentence_embedder_on_bundled_minilm():
    embed = SentenceEmbedder()
    texts = [
        "The cat is sleeping on the sofa.",
        "A kitten naps on the couch.",
        "Quarterly tax filings are due in April.",
    ]
    vectors = embed(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(embed(texts), vectors)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert embed([]).shape == (0, 384)
