"""GPM reward models: `train_reward_model(head="gpm")` / `ampo train-rm --head gpm` on the same
pair files as the Bradley-Terry head, the saved folder detected by `score.reward` and scored as
preference matrices (docs/preferences.md)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from transformers import AutoTokenizer

from ampo.cli import main
from ampo.embeddings import minilm_path
from ampo.rewards.gpm import GATE_FILE, GPM_FILE, GPMHead, GPMScorer
from ampo.preferences import gpm_scores
from ampo.data import PoolRecord
from ampo.rewards import is_pairwise, load_reward, reward_kind, score_records, train_reward_model
from helpers import counting_pairs, tiny_bert


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("backbone"), AutoTokenizer.from_pretrained(minilm_path()))


def held_out_accuracy(scorer, pairs):
    """Share of pairs where the GPM scores chosen over rejected: S[0, 1] > 0."""
    matrices = scorer.matrices([p["prompt"] for p in pairs], [[p["chosen"], p["rejected"]] for p in pairs])
    return float(np.mean([S[0, 1] > 0 for S in matrices]))


@pytest.mark.parametrize("soft_gamma", [None, 1.0])
def test_gpm_head_learns_a_held_out_ranking_and_loads_as_a_pairwise_scorer(tmp_path, backbone, soft_gamma):
    rng = random.Random(0)
    train, held_out = counting_pairs(rng, 240), counting_pairs(rng, 100)
    out = train_reward_model(train, tmp_path / "gpm", backbone=backbone, soft_gamma=soft_gamma, epochs=3, lr=1e-3,
                             max_length=32, head="gpm", gpm=GPMHead(value_head_dim=4, tau=0.1))
    assert json.loads((out / GPM_FILE).read_text()) == {"head": "gpm", "value_head_dim": 4, "tau": 0.1,
                                                        "normalize": True, "gate": "none"}
    assert reward_kind(str(out)) == "gpm"
    scorer = load_reward(str(out))
    assert isinstance(scorer, GPMScorer) and is_pairwise(scorer)
    assert held_out_accuracy(scorer, held_out) > 0.8


def test_gpm_scorer_matrix_is_gpm_scores_of_its_embeddings(tmp_path, backbone):
    rng = random.Random(1)
    out = train_reward_model(counting_pairs(rng, 16), tmp_path / "gpm", backbone=backbone, epochs=1,
                             max_length=32, head="gpm", gpm=GPMHead(value_head_dim=6, tau=0.5))
    scorer = GPMScorer(out, batch_size=2)
    responses = ["great kind answer", "the reply was very", "lovely", "it felt quite clear"]
    (S,) = scorer.matrices(["How was it?"], [responses])
    V = scorer.embeddings(["How was it?"] * 4, responses)
    assert V.shape == (4, 6)
    np.testing.assert_allclose(S, gpm_scores(V, tau=0.5), atol=1e-12)
    np.testing.assert_array_equal(S, -S.T)
    pool = [PoolRecord(prompt="How was it?", responses=responses, id="a")]
    (row,) = score_records(scorer, pool, "mean_logit")
    np.testing.assert_allclose(row["pref_logits"], S)


def test_prompt_gate_is_trained_saved_and_applied(tmp_path, backbone):
    rng = random.Random(2)
    out = train_reward_model(counting_pairs(rng, 16), tmp_path / "gated", backbone=backbone, epochs=1,
                             max_length=32, head="gpm", gpm=GPMHead(value_head_dim=4, gate="softmax"))
    assert (out / GATE_FILE).is_file()
    scorer = GPMScorer(out)
    prompts = ["How was the reply?", "Rate it"]
    gates = scorer.gates(prompts)
    assert gates.shape == (2, 2) and np.allclose(gates.sum(-1), 1)  # softmax over k = 2 blocks
    responses = ["great kind", "the answer"]
    (S,) = scorer.matrices(prompts[:1], [responses])
    V = scorer.embeddings(prompts[:1] * 2, responses)
    np.testing.assert_allclose(S, gpm_scores(V, gates[0], tau=0.1), atol=1e-12)
    (out / GATE_FILE).unlink()
    with pytest.raises(ValueError, match=f"gate 'softmax' but no {GATE_FILE}"):
        GPMScorer(out)


def test_gpm_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="value_head_dim must be an even integer >= 2"):
        GPMHead(value_head_dim=3)
    with pytest.raises(ValueError, match="gate must be one of none, softmax, k_softmax_sqrtH"):
        GPMHead(gate="sigmoid")
    with pytest.raises(ValueError, match="GPM options need head='gpm'"):
        train_reward_model([{"prompt": "p", "chosen": "a", "rejected": "b"}], tmp_path / "x", gpm=GPMHead())


def test_train_rm_cli_trains_a_gpm_head(tmp_path, backbone, monkeypatch, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in counting_pairs(random.Random(3), 8)))
    monkeypatch.setattr("ampo.embeddings.minilm_path", lambda: backbone)
    out = tmp_path / "rm"
    assert main(["-q", "train-rm", "--input", str(pairs), "--output", str(out), "--head", "gpm",
                 "--value-head-dim", "4", "--soft-gamma", "1", "--epochs", "1"]) == 0
    assert "reward model (gpm)" in capsys.readouterr().out
    assert GPMHead.load(out) == GPMHead(value_head_dim=4)
    assert main(["train-rm", "--input", str(pairs), "--output", str(tmp_path / "bt"), "--value-head-dim", "4"]) == 2
    assert "--value-head-dim, --tau and --gate are options of --head gpm" in capsys.readouterr().err
    assert main(["train-rm", "--input", str(pairs), "--output", str(tmp_path / "odd"), "--head", "gpm",
                 "--value-head-dim", "3"]) == 2
    assert "value_head_dim must be an even integer" in capsys.readouterr().err


def test_score_cli_writes_pref_logits_for_a_gpm_folder(tmp_path, backbone, capsys):
    out = train_reward_model(counting_pairs(random.Random(4), 8), tmp_path / "gpm", backbone=backbone, epochs=1,
                             max_length=32, head="gpm")
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"prompt": "How was it?", "responses": ["great", "the", "kind answer"]}) + "\n")
    assert main(["-q", "score", "--input", str(pool), "--output", str(tmp_path / "scored.jsonl"),
                 "--reward", str(out)]) == 0
    row = json.loads((tmp_path / "scored.jsonl").read_text())
    S = np.array(row["pref_logits"])
    assert S.shape == (3, 3) and np.allclose(S, -S.T)
    np.testing.assert_allclose(row["rewards"], (1 / (1 + np.exp(-S))).sum(1) / 2 - 0.25)  # win_rate (auto)
