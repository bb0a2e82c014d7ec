"""`ampo train` (a policy on an existing pool) and `ampo train-rm` (a reward model on preference
pairs)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


TRAIN_FLAGS = {"policy": "model.policy", "loss": "train.loss", "strategy": "select.strategy", "k": "select.k",
               "epochs": "train.epochs", "max_steps": "train.max_steps", "learning_rate": "train.learning_rate",
               "embedder": "embed.embedder", "lora": "model.lora", "seed": "seed"}


def train_config(args):
    """`ampo train`'s RunConfig: the `--config` YAML, then the flags, then the dotted overrides."""
    import json

    from ..config import load_config

    flags = [f"{option}={json.dumps(getattr(args, flag))}" for flag, option in TRAIN_FLAGS.items()
             if getattr(args, flag) is not None]
    return load_config(args.config, [f"out={json.dumps(str(args.output))}", *flags, *args.overrides],
                       self_play=False)


def cmd_train(args) -> None:
    from ..runner import RunLock

    config = train_config(args)
    out = Path(args.output)
    created = not out.exists()
    # the output folder's lock first: a second `ampo train` on it is refused before the training stack loads
    lock = RunLock.hold(out, "output folder", "--output") if os.environ.get("RANK", "0") == "0" else None
    try:
        from ..pooltrain import PoolTraining

        s = PoolTraining(config, args.input, args.output, merge=args.merge, progress=not args.quiet).run()
    except ValueError:
        if created and lock is not None:
            _discard_untouched(out)
        raise
    finally:
        if lock is not None:
            lock.release()
    if os.environ.get("RANK", "0") != "0":
        return
    loss = "" if s["first_loss"] is None else f"; loss {s['first_loss']:.4f} -> {s['last_loss']:.4f}"
    print(f"trained {config.model.policy} with '{config.train.loss}' on {s['groups']} groups "
          f"({config.select.strategy}, k={config.select.k}) for {s['steps']} steps{loss}")
    what = "LoRA adapter + tokenizer" if s["adapter"] else "model + tokenizer"
    print(f"{what}: {s['checkpoint']}" + (f"; merged model: {s['merged']}" if s["merged"] else ""))


def _discard_untouched(out: Path) -> None:
    """Remove an output folder this command made if it holds nothing but its lock and config (bad
    input found before any stage ran): bad input leaves no output behind."""
    if out.is_dir() and {p.name for p in out.iterdir()} <= {".lock", "config.yaml"}:
        shutil.rmtree(out, ignore_errors=True)


def cmd_train_rm(args) -> None:
    from ..data import PoolError, read_rows
    from ..rewards import preference_labels, train_reward_model

    numbered = list(read_rows(args.input))
    if not numbered:
        raise PoolError(args.input, None, None, "no preference pairs")
    rows, pairs = zip(*numbered)
    preference_labels(pairs, args.soft_gamma, source=args.input, rows=rows)  # errors name the file's rows
    gpm = None
    if args.head == "gpm":
        from ..rewards.gpm import GPMHead

        gpm = GPMHead(value_head_dim=args.value_head_dim, tau=args.tau, gate=args.gate)
    elif (args.value_head_dim, args.tau, args.gate) != (2, 0.1, "none"):
        raise ValueError("--value-head-dim, --tau and --gate are options of --head gpm")
    path = train_reward_model(pairs, args.output, soft_gamma=args.soft_gamma, epochs=args.epochs,
                              lr=args.lr, batch_size=args.batch_size, seed=args.seed, head=args.head, gpm=gpm)
    print(f"reward model ({args.head}) -> {path} (load it with --reward {path})")
