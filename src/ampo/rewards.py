"""Scoring responses: the built-in demo reward, local reward models, Python callables, and
training a reward model on preference pairs (hard or margin-matching soft labels, spec 2).

Every reward is a `RewardFn`: `reward(prompts, responses) -> np.ndarray[float64]`, one finite
score per (prompt, response) pair, validated by `validate_rewards`. A reward that needs
prompt-side data (each prompt's `meta` object from the prompt file, e.g. the `ifeval` reward's
constraints) says so with `needs_meta = True` and is called as `reward(prompts, responses,
metas=...)`; `score_texts` makes that call for every caller.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .config import AGGREGATES
from .losses import soft_bt_loss

# A reward model trained from a backbone gets a new head: the only weights it may lack
NEW_HEADS = ("classifier.", "score.")
RM_HEADS = ("bt", "gpm")  # Bradley-Terry (one logit) | General Preference Model (2k outputs)


class RewardFn(Protocol):
    """Scores a batch of (prompt, response) pairs: float64 array, one finite value per pair."""

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray: ...


def score_texts(reward_fn: RewardFn, prompts: list[str], responses: list[str],
                metas: Sequence[Mapping[str, Any] | None] | None = None) -> np.ndarray:
    """Call a reward, with each pair's prompt `meta` when the reward declares `needs_meta`."""
    if not getattr(reward_fn, "needs_meta", False):
        return reward_fn(prompts, responses)
    name = getattr(reward_fn, "name", type(reward_fn).__name__)
    missing = [i for i, m in enumerate(metas or [None] * len(prompts)) if m is None]
    if missing:
        raise ValueError(f"reward {name!r} needs each prompt's 'meta' from the prompt file; prompt "
                         f"{prompts[missing[0]][:60]!r} has none")
    return reward_fn(prompts, responses, metas=list(metas))


def validate_rewards(name: str, scores: Any, n: int) -> np.ndarray:
    """`scores` as a float64 vector of length `n`, or ValueError naming the reward and the index."""
    try:
        values = np.asarray(scores, dtype=np.float64)
    except OverflowError:
        raise ValueError(f"reward {name!r} returned a number too large for a float") from None
    except (TypeError, ValueError) as error:
        raise ValueError(f"reward {name!r} returned non-numeric scores: {error}") from None
    if values.ndim != 1 or len(values) != n:
        raise ValueError(f"reward {name!r} returned shape {values.shape} for {n} responses")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"reward {name!r} returned {values[bad[0]]} at index {bad[0]}")
    return values


def _check_pairs(name: str, prompts: Sequence[str], responses: Sequence[str]) -> None:
    """Refuse batches whose prompt and response lists differ in length."""
    if len(prompts) != len(responses):
        raise ValueError(f"reward {name!r}: {len(prompts)} prompts but {len(responses)} responses")


# ---------------------------------------------------------------------------------------------
# The built-in demo reward

MIN_WORDS = 5  # fewer words than this counts as too short (1 word = fully degenerate)
MAX_WORDS = 150  # soft length limit; twice this many words is fully degenerate
REPEAT_TOLERANCE, REPEAT_FULL = 0.1, 0.5  # share of repeated word bigrams
JUNK_TOLERANCE, JUNK_FULL = 0.2, 0.6  # share of non-letter characters (spaces excluded)
DENSITY_TOLERANCE, DENSITY_FULL = 0.6, 1.0  # VADER share of sentiment-bearing words (pos + neg)

_WORD = re.compile(r"[a-z0-9']+")


def _ramp(x: float, start: float, full: float) -> float:
    """0 up to `start`, rising linearly to 1 at `full`, then 1."""
    return min(1.0, max(0.0, (x - start) / (full - start)))


def degeneracy_terms(
    text: str, density: float, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS
) -> dict[str, float]:
    """The five degeneracy terms of the built-in reward, each in [0, 1] (0 = fluent text).

    `density` is VADER's `pos + neg` share of the text (how much of it is sentiment words).
    """
    words = _WORD.findall(text.lower())
    bigrams = list(zip(words, words[1:]))
    chars = [c for c in text if not c.isspace()]
    repeated = 1 - len(set(bigrams)) / len(bigrams) if bigrams else 0.0
    non_letters = sum(not c.isalpha() for c in chars) / len(chars) if chars else 0.0
    return {
        "repetition": _ramp(repeated, REPEAT_TOLERANCE, REPEAT_FULL),
        "junk": _ramp(non_letters, JUNK_TOLERANCE, JUNK_FULL),
        "short": min(1.0, max(0.0, (min_words - len(words)) / (min_words - 1))),
        "long": _ramp(len(words), max_words, 2 * max_words),
        "density": _ramp(density, DENSITY_TOLERANCE, DENSITY_FULL),
    }


class BuiltinReward:
    """The demo reward: warm, positive, fluent text; degenerate text cannot win it.

    `reward = (1 - d) * sentiment - d`, where `sentiment` is VADER's compound score of the
    response in [-1, 1] and `d = min(1, sum of degeneracy_terms)` in [0, 1]. Fluent text (d = 0)
    scores its sentiment; fully degenerate text (d = 1: empty, one word, word spam, punctuation,
    copy-pasted repeats, runaway length) scores -1, the worst possible value. The prompt is
    ignored. Offline, deterministic, about 0.3 ms per response.
    """

    name = "builtin"

    def __init__(self, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        if not 1 < min_words < max_words:
            raise ValueError(
                f"builtin reward needs 1 < min_words < max_words, got {min_words}, {max_words}"
            )
        self.min_words = min_words
        self.max_words = max_words
        self._vader = SentimentIntensityAnalyzer()

    def breakdown(self, response: str) -> dict[str, float]:
        """Sentiment, each degeneracy term, degeneracy `d` and the final reward of one response."""
        polarity = self._vader.polarity_scores(response)
        terms = degeneracy_terms(
            response, polarity["pos"] + polarity["neg"], self.min_words, self.max_words
        )
        d = min(1.0, sum(terms.values()))
        sentiment = polarity["compound"]
        return {"sentiment": sentiment, **terms, "degeneracy": d, "reward": (1 - d) * sentiment - d}

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """Score each response (prompts only set the batch size)."""
        _check_pairs(self.name, prompts, responses)
        scores = [self.breakdown(response)["reward"] for response in responses]
        return validate_rewards(self.name, scores, len(responses))


# ---------------------------------------------------------------------------------------------
# Sequence-classification reward models


def _chat_texts(tokenizer: Any, prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
    """Each pair as a user/assistant conversation rendered by the tokenizer's chat template."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False
        )
        for p, r in zip(prompts, responses)
    ]


def _cut_response(tokenizer: Any, response: str, prompt_tokens: int, budget: int) -> str:
    """Cut a response's end only if keeping it whole would leave the prompt < budget // 4 tokens."""
    keep = budget - min(prompt_tokens, budget // 4)
    encoded = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    if len(encoded.input_ids) <= keep:
        return response
    return response[: encoded.offset_mapping[keep - 1][1]]


def encode_pairs(
    tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], max_length: int
) -> Any:
    """Padded tensors for a reward model: chat template if the tokenizer has one, else text pairs.

    Over-long inputs lose the start of the prompt (left truncation); the response is cut at its
    end only when keeping it whole would leave the prompt under a quarter of the text budget
    (`max_length` minus the special or template tokens).
    The tokenizer's `truncation_side` is set to "left".
    """
    tokenizer.truncation_side = "left"
    if tokenizer.chat_template:
        empty_chat = _chat_texts(tokenizer, [""], [""])[0]
        overhead = len(tokenizer(empty_chat, add_special_tokens=False).input_ids)
    else:
        overhead = tokenizer.num_special_tokens_to_add(pair=True)
    budget = max_length - overhead
    if budget < 4:
        raise ValueError(f"max_length={max_length} leaves no room after {overhead} special tokens")
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False).input_ids
    prompt_tokens = [len(ids) for ids in prompt_ids]
    responses = [_cut_response(tokenizer, r, n, budget) for r, n in zip(responses, prompt_tokens)]
    common = {"max_length": max_length, "padding": True, "return_tensors": "pt"}
    if tokenizer.chat_template:
        texts = _chat_texts(tokenizer, prompts, responses)
        return tokenizer(texts, truncation=True, add_special_tokens=False, **common)
    return tokenizer(list(prompts), responses, truncation="only_first", **common)


class HFRewardModel:
    """A local sequence-classification reward model (one output logit; score = logits[:, 0]).

    Pairs are sorted by length and scored in batches without gradients; see `encode_pairs` for
    how a pair becomes model input. Only safetensors weights are loaded.
    """

    def __init__(
        self,
        path: str | Path,
        batch_size: int = 16,
        max_length: int = 512,
        device: str = "cpu",
        trust_remote_code: bool = False,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from .models import load_weights

        self.path = Path(path)
        self.name = str(path)
        if not (self.path / "config.json").is_file():
            raise ValueError(f"reward model folder {self.path} has no config.json")
        self.batch_size = batch_size
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.path, trust_remote_code=trust_remote_code
        )
        self.model = load_weights(AutoModelForSequenceClassification, self.path, "reward model",
                                  trust_remote_code=trust_remote_code)
        num_labels = self.model.config.num_labels
        if num_labels != 1:
            raise ValueError(f"reward model {self.path} has num_labels={num_labels}; expected 1")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(device).eval()

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """One score per pair, in input order."""
        _check_pairs(self.name, prompts, responses)
        scores = pair_logits(self.model, self.tokenizer, prompts, responses, self.batch_size, self.max_length)
        return validate_rewards(self.name, scores[:, 0], len(prompts))


@torch.no_grad()
def pair_logits(model: Any, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], batch_size: int,
                max_length: int) -> np.ndarray:
    """A sequence classifier's logits `[n, num_labels]` (float64) for (prompt, response) pairs, in
    input order; pairs are sorted by length and run in batches without gradients."""
    order = sorted(range(len(prompts)), key=lambda i: -(len(prompts[i]) + len(responses[i])))
    out = np.zeros((len(prompts), model.config.num_labels), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        batch = encode_pairs(tokenizer, [prompts[i] for i in idx], [responses[i] for i in idx], max_length)
        out[idx] = model(**batch.to(model.device)).logits.float().cpu().numpy()
    return out


# ---------------------------------------------------------------------------------------------
# Python callables


def _import_callable(spec: str) -> Callable[..., Any]:
    """Resolve "module:function" or "path/to/file.py:function" (dotted attributes allowed)."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"reward {spec!r} is not of the form 'module:function'")
    if module_name.endswith(".py"):
        file_spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
        if file_spec is None or not Path(module_name).is_file():
            raise ValueError(f"reward {spec!r}: file {module_name} not found")
        module = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ValueError(f"reward {spec!r}: cannot import {module_name!r}: {error}") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"reward {spec!r}: {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"reward {spec!r} is not callable")
    return target


class CallableReward:
    """A Python callable `(prompts, responses) -> sequence of floats`, given itself or as
    "module:function" / "path/to/file.py:function"; its output is validated."""

    def __init__(self, target: str | Callable[[list[str], list[str]], Sequence[float]]):
        if isinstance(target, str):
            self.name, self.fn = target, _import_callable(target)
        else:
            self.name, self.fn = getattr(target, "__qualname__", repr(target)), target

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """Call the function and check its scores."""
        _check_pairs(self.name, prompts, responses)
        return validate_rewards(self.name, self.fn(list(prompts), list(responses)), len(prompts))


# ---------------------------------------------------------------------------------------------
# Pairwise scorers: one preference-logit matrix per prompt instead of one reward per response


class PairwiseScorer(Protocol):
    """Scores each prompt's responses against each other: `matrices(prompts, pools)` returns, per
    prompt, `S [N, N]` with `S_ij = logit P(response i beats response j)` (`ampo.preferences`)."""

    pairwise: bool  # True: callers branch on `is_pairwise`, never on the class

    def matrices(self, prompts: list[str], pools: list[list[str]]) -> list[np.ndarray]: ...


def is_pairwise(scorer: Any) -> bool:
    """Whether a scorer returns preference matrices (`PairwiseScorer`) rather than rewards."""
    return bool(getattr(scorer, "pairwise", False))


def validate_matrix(name: str, S: Any, n: int) -> np.ndarray:
    """A judge's output as a valid `[n, n]` preference matrix (float64, finite, skew-symmetric:
    `(S - S^T)/2`, which averages both presentation orders), or ValueError naming the scorer."""
    from .preferences import check_logits

    try:
        values = np.asarray(S, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as error:
        raise ValueError(f"pairwise scorer {name!r} returned a non-numeric matrix: {error}") from None
    if values.shape != (n, n):
        raise ValueError(f"pairwise scorer {name!r} returned shape {values.shape} for {n} responses "
                         f"(expected ({n}, {n}))")
    bad = np.argwhere(~np.isfinite(values))
    if bad.size:
        i, j = bad[0]
        raise ValueError(f"pairwise scorer {name!r} returned {values[i, j]} at [{i}, {j}]")
    return check_logits(values)


class CallablePairwise:
    """A pairwise judge `fn(prompt, responses) -> [N, N]` preference logits for one prompt, given
    itself or as "module:function" / "path/to/file.py:function" (spec "pairwise:module:function");
    each matrix is validated and made skew-symmetric."""

    pairwise = True

    def __init__(self, target: str | Callable[[str, list[str]], Any]):
        if isinstance(target, str):
            self.name, self.fn = f"pairwise:{target}", _import_callable(target)
        else:
            self.name, self.fn = getattr(target, "__qualname__", repr(target)), target

    def matrices(self, prompts: list[str], pools: list[list[str]]) -> list[np.ndarray]:
        _check_pairs(self.name, prompts, pools)
        return [validate_matrix(self.name, self.fn(p, list(rs)), len(rs)) for p, rs in zip(prompts, pools)]


def _pool_texts(pool: Sequence[Any]) -> tuple[list[str], list[list[str]], list[Any]]:
    """Prompt texts, response lists and metas of pool records."""
    from .data import prompt_text

    return [prompt_text(rec.prompt) for rec in pool], [list(rec.responses) for rec in pool], [rec.meta for rec in pool]


def score_records(scorer: Any, pool: Sequence[Any], aggregate: str = "reward") -> list[dict[str, Any]]:
    """Score pool records: per record `{"rewards": [N]}`, plus `"pref_logits": [N][N]` whenever a
    preference matrix exists.

    A pairwise scorer gives the matrix; a scalar reward gives it as `S_ij = r_i - r_j` when
    `aggregate` is not "reward". `rewards` is then the matrix's `aggregate`
    (`ampo.preferences.aggregate`), so every selector, loss and evaluation reads one scalar per
    response; with "reward" (scalar scorers only) it is the reward itself, as before.
    """
    from .preferences import aggregate as aggregate_matrix, scalar_to_logits

    prompts, pools, metas = _pool_texts(pool)
    if is_pairwise(scorer):
        if aggregate == "reward":
            raise ValueError(f"a pairwise scorer has no scalar reward: choose an aggregate "
                             f"({', '.join(AGGREGATES[1:])})")
        matrices = scorer.matrices(prompts, pools)
    else:
        flat = score_texts(scorer, [p for p, rs in zip(prompts, pools) for _ in rs], [r for rs in pools for r in rs],
                           [m for m, rs in zip(metas, pools) for _ in rs])
        flat = np.asarray(flat, dtype=np.float64)
        rewards = np.split(flat, np.cumsum([len(rs) for rs in pools])[:-1])
        if aggregate == "reward":
            return [{"rewards": r.tolist()} for r in rewards]
        matrices = [scalar_to_logits(r) for r in rewards]
    for rec, S in zip(pool, matrices):
        if len(S) < 2:
            raise ValueError(f"prompt {rec.id!r}: a preference aggregate needs >= 2 responses, got {len(S)}")
    return [{"rewards": aggregate_matrix(S, aggregate).tolist(), "pref_logits": S.tolist()} for S in matrices]


PAIRWISE_KINDS = ("pairwise", "gpm")


def resolve_aggregate(aggregate: str, kind: str) -> str:
    """`score.aggregate` with "auto" resolved: "win_rate" for a pairwise scorer (spec-2 §1's
    default), "reward" (today's behaviour) for a scalar one."""
    if aggregate != "auto":
        return aggregate
    return "win_rate" if kind in PAIRWISE_KINDS else "reward"


def reward_kind(spec: str) -> str:
    """What a reward spec names: "builtin", "ifeval" (`ifeval[:loose=W,degeneracy=W]`, its options
    checked here), "gpm" (a GPM reward-model folder: it holds `gpm.json`), "folder" (a one-logit
    reward model), "pairwise" ("pairwise:module:function", a judge returning one prompt's
    preference matrix) or "callable" ("module:function" / "file.py:function"). Cheap, so configs
    are checked before anything loads."""
    from .gpm import GPM_FILE

    if spec == "builtin":
        return "builtin"
    if spec.split(":", 1)[0] == "ifeval":
        from .ifeval.reward import parse_spec

        parse_spec(spec)
        return "ifeval"
    if Path(spec).is_dir():
        return "gpm" if (Path(spec) / GPM_FILE).is_file() else "folder"
    if spec.startswith("pairwise:"):
        if ":" not in spec[len("pairwise:"):]:
            raise ValueError(f"reward {spec!r} is not of the form 'pairwise:module:function'")
        return "pairwise"
    if ":" in spec:
        return "callable"
    raise ValueError(
        f"unknown reward {spec!r}: expected 'builtin', 'ifeval', 'module:function', "
        "'pairwise:module:function' or a local reward-model folder"
    )


def load_reward(spec: str, **kwargs: Any) -> RewardFn | PairwiseScorer:
    """A reward from a spec (see `reward_kind`; `ifeval[:...]` is `ampo.ifeval.reward.IFEvalReward`,
    a GPM folder is `ampo.gpm.GPMScorer`). `kwargs` go to `BuiltinReward`, `HFRewardModel` or
    `GPMScorer`."""
    kind = reward_kind(spec)
    if kind == "builtin":
        return BuiltinReward(**kwargs)
    if kind == "folder":
        return HFRewardModel(spec, **kwargs)
    if kind == "gpm":
        from .gpm import GPMScorer

        return GPMScorer(spec, **kwargs)
    if kwargs:
        raise ValueError(f"reward {spec!r} is a {kind} and takes no options {sorted(kwargs)}")
    if kind == "ifeval":
        from .ifeval.reward import IFEvalReward

        return IFEvalReward.from_spec(spec)
    if kind == "pairwise":
        return CallablePairwise(spec[len("pairwise:"):])
    return CallableReward(spec)


# ---------------------------------------------------------------------------------------------
# Reward-model training


def preference_labels(
    pairs: Sequence[Mapping[str, Any]],
    soft_gamma: float | None = None,
    source: str | Path = "preference pairs",
    rows: Sequence[int] | None = None,
) -> list[tuple[str, str, str, float]]:
    """`(prompt, winner, loser, p)` per pair, where p is the probability that the winner wins.

    Without `soft_gamma`, p = 1 (hard labels). With it, p = sigmoid(soft_gamma * margin), the
    margin being `score_chosen - score_rejected` or `margin`; if p < 0.5 the two responses are
    swapped and p <- 1 - p (MMPO, spec 2). A prompt may be a chat message list (its last user
    message is used). Errors name `source` and the pair's 1-based row (`rows[i]` when given).
    """
    from .data import PoolError, _check_number, _check_prompt, prompt_text

    labelled = []
    for i, pair in enumerate(pairs):
        row = rows[i] if rows is not None else i + 1
        prompt = prompt_text(_check_prompt(source, row, pair.get("prompt")))
        for key in ("chosen", "rejected"):
            if not isinstance(pair.get(key), str):
                raise PoolError(source, row, key, "must be a string")
        winner, loser, p = pair["chosen"], pair["rejected"], 1.0
        if soft_gamma is not None:
            if "score_chosen" in pair and "score_rejected" in pair:
                margin = (_check_number(source, row, pair["score_chosen"], "score_chosen")
                          - _check_number(source, row, pair["score_rejected"], "score_rejected"))
            elif "margin" in pair:
                margin = _check_number(source, row, pair["margin"], "margin")
            else:
                raise PoolError(source, row, None, "soft labels need 'score_chosen' and 'score_rejected', "
                                "or 'margin'")
            p = _sigmoid(soft_gamma * margin)
            if p < 0.5:
                winner, loser, p = loser, winner, 1 - p
        labelled.append((prompt, winner, loser, p))
    return labelled


def _sigmoid(x: float) -> float:
    """1 / (1 + e^-x) without overflow for any finite x (a huge margin gives 0 or 1)."""
    if x >= 0:
        return 1 / (1 + math.exp(-min(x, 700.0)))
    z = math.exp(max(x, -700.0))
    return z / (1 + z)


def _fresh_dir(out_dir: Path) -> None:
    """Refuse to overwrite a non-empty output folder."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"output folder {out_dir} already exists and is not empty")


def train_reward_model(
    pairs: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    backbone: str | Path | None = None,
    soft_gamma: float | None = None,
    epochs: int = 2,
    lr: float = 1e-4,
    batch_size: int = 16,
    max_length: int = 128,
    seed: int = 0,
    device: str = "cpu",
    head: str = "bt",
    gpm: Any = None,
) -> Path:
    """Train a reward model on preference pairs and save it to `out_dir`.

    `head="bt"`: a one-logit model, loss (soft) Bradley-Terry on `r(prompt, winner) -
    r(prompt, loser)`; `HFRewardModel(out_dir)` loads it. `head="gpm"`: a General Preference
    Model with the options `gpm` (an `ampo.gpm.GPMHead`; default value_head_dim 2, tau 0.1,
    normalised, no gate): `2k` outputs are the preference embedding `v`, loss
    `gpm_loss(v_winner, v_loser, p)`; `ampo.gpm.GPMScorer(out_dir)` loads it. Both take the labels
    of `preference_labels` (hard, or MMPO soft labels with `soft_gamma`). The backbone (default:
    the bundled all-MiniLM-L6-v2 BERT) is loaded as `AutoModelForSequenceClassification` and
    trained with AdamW, linear decay after 10% warmup, gradient clipping at 1. Everything is
    written to a temporary folder and renamed into `out_dir`.
    """
    from tqdm.auto import tqdm
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.optimization import get_linear_schedule_with_warmup

    from ampo.data import atomic_dir
    from ampo.embeddings import minilm_path
    from ampo.models import load_weights

    from ampo.gpm import GPMHead, PromptGate, save_gate
    from ampo.preferences import gpm_loss

    out_dir = Path(out_dir)
    _fresh_dir(out_dir)
    if head not in RM_HEADS:
        raise ValueError(f"reward-model head must be one of {', '.join(RM_HEADS)}, got {head!r}")
    if gpm is not None and head != "gpm":
        raise ValueError("GPM options need head='gpm'")
    gpm = (gpm or GPMHead()) if head == "gpm" else None
    if soft_gamma is not None and not (math.isfinite(soft_gamma) and soft_gamma > 0):
        raise ValueError(f"soft_gamma must be a finite number > 0, got {soft_gamma}")
    if epochs < 1 or batch_size < 1 or max_length < 1 or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"epochs, batch_size and max_length must be >= 1 and lr a finite number > 0, got "
                         f"{epochs}, {batch_size}, {max_length}, {lr}")
    examples = preference_labels(pairs, soft_gamma)
    if not examples:
        raise ValueError("train_reward_model needs at least one preference pair")
    backbone = Path(backbone) if backbone is not None else minilm_path()

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    model = load_weights(AutoModelForSequenceClassification, backbone, "reward-model backbone",
                         new_head=NEW_HEADS, num_labels=gpm.value_head_dim if gpm else 1,
                         ignore_mismatched_sizes=True)  # a backbone's own head of another size is replaced
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device).train()
    gate = None
    if gpm and gpm.gate != "none":
        gate = PromptGate(model.config.hidden_size, gpm.k, gpm.gate).to(device).train()

    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total = epochs * steps_per_epoch
    params = list(model.parameters()) + (list(gate.parameters()) if gate else [])
    optimizer = torch.optim.AdamW(params, lr=lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * total), total)
    generator = torch.Generator().manual_seed(seed)
    progress = tqdm(total=total, desc="reward model", disable=None)
    for _ in range(epochs):
        for batch_idx in torch.randperm(len(examples), generator=generator).split(batch_size):
            prompts, winners, losers, p = zip(*(examples[i] for i in batch_idx.tolist()))
            inputs = encode_pairs(tokenizer, prompts * 2, winners + losers, max_length).to(device)
            out = model(**inputs).logits
            target = torch.tensor(p, dtype=out.dtype, device=device)
            if gpm is None:
                loss = soft_bt_loss(out[: len(p), 0], out[len(p):, 0], target).mean()
            else:
                gates = gate(model, tokenizer, prompts, max_length) if gate else None
                loss = gpm_loss(out[: len(p)], out[len(p):], target, gates, gpm.tau, gpm.normalize).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            progress.update()
            progress.set_postfix(loss=f"{loss.item():.4f}")
    progress.close()

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if gpm is not None:
            gpm.save(Path(tmp))
            if gate is not None:
                save_gate(gate, Path(tmp))
        _fresh_dir(out_dir)
    return out_dir
