"""The bundled recipes and prompt sets, by the names configs and commands use. Data only: the
config's validation, the pipeline and the commands all import these names from here (downward)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent

BUILTIN_PROMPTS = HERE / "prompts.jsonl"
# `data.prompts` names for the bundled prompt files
BUILTIN_PROMPT_SETS = {"builtin": BUILTIN_PROMPTS, "builtin-ifeval": HERE / "ifeval_prompts.jsonl"}

DEMO_RECIPE = HERE / "demo.yaml"
# `ampo demo --recipe` names
RECIPES = {"demo": DEMO_RECIPE, "ifeval": HERE / "ifeval.yaml"}
