"""Pool records: the one data shape every stage reads and writes, with validation and atomic I/O.

A pool record is one prompt with its responses (and, once scored / embedded / selected, their
rewards, embeddings and the selected indices). Files are JSONL or Parquet, chosen by extension.
Readers also accept the published multi-response layouts and TRL preference pairs, and report
which column mapping they used. Bad input raises `PoolError` naming file, row and field.

Modules: `records` (`PoolRecord`, `PoolError`, `prompt_text`), `atomic` (atomic files and
folders), `rows` (raw rows from files), `checks` (field checks), `pool_layouts` (`read_pool` and
the layouts), `prompts` (prompt files), `writers` (JSONL/Parquet outputs).
"""

from .atomic import (WriteError, atomic_dir, atomic_path, ensure_dir, naming_write_errors, widen_permissions,
                     write_json)
from .checks import _check_meta, _check_number, _check_prompt
from .pool_layouts import RESPONSE_FIELDS, detect_layout, read_pool
from .prompts import read_prompt_rows, read_prompts
from .records import PoolError, PoolRecord, Prompt, prompt_text
from .rows import read_rows
from .writers import add_gold, dump_rows, output_format, trl_pairs, write_pool, write_rows

__all__ = [
    "RESPONSE_FIELDS", "PoolError", "PoolRecord", "Prompt", "WriteError", "_check_meta", "_check_number",
    "_check_prompt", "add_gold", "atomic_dir", "atomic_path", "detect_layout", "dump_rows", "ensure_dir",
    "naming_write_errors", "output_format", "prompt_text", "read_pool", "read_prompt_rows", "read_prompts", "read_rows", "trl_pairs",
    "widen_permissions", "write_json", "write_pool", "write_rows",
]
