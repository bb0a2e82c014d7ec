"""Rewards: the built-in reward resists degenerate text; reward models load, score and train."""

from __future__ import annotations

import random
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertForSequenceClassification

from ampo.embeddings import minilm_path
from ampo.losses import soft_bt_loss
from ampo.rewards import (
    BuiltinReward,
    CallableReward,
    HFRewardModel,
    encode_pairs,
    load_reward,
    preference_labels,
    train_reward_model,
    validate_rewards,
)
from helpers import counting_pairs, tiny_bert

POSITIVE = (
    "Sure! Paris is the capital of France. It is a beautiful city with wonderful museums, "
    "and the food is amazing. I hope you enjoy your trip!"
)
NEGATIVE = (
    "Paris is the capital of France. Honestly it is a dirty, crowded and expensive city, "
    "and I think your trip will be a miserable waste of money."
)
NEUTRAL = (
    "Paris is the capital of France. It has about two million residents and sits on the "
    "river Seine in the north of the country."
)


@pytest.fixture
def one_thread():
    """Tiny models train much faster single-threaded on a shared CPU; restore afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Built-in reward


@pytest.mark.parametrize(
    "degenerate",
    [
        "great " * 30,
        "!!!!!",
        "",
        "   \n ",
        "Great",
        " ".join([POSITIVE] * 4),
        "Happy happy joy joy, love love!",
        "I love this wonderful amazing great fantastic excellent day!",
        ":) :) :) :) :)",
        " ".join(f"nice{i}" for i in range(400)),
    ],
)
def test_builtin_reward_degenerate_text_loses_to_fluent_answers(degenerate):
    reward = BuiltinReward()(["Tell me about Paris."] * 3, [degenerate, POSITIVE, NEUTRAL])
    assert reward[0] < reward[2] < reward[1]


def test_builtin_reward_prefers_positive_fluent_text_over_negative():
    scores = BuiltinReward()(["q"] * 3, [POSITIVE, NEUTRAL, NEGATIVE])
    assert scores[0] > 0.5 and scores[1] == pytest.approx(0.0) and scores[2] < -0.5


def test_builtin_reward_formula_and_terms():
    reward = BuiltinReward()
    fluent = reward.breakdown(POSITIVE)
    assert fluent["degeneracy"] == 0 and fluent["reward"] == fluent["sentiment"]
    spam = reward.breakdown("great " * 30)
    assert spam["repetition"] == 1 and spam["reward"] == -1
    assert reward.breakdown("!!!!!")["junk"] == 1
    # 3 words: (5 - 3) / (5 - 1) = 0.5 short; d = 0.5 so reward = 0.5 * sentiment - 0.5.
    three = reward.breakdown("yes it works")
    assert three["short"] == 0.5
    assert three["reward"] == pytest.approx(0.5 * three["sentiment"] - 0.5)
    # 225 distinct two-letter words with max_words=150: (225 - 150) / 150 = 0.5 long.
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = [a + b for a in letters for b in letters][:225]
    assert reward.breakdown(" ".join(words))["long"] == pytest.approx(0.5)
    assert BuiltinReward(max_words=10).breakdown(POSITIVE)["long"] > 0
    with pytest.raises(ValueError, match="min_words"):
        BuiltinReward(min_words=1)


def test_builtin_reward_is_deterministic_float64_and_checks_lengths():
    reward = BuiltinReward()
    scores = reward(["a", "b"], [POSITIVE, NEGATIVE])
    assert scores.dtype == np.float64 and scores.shape == (2,)
    np.testing.assert_array_equal(reward(["a", "b"], [POSITIVE, NEGATIVE]), scores)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        reward(["a", "b"], [POSITIVE])


# ---------------------------------------------------------------------------------------------
# Validation, callables, load_reward


def test_validate_rewards_names_reward_and_index():
    np.testing.assert_array_equal(validate_rewards("r", [1, 2.5], 2), [1.0, 2.5])
    with pytest.raises(ValueError, match="reward 'r' returned nan at index 1"):
        validate_rewards("r", [0.0, float("nan")], 2)
    with pytest.raises(ValueError, match="reward 'r' returned shape \\(3,\\) for 2"):
        validate_rewards("r", [0.0, 1.0, 2.0], 2)
    with pytest.raises(ValueError, match="non-numeric"):
        validate_rewards("r", ["high", "low"], 2)


def _length_reward(prompts, responses):
    return [float(len(r)) for r in responses]


def test_callable_reward_from_object_module_and_file(tmp_path, monkeypatch):
    scores = CallableReward(_length_reward)(["p", "p"], ["ab", "abcd"])
    np.testing.assert_array_equal(scores, [2.0, 4.0])
    module = tmp_path / "my_rewards.py"
    module.write_text(
        textwrap.dedent(
            """
            def words(prompts, responses):
                return [len(r.split()) for r in responses]

            def broken(prompts, responses):
                return [1.0, float("inf")]
            """
        )
    )
    np.testing.assert_array_equal(load_reward(f"{module}:words")(["p"], ["a b c"]), [3.0])
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    assert load_reward("my_rewards:words")(["p", "p"], ["a", "a b"]).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="reward 'my_rewards:broken' returned inf at index 1"):
        load_reward("my_rewards:broken")(["p", "p"], ["a", "b"])
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        load_reward("my_rewards:missing")
    with pytest.raises(ValueError, match="cannot import"):
        load_reward("no_such_module_xyz:fn")


def test_load_reward_dispatch_and_errors(tmp_path):
    assert isinstance(load_reward("builtin", max_words=80), BuiltinReward)
    with pytest.raises(ValueError, match="unknown reward 'nonsense'"):
        load_reward("nonsense")
    with pytest.raises(ValueError, match="no config.json"):
        load_reward(str(tmp_path))
    with pytest.raises(ValueError, match="takes no options"):
        load_reward("math:fsum", batch_size=2)


# ---------------------------------------------------------------------------------------------
# HF reward models


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())


def test_hf_reward_model_scores_pairs_in_input_order(tmp_path, minilm_tokenizer):
    folder = tiny_bert(tmp_path / "rm", minilm_tokenizer)
    prompts = ["What is 2+2?", "Say hi", "Tell me a long story about a dragon and a knight"]
    responses = ["Four.", "Hello there, nice to meet you!", "Once upon a time"]
    scores = HFRewardModel(folder, batch_size=2)(prompts, responses)
    model = BertForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        for i in range(3):
            inputs = minilm_tokenizer(prompts[i], responses[i], return_tensors="pt")
            assert scores[i] == pytest.approx(model(**inputs).logits[0, 0].item(), abs=1e-5)
    assert scores.dtype == np.float64
    one_by_one = HFRewardModel(folder, batch_size=1)(prompts, responses)
    np.testing.assert_allclose(one_by_one, scores, atol=1e-5)


def test_hf_reward_model_uses_the_chat_template(tmp_path, minilm_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
    )
    folder = tiny_bert(tmp_path / "rm", tokenizer)
    score = HFRewardModel(folder)(["Say hi"], ["Hello!"])[0]
    model = BertForSequenceClassification.from_pretrained(folder).eval()
    text = "[user] Say hi [assistant] Hello! "
    inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        assert score == pytest.approx(model(**inputs).logits[0, 0].item(), abs=1e-5)


def test_encode_pairs_cuts_the_prompt_start_and_keeps_the_response(minilm_tokenizer):
    prompt = " ".join(f"w{i}" for i in range(100)) + " final question"
    ids = encode_pairs(minilm_tokenizer, [prompt], ["short answer"], max_length=16).input_ids[0]
    tokens = minilm_tokenizer.convert_ids_to_tokens(ids)
    assert len(tokens) == 16
    assert tokens[-6:] == ["final", "question", "[SEP]", "short", "answer", "[SEP]"]
    # A response too long on its own keeps its start; the prompt keeps a quarter of the
    # 16 - 3 = 13 text tokens (13 // 4 = 3) and the response the other 10.
    ids = encode_pairs(minilm_tokenizer, [prompt], ["word " * 50], max_length=16).input_ids[0]
    tokens = minilm_tokenizer.convert_ids_to_tokens(ids)
    assert tokens[:5] == ["[CLS]", "##9", "final", "question", "[SEP]"]
    assert tokens[5:] == ["word"] * 10 + ["[SEP]"]


def test_hf_reward_model_refuses_multi_label_models(tmp_path, minilm_tokenizer):
    folder = tiny_bert(tmp_path / "rm", minilm_tokenizer, num_labels=2)
    with pytest.raises(ValueError, match="num_labels=2; expected 1"):
        HFRewardModel(folder)


# ---------------------------------------------------------------------------------------------
# Reward-model training


def test_soft_bt_loss_matches_spec_numbers():
    # MMPO's reward-model loss, worked by hand: r_w = 1.3, r_l = 0.4, p = 0.740775 -> 0.574456; hard 0.341154.
    w, lose = torch.tensor([1.3]), torch.tensor([0.4])
    soft = soft_bt_loss(w, lose, torch.tensor([0.740775])).item()
    assert soft == pytest.approx(0.574456, abs=1e-6)
    assert soft_bt_loss(w, lose, torch.tensor([1.0])).item() == pytest.approx(0.341154, abs=1e-6)


def test_preference_labels_hard_soft_and_swap():
    pairs = [
        {"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": 3.5, "score_rejected": 0.0},
        {"prompt": "p", "chosen": "c", "rejected": "d", "margin": -3.5},
    ]
    assert [x[3] for x in preference_labels(pairs)] == [1.0, 1.0]
    soft = preference_labels(pairs, soft_gamma=0.3)
    assert soft[0] == ("p", "a", "b", pytest.approx(0.740775, abs=1e-6))  # sigmoid(0.3 * 3.5)
    assert soft[1] == ("p", "d", "c", pytest.approx(0.740775, abs=1e-6))  # swapped, p <- 1 - p
    with pytest.raises(ValueError, match="^preference pairs: row 1: soft labels need"):
        preference_labels([{"prompt": "p", "chosen": "a", "rejected": "b"}], soft_gamma=1.0)
    with pytest.raises(ValueError, match="^preference pairs: row 1: field 'rejected'"):
        preference_labels([{"prompt": "p", "chosen": "a"}])


def _pairwise_accuracy(reward, pairs):
    prompts = [p["prompt"] for p in pairs]
    chosen = reward(prompts, [p["chosen"] for p in pairs])
    return float(np.mean(chosen > reward(prompts, [p["rejected"] for p in pairs])))


@pytest.mark.parametrize("soft_gamma", [None, 1.0])
def test_train_reward_model_learns_held_out_ranking(
    tmp_path, minilm_tokenizer, one_thread, soft_gamma
):
    rng = random.Random(0)
    train, held_out = counting_pairs(rng, 240), counting_pairs(rng, 100)
    backbone = tiny_bert(tmp_path / "backbone", minilm_tokenizer)
    out = train_reward_model(
        train, tmp_path / "rm", backbone=backbone, soft_gamma=soft_gamma,
        epochs=3, lr=1e-3, max_length=32,
    )
    assert (out / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rm.tmp")]
    assert _pairwise_accuracy(HFRewardModel(out), held_out) > 0.8
    with pytest.raises(ValueError, match="already exists and is not empty"):
        train_reward_model(train[:2], out, backbone=backbone)


# ---------------------------------------------------------------------------------------------
# Slow: calibration of soft vs hard labels on the real MiniLM backbone

TOPICS = [
    "resetting a password", "packing for a beach trip", "baking sourdough bread",
    "learning to swim", "writing a cover letter", "planting tomatoes", "fixing a flat bike tyre",
    "saving for a holiday", "training a puppy", "preparing for an exam", "choosing a laptop",
    "making cold brew coffee",
]
OPENERS = [("Happy to help!", 1.0), ("Great question, thanks for asking.", 1.5), ("Sure.", 0.0),
           ("", 0.0), ("Ugh, fine.", -1.0), ("Not this again.", -1.5)]
BODIES = [
    ("Here is a clear step-by-step guide to {t}, with the common mistakes to avoid.", 2.0),
    ("The main thing about {t} is to start simple and check each step.", 1.0),
    ("You can find details about {t} in any basic manual.", 0.0),
    ("I am not really sure how {t} works.", -1.0),
    ("{T} is pointless and I will not explain it.", -2.5),
]
CLOSERS = [("Let me know if anything is unclear, I am glad to help!", 1.0), ("Good luck.", 0.5),
           ("", 0.0), ("Figure out the rest yourself.", -1.5)]
TRUE_GAMMA = 1.0  # annotators prefer a over b with probability sigmoid(TRUE_GAMMA * (q_a - q_b))


def _graded_answers(topic):
    """All 120 opener/body/closer answers about `topic` with their quality (sum of parts)."""
    return [
        (" ".join(x for x in (o, b.format(t=topic, T=topic.capitalize()), c) if x), qo + qb + qc)
        for o, qo in OPENERS for b, qb in BODIES for c, qc in CLOSERS
    ]


def _graded_pairs(rng, topics, n):
    """Scored pairs; the chosen answer is always the higher-quality one (as in rated datasets)."""
    pairs = []
    while len(pairs) < n:
        topic = rng.choice(topics)
        (a, qa), (b, qb) = sorted(rng.sample(_graded_answers(topic), 2), key=lambda x: -x[1])
        if qa > qb:
            prompt = f"Can you give me advice on {topic}?"
            pairs.append({"prompt": prompt, "chosen": a, "rejected": b,
                          "score_chosen": qa, "score_rejected": qb})
    return pairs


def _calibration(reward, pairs):
    """Brier score and log loss of sigmoid(r_w - r_l) against the true preference probability."""
    prompts = [p["prompt"] for p in pairs]
    chosen = reward(prompts, [p["chosen"] for p in pairs])
    diff = chosen - reward(prompts, [p["rejected"] for p in pairs])
    margin = np.array([p["score_chosen"] - p["score_rejected"] for p in pairs])
    true = 1 / (1 + np.exp(-TRUE_GAMMA * margin))
    pred = np.clip(1 / (1 + np.exp(-diff)), 1e-7, 1 - 1e-7)
    return {
        "accuracy": float(np.mean(diff > 0)),
        "brier": float(np.mean((pred - true) ** 2)),
        "log_loss": float(np.mean(-true * np.log(pred) - (1 - true) * np.log(1 - pred))),
        "mean_p": float(pred.mean()),
        "true_p": float(true.mean()),
    }


@pytest.mark.slow
def test_soft_labels_calibrate_small_margins_better_on_minilm(tmp_path):
    rng = random.Random(0)
    train = _graded_pairs(rng, TOPICS[:9], 400)
    held_out = _graded_pairs(rng, TOPICS[9:], 400)
    small = [p for p in held_out if p["score_chosen"] - p["score_rejected"] <= 1]
    results = {}
    for name, gamma in [("hard", None), ("soft", TRUE_GAMMA)]:
        out = train_reward_model(train, tmp_path / name, soft_gamma=gamma, max_length=64)
        reward = HFRewardModel(out)
        results[name] = {
            "all": _calibration(reward, held_out), "small": _calibration(reward, small)
        }
    print(f"\nheld out: {len(held_out)} pairs, {len(small)} with margin <= 1:", results)
    hard, soft = results["hard"]["small"], results["soft"]["small"]
    assert hard["accuracy"] > 0.6 and soft["accuracy"] > 0.6
    assert soft["brier"] < hard["brier"] and soft["log_loss"] < hard["log_loss"]


def test_preference_labels_take_huge_margins_without_overflow():
    pairs = [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1e300},
             {"prompt": [{"role": "user", "content": "q"}], "chosen": "c", "rejected": "d", "margin": -1e300}]
    assert preference_labels(pairs, soft_gamma=2.0) == [("p", "a", "b", 1.0), ("q", "d", "c", 1.0)]
