"""Helpers the test modules share: a tiny tokenizer trained in-process and tiny random models (a
Llama policy, a BERT classifier), the tiny self-play config and ways to run it (in-process, or as a
process to kill at a given point), and small pools and preference pairs. Nothing is downloaded.

The tokenizer is byte-level BPE (any text round-trips through encode/decode) with a ChatML-style
template and `<|im_end|>` as eos = pad, like SmolLM2. `conftest.py` turns these into fixtures.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ampo.config import load_config
from ampo.data import PoolRecord

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Write a short happy story about a cat and a sunny garden.",
    "I love this movie, it was wonderful and great fun!",
    "This is terrible, awful and sad; I hated every minute.",
    "Explain why the sky is blue in one sentence.",
    "Once upon a time there was a small robot who wanted to sing.",
    "Numbers like 1, 2, 3 and 42 appear in text too.",
]


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    """Train the byte-level BPE once per session (a few ms) and keep it as JSON."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return tok.to_str()


def make_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh tokenizer object (callers may mutate it, e.g. padding_side)."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """A random 2-layer Llama (hidden 32) over `tokenizer`'s vocabulary, in eval mode."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


ROOT = Path(__file__).resolve().parents[1]


def tiny_overrides(policy: Path, out: Path, *extra: str) -> list[str]:
    return [f"out={out}", "rounds=1", f"model.policy={policy}", "model.lora=false",
            f"data.prompts={ROOT / 'examples' / 'tiny_prompts.jsonl'}", "data.heldout=2",
            "generate.n=4", "generate.max_new_tokens=6", "generate.shard_prompts=2", "select.k=2",
            "embed.embedder=policy", "eval.samples_per_prompt=2", "eval.max_new_tokens=6", "eval.bootstrap=200",
            "train.prompts_per_step=2", "train.learning_rate=0.01", "train.save_steps=1", *extra]


def run(policy, out, *extra):
    """One tiny self-play run in this process; each round's eval.json."""
    from ampo.pipeline import Pipeline

    return Pipeline(load_config(overrides=tiny_overrides(policy, out, *extra)), progress=False).run()


def run_cli(args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "ampo.cli", "-q", "run", *args], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def kill_when(proc, ready, timeout=240):
    t0 = time.time()
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"run ended (exit {proc.returncode}) before the kill point")
        if time.time() - t0 > timeout:
            proc.kill()
            pytest.fail("kill point not reached")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def stage_done(out, name):
    def ready():
        try:
            return json.loads((out / "manifest.json").read_text())["stages"][name]["status"] == "done"
        except (FileNotFoundError, KeyError, json.JSONDecodeError):
            return False
    return ready


def tiny_bert(folder, tokenizer, seed=0, num_labels=1):
    """Save a tiny random BERT classifier with `tokenizer` to `folder`."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


GOOD = ["great", "helpful", "kind", "clear", "friendly", "lovely"]
FILLER = ["the", "answer", "was", "and", "very", "quite", "reply", "tone", "it", "felt"]


def counting_pairs(rng, n):
    """Pairs whose quality is the number of GOOD words mixed into 8 filler words (0-4)."""

    def sentence(quality):
        words = [rng.choice(FILLER) for _ in range(8)]
        for _ in range(quality):
            words.insert(rng.randrange(len(words) + 1), rng.choice(GOOD))
        return " ".join(words)

    pairs = []
    for _ in range(n):
        high, low = sorted(rng.sample(range(5), 2), reverse=True)
        pairs.append(
            {"prompt": "How was the reply?", "chosen": sentence(high), "rejected": sentence(low),
             "score_chosen": high, "score_rejected": low}
        )
    return pairs


def pool_records():
    texts = ["I love this, wonderful!", "This is terrible and sad.", "The quick brown fox.", "Once upon a time"]
    return [
        PoolRecord(prompt="Write a short happy story.", responses=texts, rewards=[1.0, -1.0, 0.2, 0.0],
                   selected=[0, 1, 3, 2], finished=[True, True, False, True]),
        PoolRecord(prompt=[{"role": "user", "content": "Explain why the sky is blue."}], responses=texts[:3],
                   rewards=[0.1, 0.9, -0.5], selected=[1, 2]),
    ]
