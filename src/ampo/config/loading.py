"""Building a `RunConfig` from YAML plus dotted `key=value` overrides, with type checks (an unknown
key or a wrong type is one `ConfigError` line naming the option), and writing it back as YAML."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .sections import ConfigError, RunConfig, short
from .validation import too_many_digits, validate


def _check_type(name: str, value: Any, tp: Any) -> Any:
    """Check (and lightly coerce: int -> float) a value against a field's type annotation.
    NaN and infinities are refused wherever a number is expected."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config '{name}': must be a finite number, got {value}")
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        for arg in typing.get_args(tp):
            try:
                return _check_type(name, value, arg)
            except ConfigError:
                pass
        if isinstance(value, int) and not isinstance(value, bool) and (huge := too_many_digits(value)):
            raise ConfigError(f"config '{name}': {huge}")
        raise ConfigError(f"config '{name}': expected {tp}, got {short(value)}")
    if tp is type(None):
        if value is None:
            return None
    elif origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, list):
            return [_check_type(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    elif origin is dict:
        _, vt = typing.get_args(tp)
        if isinstance(value, dict):
            return {str(k): _check_type(f"{name}.{k}", v, vt) for k, v in value.items()}
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, int) and (huge := too_many_digits(value)):  # float() would overflow
                raise ConfigError(f"config '{name}': {huge}")
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                return _check_type(name, number, tp)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    tname = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"config '{name}': expected {tname}, got {short(value)}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config '{prefix.rstrip('.') or 'root'}': expected a mapping, got {short(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown config key {short(f'{prefix}{key}')} (known: {', '.join(fields)})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_type(f"{prefix}{key}", value, tp)
    return cls(**kwargs)


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set `data[a][b][c] = value` for the dotted key `a.b.c`, making sections as needed."""
    *parents, last = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config override '{dotted}': '{p}' is not a section")
    node[last] = value


MAX_YAML_VALUES = 100_000  # a config holds a few hundred; aliases can make a few bytes expand to billions


def safe_yaml(text: str, source: str) -> Any:
    """`yaml.safe_load`, refusing text whose aliases expand past `MAX_YAML_VALUES` values (a
    422-byte "billion laughs" document expands to gigabytes) and naming `source` in every error."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, {}, set()) > MAX_YAML_VALUES:
            raise ConfigError(f"{source}: its aliases expand to more than {MAX_YAML_VALUES} values; refused")
        return None if node is None else loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f": line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None
    except ConfigError:
        raise
    except ValueError as e:  # an integer of more digits than Python converts (4300)
        raise ConfigError(f"{source}: {str(e).split(';')[0]}") from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many values `node` becomes once every alias is expanded (counted once per node)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:  # an alias inside its own anchor: infinite
        return MAX_YAML_VALUES + 1
    open_nodes.add(id(node))
    children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                else node.value if isinstance(node, yaml.SequenceNode) else [])
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, open_nodes)
        if total > MAX_YAML_VALUES:
            break
    open_nodes.discard(id(node))
    sizes[id(node)] = total
    return total


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["select.k=5", "train.hparams.beta=2"]` -> nested dict; values parsed as YAML scalars."""
    data: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"config override {short(item)}: expected key=value")
        key, raw = item.split("=", 1)
        value = safe_yaml(raw, f"config override {short(key.strip() + '=')}") if raw.strip() else ""
        set_dotted(data, key.strip(), value)
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None,
                self_play: bool = True) -> RunConfig:
    """Read YAML (optional), apply dotted overrides on top, build and validate a RunConfig.
    `self_play=False` (`ampo train` on a pool): the options of generation and prompts are not
    checked against selection, since nothing is generated."""
    data = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}" if not path.exists() else f"{path}: not a file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
        loaded = safe_yaml(text, str(path))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: must be a mapping of sections and options (like 'select: {{k: 3}}'), "
                              f"got a {type(loaded).__name__}")
        data = _merge(data, loaded)
    data = _merge(data, parse_overrides(list(overrides)))
    config = _build(RunConfig, data)
    _mode_defaults(config, data)
    validate(config, self_play)
    return config


def _mode_defaults(config: RunConfig, data: dict) -> None:
    """Defaults that depend on other options: a run whose YAML, recipe, flags and overrides leave
    `train.learning_rate` unset trains at its loss's default rate for a full fine-tune or for LoRA
    (`ampo.losses.rates`, with sources; a LoRA rate is tens to hundreds of times too large for a
    full fine-tune), and the log names the rate and where it comes from."""
    from ..losses.rates import FULL_FINETUNE, default_learning_rate

    if "learning_rate" in (data.get("train") or {}) or config.train.loss not in FULL_FINETUNE:
        return  # set by the user, or an unknown loss (refused by validation)
    import logging
    import os

    rate = default_learning_rate(config.train.loss, config.model.lora)
    config.train.learning_rate = rate.value
    if os.environ.get("RANK", "0") == "0":
        # a full fine-tune's source in full (few expect a rate that small); LoRA's points to the docs
        source = "docs/losses.md says where it comes from" if config.model.lora else f"{rate.source}; docs/losses.md"
        logging.getLogger("ampo").info(
            "train.learning_rate is not set: using %g, the %s default for %s (%s); set train.learning_rate to choose",
            rate.value, "LoRA" if config.model.lora else "full fine-tune", config.train.loss, source)


def dump_config(c: RunConfig) -> str:
    return yaml.safe_dump(c.to_dict(), sort_keys=False)
