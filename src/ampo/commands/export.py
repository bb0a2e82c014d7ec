"""`ampo export RUN --out DIR`: the policy after a round of a run, as one plain model folder.

A LoRA run leaves one adapter per round, each trained on the policy the rounds before it merged
into the weights, so no single checkpoint folder is the trained model. Export applies the chain
(`ampo.stages.load_round_policy`, the same code the run itself uses) and saves the result with
its tokenizer as safetensors: a folder `transformers`, vLLM and `ampo evaluate --policy` load.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

EXPORT_INFO = "ampo_export.json"


def trained_rounds(run: Path, config) -> list[str]:
    """The train keys of rounds 0..R, the rounds whose training is finished under the run's
    config: each `round-r/train` stage is done with the key its config gives it (so the chain of
    checkpoints belongs together) and its checkpoint still matches the sizes and hashes the
    manifest recorded."""
    from ..runner import Manifest, fingerprints
    from ..stage_keys import RunKeys

    stages = Manifest.read(run / "manifest.json")["stages"]
    keys = RunKeys(config)
    trained = []
    for r in range(config.rounds):
        entry, key = stages.get(f"round-{r}/train") or {}, keys.train(r)
        recorded = {rel: fp for rel, fp in (entry.get("outputs") or {}).items()
                    if rel.startswith(f"round-{r}/checkpoint/")}
        if entry.get("status") != "done" or entry.get("key") != key or not recorded \
                or fingerprints(run, [run / f"round-{r}" / "checkpoint"]) != recorded:
            break
        trained.append(key)
    return trained


def cmd_export(args) -> None:
    from ..config import ConfigError, load_config
    from ..data import atomic_dir, write_json
    from ..stages import load_round_policy

    run, out = Path(args.run), Path(args.out)
    if not (run / "config.yaml").is_file() or not (run / "manifest.json").is_file():
        raise ConfigError(f"ampo export: {run} is not a run folder (it needs config.yaml and manifest.json)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"ampo export: --out {out} exists and is not empty; choose another folder")
    config = dataclasses.replace(load_config(run / "config.yaml"), out=str(run))  # RUN, wherever it is now
    train_keys = trained_rounds(run, config)
    if not train_keys:
        raise ConfigError(f"ampo export: {run} has no finished round to export (its round-0/train stage is not "
                          f"done under its config.yaml; run `ampo run {run / 'config.yaml'}` to finish it)")
    r = len(train_keys) - 1 if args.round is None else args.round
    if not 0 <= r < len(train_keys):
        raise ConfigError(f"ampo export: --round {r} is not finished in {run} (finished: rounds 0-{len(train_keys) - 1})")
    model, tokenizer = load_round_policy(config, [run / f"round-{i}" / "checkpoint" for i in range(r + 1)])
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        write_json(tmp / EXPORT_INFO, {"run": str(run.resolve()), "round": r, "initial_policy": config.model.policy,
                                       "lora": config.model.lora, "train_keys": train_keys[:r + 1]})
    print(f"{out}: the policy after round {r} of {run} ({'LoRA adapters merged' if config.model.lora else 'full weights'}"
          f"); load it with transformers' from_pretrained, vLLM, or `ampo evaluate --policy {out}`")
