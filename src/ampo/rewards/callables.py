"""Python callables as scorers: a reward `(prompts, responses) -> scores` or a pairwise judge
`(prompt, responses) -> [N, N]` logits, given directly or as "module:function" / "file.py:function"."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import _check_pairs, validate_matrix, validate_rewards


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
