"""The `ampo` command: stage commands on the shipped example pools, TRL export, clear errors
with a non-zero exit and no partial output."""

import json
from pathlib import Path

import numpy as np
import pytest

from ampo.cli import main
from ampo.data import read_pool

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_help_lists_the_stages(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("run", "demo", "generate", "score", "embed", "select", "train", "train-rm", "evaluate", "make-prompts",
                "report"):
        assert cmd in out


def test_train_help_describes_every_loss(capsys):
    from ampo.losses import LOSSES

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert all(f"  {name} " in out and spec.description in " ".join(out.split()) for name, spec in LOSSES.items())


def test_generate_one_greedy_answer_per_prompt(tiny_policy, tmp_path):  # noqa: F811
    """`--n 1` is allowed at the command line (single answers, e.g. for a benchmark)."""
    out = tmp_path / "answers.jsonl"
    assert main(["-q", "generate", "--input", str(EXAMPLES / "tiny_prompts.jsonl"), "--output", str(out),
                 "--n", "1", "--temperature", "0", "--max-new-tokens", "3", "--policy", str(tiny_policy)]) == 0
    pool, _ = read_pool(out)
    assert len(pool) == 6 and all(len(rec.responses) == 1 for rec in pool)


def test_score_then_select_bottomk_without_embeddings(tmp_path, capsys):
    scored = tmp_path / "scored.jsonl"
    assert main(["-q", "score", "--input", str(EXAMPLES / "multi_response.jsonl"), "--output", str(scored)]) == 0
    assert "multi_response layout" in capsys.readouterr().out
    recs, _ = read_pool(scored)
    assert all(len(r.rewards) == len(r.responses) for r in recs)
    out = tmp_path / "sel.parquet"
    pairs = tmp_path / "pairs.jsonl"
    assert main(["-q", "select", "--input", str(scored), "--output", str(out), "--strategy", "bottomk", "--k", "2",
                 "--trl-pairs", str(pairs)]) == 0
    sel, _ = read_pool(out)
    for r in sel:
        order = np.argsort(r.rewards, kind="stable")
        assert r.selected[0] == int(np.argmax(r.rewards))
        assert r.selected[1:] == sorted(order[:2].tolist(), key=lambda i: (r.rewards[i], i))
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert len(rows) == 2 * len(sel) and {"prompt", "chosen", "rejected"} <= rows[0].keys()


def test_select_embeds_on_the_fly_when_the_strategy_needs_it(tiny_policy, tmp_path, capsys):
    """optselect on a pool without embeddings embeds it first (here with the policy's hidden
    states), the same as `ampo embed` then `ampo select`."""
    direct, embedded, two_step = tmp_path / "direct.jsonl", tmp_path / "emb.jsonl", tmp_path / "two.jsonl"
    flags = ["--embedder", "policy", "--policy", str(tiny_policy)]
    assert main(["-q", "select", "--input", str(EXAMPLES / "tiny_pool.jsonl"), "--output", str(direct),
                 "--strategy", "optselect", "--k", "2", *flags]) == 0
    assert "embedded" in capsys.readouterr().out
    assert main(["-q", "embed", "--input", str(EXAMPLES / "tiny_pool.jsonl"), "--output", str(embedded), *flags]) == 0
    capsys.readouterr()
    assert main(["-q", "select", "--input", str(embedded), "--output", str(two_step), "--strategy", "optselect",
                 "--k", "2"]) == 0
    assert "embedded" not in capsys.readouterr().out
    a, b = read_pool(direct)[0], read_pool(two_step)[0]
    assert [r.selected for r in a] == [r.selected for r in b]
    assert all(np.array_equal(x.embeddings, y.embeddings) for x, y in zip(a, b))


def test_bad_pool_exits_2_with_one_line_and_no_output(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "responses": ["x", "y"], "rewards": [1, 2]}\n'
                   '{"prompt": "b", "responses": ["x", "y"], "rewards": [1]}\n')
    out = tmp_path / "out.jsonl"
    assert main(["-q", "score", "--input", str(bad), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"ampo: error: {bad}: row 2: field 'rewards': has 1 entries but there are 2 responses"
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]


def test_bad_config_exits_before_loading_anything(tmp_path, capsys):
    assert main(["run", f"out={tmp_path / 'r'}", "select.k=9"]) == 2
    assert "select.k" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_embed_and_select_real_minilm(tmp_path):
    emb = tmp_path / "emb.jsonl"
    assert main(["-q", "embed", "--input", str(EXAMPLES / "tiny_pool.jsonl"), "--output", str(emb)]) == 0
    out = tmp_path / "sel.jsonl"
    assert main(["-q", "select", "--input", str(emb), "--output", str(out), "--strategy", "coreset", "--k", "2"]) == 0
    recs, _ = read_pool(out)
    assert all(r.embeddings.shape == (len(r.responses), 384) and len(r.selected) == 3 for r in recs)


def test_train_rm_then_score_with_it(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"Any tips on topic {i}?"}],
             "chosen": "Happy to help! Here is a clear plan.", "rejected": "Figure it out yourself.",
             "score_chosen": 8.0, "score_rejected": 2.0} for i in range(8)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rm = tmp_path / "rm"
    assert main(["-q", "train-rm", "--input", str(pairs), "--output", str(rm), "--soft-gamma", "0.3",
                 "--epochs", "1", "--batch-size", "8"]) == 0
    scored = tmp_path / "scored.jsonl"
    assert main(["-q", "score", "--input", str(EXAMPLES / "tiny_pool.jsonl"), "--output", str(scored),
                 "--reward", str(rm)]) == 0
    recs, _ = read_pool(scored)
    assert all(len(r.rewards) == len(r.responses) and np.isfinite(r.rewards).all() for r in recs)


def test_generate_greedy_pools_agree_across_batching_modes(tmp_path, tiny_model, tiny_tokenizer):
    tiny_model.save_pretrained(tmp_path / "policy")
    tiny_tokenizer.save_pretrained(tmp_path / "policy")
    (tmp_path / "prompts.txt").write_text("Hi\nWhy is the sky blue?\nWrite a short happy story\n")
    pools = []
    for batching in ("continuous", "hf"):
        out = tmp_path / f"{batching}.jsonl"
        assert main(["-q", "generate", "--input", str(tmp_path / "prompts.txt"), "--output", str(out),
                     "--policy", str(tmp_path / "policy"), "--n", "2", "--temperature", "0", "--max-new-tokens", "6",
                     "--batching", batching, "--batch-rows", "3", "--dtype", "float32"]) == 0
        pools.append(read_pool(out)[0])
    assert [r.responses for r in pools[0]] == [r.responses for r in pools[1]]
    assert [len(r.responses) for r in pools[0]] == [2, 2, 2]


def test_select_sweet_spot_one_negative(tmp_path, capsys):
    out = tmp_path / "sel.jsonl"
    assert main(["-q", "select", "--input", str(EXAMPLES / "tiny_pool.jsonl"), "--output", str(out),
                 "--strategy", "sweet_spot", "--k", "1"]) == 0
    for rec in read_pool(out)[0]:
        r = np.asarray(rec.rewards)
        target = r.mean() - 2 * r.std()
        rest = [i for i in range(len(r)) if i != rec.selected[0]]
        assert rec.selected[0] == int(np.argmax(r)) and len(rec.selected) == 2
        assert rec.selected[1] == min(rest, key=lambda i: (abs(r[i] - target), i))
    capsys.readouterr()
    assert main(["-q", "select", "--input", str(EXAMPLES / "tiny_pool.jsonl"), "--output", str(tmp_path / "x.jsonl"),
                 "--strategy", "sweet_spot", "--k", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'sweet_spot' selects exactly one negative" in err
    assert not (tmp_path / "x.jsonl").exists()
