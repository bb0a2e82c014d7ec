"""The errors every layer raises about user input, and `short`, which keeps their messages short.
A leaf module: data readers, benchmarks and the config all import it, it imports nothing of ampo."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A bad configuration value; the message names the option."""


def short(value: Any, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters: errors never echo a huge value back."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
