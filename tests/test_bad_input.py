"""Every bad input is one line, exit 2, no traceback and no partial file, naming the file, the
1-based row and the field (or the option): each case of the reliability campaign (issue 13)."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from ampo.cli import main
from ampo.config import ConfigError, load_config
from helpers import ROOT

EXAMPLES = ROOT / "examples"
GOOD = {"prompt": "p", "responses": ["a", "b", "c"], "rewards": [0.1, 0.5, -0.2], "embeddings": [[1, 0], [0, 1], [1, 1]]}
PAIR = {"prompt": "p", "chosen": "good", "rejected": "bad", "score_chosen": 2.0, "score_rejected": 1.0}
HUGE = 10**400


def lines(path, *rows):
    """A JSONL file whose lines are `rows` (dicts, or raw str/bytes lines)."""
    data = b"".join((r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode()) + b"\n"
                    for r in rows)
    path.write_bytes(data)
    return path


def pool(tmp, second):
    return lines(tmp / "pool.jsonl", GOOD, second)


def pairs(tmp, second):
    return lines(tmp / "pairs.jsonl", PAIR, second)


def select(path, *extra):
    return ["select", "--input", str(path), "--output", str(path.parent / "out.jsonl"), "--strategy", "bottomk",
            "--k", "1", *extra]


def score(path, *extra):
    return ["score", "--input", str(path), "--output", str(path.parent / "out.jsonl"), *extra]


def generate(tmp, prompts=EXAMPLES / "tiny_prompts.jsonl", *extra):
    return ["generate", "--input", str(prompts), "--output", str(tmp / "out.jsonl"), "--n", "2",
            "--max-new-tokens", "2", *extra]


def train_rm(path, *extra):
    return ["train-rm", "--input", str(path), "--output", str(path.parent / "rm"), "--epochs", "1", *extra]


def bin_only(tmp, policy):
    """The tiny policy with its weights as a pickle (`pytorch_model.bin`) instead of safetensors."""
    folder = tmp / "bin_policy"
    shutil.copytree(policy, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def pickled_adapter(tmp, policy, payload=None):
    """A LoRA adapter on the tiny policy whose weights are a pickle (`adapter_model.bin`): its own
    tensors, or `payload`."""
    from peft import LoraConfig, get_peft_model

    from helpers import make_tiny_model, make_tiny_tokenizer  # the tiny policy's architecture

    folder = tmp / "adapter"
    model = get_peft_model(make_tiny_model(make_tiny_tokenizer()),
                           LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(folder)
    weights = load_file(folder / "adapter_model.safetensors")
    torch.save(weights if payload is None else payload, folder / "adapter_model.bin")
    (folder / "adapter_model.safetensors").unlink()
    return folder


def missing_layer(tmp, policy):
    """The tiny policy with one tensor dropped from its weights."""
    folder = tmp / "partial_policy"
    shutil.copytree(policy, folder)
    weights = load_file(folder / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def huge_reward_fn(tmp):
    (tmp / "huge.py").write_text("def reward(prompts, responses):\n    return [10**400] * len(responses)\n")
    return f"{tmp / 'huge.py'}:reward"


def responses(tmp, *more):
    """An IFEval responses file: a good row (key 1000), then `more`."""
    return lines(tmp / "responses.jsonl", {"key": 1000, "response": "fine"}, *more)


def evaluate(path, output=None):
    return ["evaluate", "--benchmark", "ifeval", "--responses", str(path), "--output",
            str(output or path.parent / "out"), "--bootstrap", "10"]


def a_file(tmp):
    (tmp / "file").write_text("x")
    return tmp / "file"


# id -> (argv, expected fragment), from (tmp_path, tiny policy folder)
CASES = {
    "400-digit reward": lambda t, p: (
        select(pool(t, {**GOOD, "rewards": [HUGE, 0, 1]})),
        f"{t}/pool.jsonl: row 2: field 'rewards[0]': must be finite, got an integer of 401 digits"),
    "deeply nested JSON line": lambda t, p: (
        select(pool(t, '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}")),
        f"{t}/pool.jsonl: row 2: not valid JSON (nested too deeply)"),
    "later row without the first row's layout field": lambda t, p: (
        score(lines(t / "pool.jsonl", {"prompt": "p", "all_generated_responses": ["a", "b"]},
                    {"prompt": "q", "responses": ["a", "b"]})),
        f"{t}/pool.jsonl: row 2: field 'all_generated_responses': missing"),
    "output path under a file": lambda t, p: (
        ["score", "--input", str(EXAMPLES / "tiny_pool.jsonl"), "--output", str(a_file(t) / "out.jsonl")],
        f"cannot write {t}/file/out.jsonl: Not a directory"),
    "input directory named .jsonl": lambda t, p: (
        (t / "dir.jsonl").mkdir() or score(t / "dir.jsonl"), f"{t}/dir.jsonl: a folder, but not one written by datasets' save_to_disk"),
    "reward function returning a huge integer": lambda t, p: (
        ["score", "--input", str(EXAMPLES / "tiny_pool.jsonl"), "--output", str(t / "out.jsonl"),
         "--reward", huge_reward_fn(t)],
        "huge.py:reward' returned a number too large for a float"),
    "policy folder with only pytorch_model.bin": lambda t, p: (
        generate(t, EXAMPLES / "tiny_prompts.jsonl", "--policy", str(bin_only(t, p))),
        f"policy {t}/bin_policy: no safetensors weights (only pytorch_model.bin: pickled weights can run code"),
    "reward-model folder with only pytorch_model.bin": lambda t, p: (
        ["score", "--input", str(EXAMPLES / "tiny_pool.jsonl"), "--output", str(t / "out.jsonl"),
         "--reward", str(bin_only(t, p))],
        f"reward model {t}/bin_policy: no safetensors weights (only pytorch_model.bin"),
    "evaluate: a LoRA adapter with only adapter_model.bin": lambda t, p: (
        ["evaluate", "--benchmark", "ifeval", "--policy", str(pickled_adapter(t, p)), "--base", str(p),
         "--output", str(t / "out"), "--limit", "1"],
        f"adapter {t}/adapter: no adapter_model.safetensors (only adapter_model.bin: pickled weights can run code"),
    "reward-model folder without its head weights": lambda t, p: (
        ["score", "--input", str(EXAMPLES / "tiny_pool.jsonl"), "--output", str(t / "out.jsonl"), "--reward", str(p)],
        f"reward model {p}: its weights do not cover the model: 1 parameter(s) missing, e.g. 'score.weight'"),
    "policy folder whose weights do not cover the model": lambda t, p: (
        generate(t, EXAMPLES / "tiny_prompts.jsonl", "--policy", str(missing_layer(t, p))),
        f"policy {t}/partial_policy: its weights do not cover the model: 1 parameter(s) missing, "
        "e.g. 'model.layers.1.mlp.up_proj.weight'"),
    "train-rm prompt null": lambda t, p: (
        train_rm(pairs(t, {**PAIR, "prompt": None})),
        f"{t}/pairs.jsonl: row 2: field 'prompt': must be a string or a list of {{role, content}} messages"),
    "train-rm prompt a number": lambda t, p: (
        train_rm(pairs(t, {**PAIR, "prompt": 7})), f"{t}/pairs.jsonl: row 2: field 'prompt': must be a string"),
    "train-rm score_chosen null": lambda t, p: (
        train_rm(pairs(t, {**PAIR, "score_chosen": None}), "--soft-gamma", "1"),
        f"{t}/pairs.jsonl: row 2: field 'score_chosen': must be a number, got None"),
    "train-rm 400-digit margin": lambda t, p: (
        train_rm(pairs(t, {"prompt": "p", "chosen": "a", "rejected": "b", "margin": HUGE}), "--soft-gamma", "1"),
        f"{t}/pairs.jsonl: row 2: field 'margin': must be finite, got an integer of 401 digits"),
    "train-rm chosen missing, row counted from 1": lambda t, p: (
        train_rm(lines(t / "pairs.jsonl", {"prompt": "p", "rejected": "b"})),
        f"{t}/pairs.jsonl: row 1: field 'chosen': must be a string"),
    "train-rm --batch-size 0": lambda t, p: (
        train_rm(pairs(t, PAIR), "--batch-size", "0"), "argument --batch-size: must be >= 1, got 0"),
    "train-rm NaN --soft-gamma": lambda t, p: (
        train_rm(pairs(t, PAIR), "--soft-gamma", "nan"), "argument --soft-gamma: must be a finite number, got nan"),
    "generate NaN --temperature": lambda t, p: (
        generate(t, EXAMPLES / "tiny_prompts.jsonl", "--temperature", "nan"),
        "argument --temperature: must be a finite number, got nan"),
    "select --k 0": lambda t, p: (select(pool(t, GOOD))[:-2] + ["--k", "0"], "argument --k: must be >= 1, got 0"),
    "non-UTF-8 input": lambda t, p: (
        select(pool(t, b'{"prompt": "caf\xe9", "responses": ["a"]}')),
        f"{t}/pool.jsonl: row 2: not UTF-8 text (byte 16 of the line)"),
    "ragged embeddings": lambda t, p: (
        select(pool(t, {**GOOD, "embeddings": [[1, 0], [1], [0, 1]]})),
        f"{t}/pool.jsonl: row 2: field 'embeddings': rows have different widths [1, 2]"),
    "string embeddings": lambda t, p: (
        select(pool(t, {**GOOD, "embeddings": [["1", "0"], ["0", "1"], ["1", "1"]]})),
        f"{t}/pool.jsonl: row 2: field 'embeddings': must hold numbers only"),
    "embedding widths differ between rows": lambda t, p: (
        select(pool(t, {**GOOD, "embeddings": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]})),
        f"{t}/pool.jsonl: row 2: field 'embeddings': width 3 differs from row 1's 2"),
    "duplicate id after a blank line": lambda t, p: (
        generate(t, lines(t / "prompts.jsonl", {"id": "a", "prompt": "x"}, "", {"id": "a", "prompt": "y"})),
        f"{t}/prompts.jsonl: row 3: field 'id': duplicate id 'a' (first on row 1)"),
    "failed --trl-pairs write": lambda t, p: (
        select(pool(t, GOOD), "--trl-pairs", str(a_file(t) / "pairs.jsonl")),
        f"cannot write {t}/file/pairs.jsonl: Not a directory"),
    "empty prompt file": lambda t, p: (
        generate(t, lines(t / "prompts.jsonl", "")), f"{t}/prompts.jsonl: no prompts"),
    "blank .txt prompt file": lambda t, p: (
        (t / "prompts.txt").write_text("\n  \n") and generate(t, t / "prompts.txt"), f"{t}/prompts.txt: no prompts"),
    "non-UTF-8 .txt prompts": lambda t, p: (
        (t / "prompts.txt").write_bytes(b"fine\n\xff\n") and generate(t, t / "prompts.txt"),
        f"{t}/prompts.txt: row 2: not UTF-8 text"),
    "unknown output type": lambda t, p: (
        ["score", "--input", str(EXAMPLES / "tiny_pool.jsonl"), "--output", str(t / "out.csv")],
        f"{t}/out.csv: unknown file type '.csv'"),
    "evaluate: a 400-digit key": lambda t, p: (
        evaluate(responses(t, {"key": HUGE, "response": "x"})),
        f"{t}/responses.jsonl: row 2: field 'key': unknown key 1000000000"),
    "evaluate: an answered prompt answered again": lambda t, p: (
        evaluate(responses(t, {"key": 1000, "response": "again"})),
        f"{t}/responses.jsonl: row 2: duplicate: key 1000 was already answered in row 1"),
    "evaluate: a response that is not a string": lambda t, p: (
        evaluate(responses(t, {"key": 1001, "response": 7})),
        f"{t}/responses.jsonl: row 2: field 'response': missing or not a string"),
    "evaluate: non-UTF-8 responses": lambda t, p: (
        evaluate(responses(t, b'{"key": 1001, "response": "caf\xe9"}')),
        f"{t}/responses.jsonl: row 2: not UTF-8 text"),
    "evaluate: output folder under a file": lambda t, p: (
        evaluate(responses(t), a_file(t) / "out"), f"cannot write {t}/file/out: Not a directory"),
    "prompt meta that is not an object": lambda t, p: (
        generate(t, lines(t / "prompts.jsonl", {"prompt": "x", "meta": [1]})),
        f"{t}/prompts.jsonl: row 1: field 'meta': must be a JSON object"),
    "prompt meta as deeply nested JSON text": lambda t, p: (
        generate(t, lines(t / "prompts.jsonl", {"prompt": "x", "meta": "[" * 100_000 + "]" * 100_000})),
        f"{t}/prompts.jsonl: row 1: field 'meta': not valid JSON (nested too deeply)"),
    # issue 29: fields copied through before, and failing later or never
    "finished shorter than responses": lambda t, p: (
        select(pool(t, {**GOOD, "finished": [True, False]})),
        f"{t}/pool.jsonl: row 2: field 'finished': has 2 entries but there are 3 responses"),
    "n_tokens of the wrong length": lambda t, p: (
        select(pool(t, {**GOOD, "n_tokens": [3, 4, 5, 6]})),
        f"{t}/pool.jsonl: row 2: field 'n_tokens': has 4 entries but there are 3 responses"),
    "negative n_tokens": lambda t, p: (
        select(pool(t, {**GOOD, "n_tokens": [3, -4, 5]})),
        f"{t}/pool.jsonl: row 2: field 'n_tokens[1]': must be a token count (>= 0), got -4"),
    "a lone surrogate in a response": lambda t, p: (
        select(pool(t, '{"prompt": "p", "responses": ["a", "b\\ud800"], "rewards": [1, 2]}')),
        f"{t}/pool.jsonl: row 2: field 'responses[1]': holds a lone surrogate '\\ud800'"),
    "a lone surrogate in a prompt's meta": lambda t, p: (
        generate(t, lines(t / "prompts.jsonl", '{"prompt": "x", "meta": {"k": ["\\udc80"]}}')),
        f"{t}/prompts.jsonl: row 1: field 'meta.k[0]': holds a lone surrogate '\\udc80'"),
    "a member name given twice in a pool row": lambda t, p: (
        select(pool(t, '{"prompt": "p", "responses": ["a", "b"], "rewards": [1, 2], "rewards": [2, 1]}')),
        f"{t}/pool.jsonl: row 2: field 'rewards': given twice in one JSON object"),
    "a member name given twice in meta JSON text": lambda t, p: (
        generate(t, lines(t / "prompts.jsonl", {"prompt": "x", "meta": '{"a": 1, "a": 2}'})),
        f"{t}/prompts.jsonl: row 1: field 'meta': member 'a' given twice in one JSON object"),
    "evaluate: a key given twice in one row": lambda t, p: (
        evaluate(responses(t, '{"key": 1001, "key": 1005, "response": "x"}')),
        f"{t}/responses.jsonl: row 2: field 'key': given twice in one JSON object"),
    "make-prompts unknown output type": lambda t, p: (
        ["make-prompts", "--task", "ifeval", "--n", "2", "--output", str(t / "prompts.csv")],
        f"{t}/prompts.csv: unknown file type '.csv'"),
}


def run_main(argv) -> int:
    try:
        return main(["-q", *argv])
    except SystemExit as e:  # argparse's usage errors
        return e.code


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_exit_2_and_no_file(name, tmp_path, tiny_policy, capsys):  # noqa: F811
    argv, fragment = CASES[name](tmp_path, tiny_policy)
    before = sorted(tmp_path.rglob("*"))
    assert run_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ampo"), err[:3000]  # one line: no traceback
    assert fragment in err
    assert sorted(tmp_path.rglob("*")) == before  # no output, no partial or temporary file


def test_pickled_adapters_are_refused_wherever_one_loads(tmp_path, tiny_policy):  # noqa: F811
    """A round checkpoint (`load_round_policy`) is an adapter like `evaluate --policy`'s: no
    safetensors, no load; every PEFT load goes through `ampo.models.load_adapter` (issue 29)."""
    from ampo.stages import load_round_policy

    adapter = pickled_adapter(tmp_path, tiny_policy)
    with pytest.raises(ValueError, match=f"adapter {adapter}: no adapter_model.safetensors"):
        load_round_policy(load_config(overrides=[f"model.policy={tiny_policy}"]), [adapter])
    src = ROOT / "src" / "ampo"
    callers = [p.relative_to(src).as_posix() for p in sorted(src.rglob("*.py"))
               if "PeftModel.from_pretrained(" in p.read_text() and p.name != "models.py"]
    assert callers == []


def test_a_pickle_that_is_not_plain_weights_is_one_line(tmp_path, tiny_policy, monkeypatch, capsys):  # noqa: F811
    """With AMPO_ALLOW_BIN=1, torch's weights_only loader still refuses a pickle holding objects;
    that refusal is one line (an adapter and a policy), not a many-line UnpicklingError."""
    import argparse

    monkeypatch.setenv("AMPO_ALLOW_BIN", "1")
    adapter = pickled_adapter(tmp_path, tiny_policy, payload={"x": argparse.Namespace()})
    policy = bin_only(tmp_path, tiny_policy)
    torch.save({"x": argparse.Namespace()}, policy / "pytorch_model.bin")
    for argv, what in ((["evaluate", "--benchmark", "ifeval", "--policy", str(adapter), "--base", str(tiny_policy),
                         "--output", str(tmp_path / "out"), "--limit", "1"], f"adapter {adapter}"),
                       (generate(tmp_path, EXAMPLES / "tiny_prompts.jsonl", "--policy", str(policy)),
                        f"policy {policy}")):
        assert run_main(argv) == 2
        err = capsys.readouterr().err
        assert err == (f"ampo: error: {what}: its pickled weights hold more than tensors (it names "
                       "argparse.Namespace); torch's weights_only loader refused them\n")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.jsonl").exists()
    torch.save(load_file(tiny_policy / "model.safetensors"), policy / "pytorch_model.bin")
    assert run_main(generate(tmp_path, EXAMPLES / "tiny_prompts.jsonl", "--policy", str(policy))) == 0  # trusted


def test_full_disk_fails_in_one_line_and_leaves_no_file(tmp_path, tiny_policy):  # noqa: F811
    """select, score and embed when the output does not fit (RLIMIT_FSIZE stands in for a full
    disk: the kernel refuses the write the same way, with an OSError)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, resource.RLIM_INFINITY))

    pool_file = lines(tmp_path / "pool.jsonl", *[GOOD] * 40)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for argv in (select(pool_file), score(pool_file),
                 ["embed", "--input", str(pool_file), "--output", str(tmp_path / "out.jsonl"), "--embedder", "policy",
                  "--policy", str(tiny_policy)]):
        done = subprocess.run([sys.executable, "-m", "ampo.cli", "-q", *argv], env=env, capture_output=True,
                              text=True, preexec_fn=limit, timeout=120)
        assert done.returncode == 2, done.stderr[-2000:]
        assert done.stderr == f"ampo: error: cannot write {tmp_path}/out.jsonl: File too large\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.jsonl"]


def _file_size_limit(limit):
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return set_limit


def _train(t, p, *extra):
    return ["train", "--input", str(EXAMPLES / "trl_pairs.jsonl"), "--output", str(t / "out"), "--policy", str(p),
            "--strategy", "bottomk", "--k", "1", "--max-steps", "1", *extra]


# id -> (file size limit, argv from (tmp, policy), the line; none of these writes is JSON or Parquet)
FULL_DISK_SAVES = {
    "Trainer checkpoint, safetensors": (
        50_000, lambda t, p: _train(t, p, "--no-lora"),
        "cannot write {t}/out/train/checkpoint-1/model.safetensors: File too large"),
    "Trainer checkpoint, torch.save": (  # the LoRA weights fit, the optimizer state does not
        150_000, lambda t, p: _train(t, p, "model.lora_r=64"),
        "cannot write {t}/out/train/checkpoint-1/optimizer.pt: the write stopped short (is the disk full?)"),
    "--merge": (
        50_000, lambda t, p: _train(t, p, "--merge", "model.lora_r=2"),
        "cannot write {t}/out/merged/model.safetensors: File too large"),
    "train-rm": (
        50_000, lambda t, p: train_rm(lines(t / "pairs.jsonl", PAIR, PAIR)),  # the bundled MiniLM backbone
        "cannot write {t}/rm/model.safetensors: File too large"),
}


@pytest.mark.parametrize("name", FULL_DISK_SAVES)
def test_full_disk_in_a_safetensors_or_torch_save_is_one_line(name, tmp_path, tiny_policy):  # noqa: F811
    """safetensors' SafetensorError and torch.save's RuntimeError are not OSErrors: a full disk in
    them is named like one (issue 29); the folders written atomically are not left behind, and the
    same command rerun once there is room finishes."""
    limit, argv, line = FULL_DISK_SAVES[name]
    argv = argv(tmp_path, tiny_policy)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "ampo.cli", "-q", *argv], env=env, capture_output=True, text=True,
                          preexec_fn=_file_size_limit(limit), timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == "ampo: error: " + line.format(t=tmp_path)
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "merged").exists() and not (tmp_path / "rm").exists()
    if name == "Trainer checkpoint, safetensors":  # room again: the rerun finishes
        assert subprocess.run([sys.executable, "-m", "ampo.cli", "-q", *argv], env=env, capture_output=True,
                              timeout=300).returncode == 0
        assert (tmp_path / "out" / "checkpoint" / "model.safetensors").is_file()


def test_full_disk_while_converting_the_default_policy_is_one_line(tmp_path):
    """The default policy's conversion into the cache (a fake GGUF reader gives the tiny model)."""
    script = f"""
import resource, signal, sys
sys.path.insert(0, {str(ROOT / "tests")!r})
from helpers import make_tiny_model, make_tiny_tokenizer
from ampo import models
models.gguf_location = lambda: (None, None)
models.load_gguf = lambda *a: (make_tiny_model(make_tiny_tokenizer()), make_tiny_tokenizer())
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, resource.RLIM_INFINITY))
from ampo.cli import main
sys.exit(main(["-q", "generate", "--input", {str(EXAMPLES / "tiny_prompts.jsonl")!r}, "--output",
               {str(tmp_path / "out.jsonl")!r}, "--n", "1", "--max-new-tokens", "2"]))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "AMPO_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == (f"ampo: error: cannot write {tmp_path}/cache/smollm2-135m-instruct/"
                                            "model.safetensors: File too large")
    assert list((tmp_path / "cache").iterdir()) == [] and not (tmp_path / "out.jsonl").exists()


LATE_OPTIONS = [  # each used to fail only after models were loaded, or never
    ("generate.shard_prompts=0", "config 'generate.shard_prompts': must be >= 1, got 0"),
    ("embed.batch_size=0", "config 'embed.batch_size': must be >= 1, got 0"),
    ("data.split_seed=-1", "config 'data.split_seed': must be >= 0, got -1"),
    ("eval.samples_per_prompt=0", "config 'eval.samples_per_prompt': must be >= 1, got 0"),
    ("generate.max_new_tokens=0", "config 'generate.max_new_tokens': must be >= 1, got 0"),
    ("eval.temperature=-1", "config 'eval.temperature': must be >= 0, got -1.0"),
    ("model.lora_r=0", "config 'model.lora_r': must be >= 1, got 0"),
    ("train.lr_scheduler=cosine_with_min_lr", "config 'train.lr_scheduler': must be one of linear, cosine,"),
    ("eval.bootstrap=0", "config 'eval.bootstrap': must be >= 1, got 0"),
    ("select.k=0", "config 'select.k': must be >= 1, got 0"),
    ("generate.temperature=.nan", "config 'generate.temperature': must be a finite number, got nan"),
    ("train.learning_rate=nan", "config 'train.learning_rate': must be a finite number, got nan"),
    ("train.hparams.beta=.nan", "config 'train.hparams.beta': must be a finite number, got nan"),
    ("train.warmup_ratio=.inf", "config 'train.warmup_ratio': must be a finite number, got inf"),
    ("model.lora_dropout=1", "config 'model.lora_dropout': must be in [0, 1), got 1.0"),
    ("data.prompts=/no/such/prompts.jsonl", "config 'data.prompts': no such file: '/no/such/prompts.jsonl'"),
    ("score.reward=/no/such/rm", "config 'score.reward': unknown reward '/no/such/rm': expected 'builtin',"),
    ("embed.embedder=/no/such/st", "config 'embed.embedder': unknown embedder '/no/such/st': expected 'minilm',"),
    ("score.reward=ifeval:strict=1", "config 'score.reward': reward 'ifeval:strict=1': options are loose=NUMBER, "
                                     "degeneracy=NUMBER"),
    ("score.reward=ifeval:loose=nan", "config 'score.reward': ifeval reward: loose must be a finite number >= 0, "
                                      "got nan"),
    ("score.reward=ifeval:degeneracy=-1", "config 'score.reward': ifeval reward: degeneracy must be a finite number "
                                          ">= 0, got -1.0"),
    ("data.prompts=builtin-nothing", "config 'data.prompts': no such file: 'builtin-nothing' (or a bundled set: "
                                     "builtin, builtin-ifeval)"),
    ("eval.benchmarks=[mmlu]", "config 'eval.benchmarks': unknown benchmark 'mmlu' (known: ifeval, ifbench)"),
    ("eval.benchmarks=[ifeval,ifeval]", "config 'eval.benchmarks': a benchmark is named twice"),
    ("eval.benchmark_limit=-1", "config 'eval.benchmark_limit': must be >= 0, got -1"),
    ("eval.benchmark_max_new_tokens=0", "config 'eval.benchmark_max_new_tokens': must be >= 1, got 0"),
    ("eval.benchmark_prompts_per_batch=0", "config 'eval.benchmark_prompts_per_batch': must be >= 1, got 0"),
    ("data.heldout=320", "config 'data.heldout': 320 leaves no training prompts (320 prompts in "),  # no run folder
]


@pytest.mark.parametrize("override,message", LATE_OPTIONS, ids=[o for o, _ in LATE_OPTIONS])
def test_bad_option_is_refused_before_anything_runs(override, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_main(["run", f"out={out}", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("option", ["seed", "rounds", "select.k", "train.learning_rate", "train.epochs",
                                    "train.hparams.beta", "select.min_margin", "data.split_seed"])
def test_a_400_digit_option_is_one_line(option, tmp_path, capsys):
    """As inside a pool file: refused, not an OverflowError from the range check (issue 29)."""
    out = tmp_path / "run"
    assert run_main(["run", f"out={out}", f"{option}={HUGE}"]) == 2
    err = capsys.readouterr().err
    assert err == f"ampo: error: config '{option}': must be finite, got an integer of 401 digits\n"
    assert not out.exists()


@pytest.mark.parametrize("command,flag", [("train", "--k"), ("train", "--seed"), ("train", "--max-steps"),
                                          ("select", "--k"), ("generate", "--n"), ("train-rm", "--epochs"),
                                          ("evaluate", "--limit")])
def test_a_400_digit_flag_is_one_line(command, flag, tmp_path, capsys):
    files = ["--benchmark", "ifeval", "--policy", "p"] if command == "evaluate" else ["--input", "in.jsonl"]
    assert run_main([command, *files, "--output", str(tmp_path / "o"), flag, str(HUGE)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"argument {flag}: must be finite, got an integer of 401 digits" in err, err
    assert list(tmp_path.iterdir()) == []


def test_seed_fits_32_bits():
    """NumPy (and the Trainer's set_seed) take seeds below 2**32: a larger one is refused at config
    time, not after the model has loaded (issue 29)."""
    assert load_config(overrides=[f"seed={2**32 - 1}"]).seed == 2**32 - 1
    with pytest.raises(ConfigError, match=r"^config 'seed': must be in \[0, 4294967295\], got 4294967296$"):
        load_config(overrides=[f"seed={2**32}"])


def test_an_integer_python_will_not_convert_is_one_line(tmp_path, capsys):
    assert run_main(["run", f"out={tmp_path / 'run'}", "seed=" + "1" * 5000]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ampo: error: config override 'seed=': Exceeds the limit"), err


BOMB = "".join(f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join([f'*{chr(96 + i)}'] * 9 if i else ['lol'] * 9)}]\n"
               for i in range(9))


@pytest.mark.parametrize("text,message", [
    ("- a\n- b\n", "must be a mapping of sections and options (like 'select: {k: 3}'), got a list"),
    ("just a string\n", "got a str"),
    (BOMB, "its aliases expand to more than 100000 values; refused"),
    ("select:\n  k: [1\n", "line 3: not valid YAML"),
    (b"seed: 0\n# caf\xe9\n", "not UTF-8 text"),
], ids=["list", "string", "alias bomb", "broken YAML", "non-UTF-8"])
def test_bad_config_file_is_one_short_line(text, message, tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert run_main(["run", str(path), f"out={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}" in err and message in err, err
    assert len(err) < 300  # the 422-byte bomb once produced a 350 MB error line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command,flag,option,bad", [
    ("generate", "--temperature", "generate.temperature", "-0.5"),
    ("generate", "--top-p", "generate.top_p", "0"),
    ("generate", "--max-new-tokens", "generate.max_new_tokens", "0"),
    ("generate", "--prompts-per-batch", "generate.prompts_per_batch", "0"),
    ("generate", "--seed", "seed", "-1"),
    ("select", "--k", "select.k", "0"),
    ("select", "--seed", "seed", "-1"),
    ("select", "--seed", "seed", str(2**32)),
    ("evaluate", "--limit", "eval.benchmark_limit", "-1"),
    ("evaluate", "--max-new-tokens", "eval.benchmark_max_new_tokens", "0"),
    ("evaluate", "--prompts-per-batch", "eval.benchmark_prompts_per_batch", "0"),
    ("evaluate", "--shard-prompts", "generate.shard_prompts", "0"),
    ("evaluate", "--bootstrap", "eval.bootstrap", "0"),
    ("evaluate", "--seed", "seed", "-1"),
])
def test_cli_flags_and_config_options_share_their_ranges(command, flag, option, bad, capsys):
    files = (["--benchmark", "ifeval", "--policy", "p"] if command == "evaluate" else ["--input", "in.jsonl"])
    assert run_main([command, *files, "--output", "out.jsonl", flag, bad]) == 2
    cli_problem = capsys.readouterr().err.split(f"argument {flag}: ", 1)[1].split(" (see ")[0]
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[f"{option}={bad}"])
    assert str(e.value) == f"config '{option}': {cli_problem}"


def test_generate_n_is_1_or_more_on_the_command_line_and_2_or_more_in_a_run(capsys):
    """`ampo generate --n 1` (greedy single answers) is allowed; a self-play round needs n >= 2."""
    assert run_main(["generate", "--input", "in.jsonl", "--output", "out.jsonl", "--n", "0"]) == 2
    assert "argument --n: must be >= 1, got 0" in capsys.readouterr().err
    from ampo.cli import build_parser

    assert build_parser().parse_args(["generate", "--input", "i.jsonl", "--output", "o.jsonl", "--n", "1"]).n == 1
    with pytest.raises(ConfigError, match="config 'generate.n': must be >= 2, got 1"):
        load_config(overrides=["generate.n=1", "select.k=1"])
