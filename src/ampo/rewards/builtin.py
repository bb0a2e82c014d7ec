"""The built-in demo reward: VADER sentiment, pulled to -1 by five degeneracy terms."""

from __future__ import annotations

import re

import numpy as np

from .base import _check_pairs, validate_rewards

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


