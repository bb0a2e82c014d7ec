"""Content hashes of JSON-able parts: the stage keys of caching and resume (`ampo.stage_keys`), and
derived seeds. A leaf module."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def config_key(*parts: Any) -> str:
    """A short content hash of JSON-able parts: stage keys for caching and resume."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def seed_from(*parts: Any) -> int:
    """A deterministic 31-bit integer seed derived from JSON-able parts."""
    return int(config_key("seed", *parts), 16) % (2**31)
