"""`ampo run`, `ampo demo` and `ampo report`: whole self-play runs in a run folder."""

from __future__ import annotations

import os
from pathlib import Path

from ..recipes import DEMO_RECIPE, RECIPES  # noqa: F401 (re-exported by ampo.cli)


def cmd_run(args) -> None:
    from ..config import load_config
    from ..pipeline import Pipeline

    overrides = list(args.overrides)
    if args.config and "=" in args.config and not Path(args.config).exists():  # no config file, only overrides
        args.config, overrides = None, [args.config, *overrides]
    config = load_config(args.config, overrides)
    if args.dry_run:
        from ..dry_run import format_plan, plan

        print(format_plan(plan(config), config.out))
        return
    results = Pipeline(config, progress=not args.quiet).run()
    _print_results(config.out, results)


def cmd_demo(args) -> None:
    from ..config import load_config
    from ..pipeline import Pipeline

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={args.out}")
    config = load_config(RECIPES[args.recipe], overrides)
    results = Pipeline(config, progress=not args.quiet).run()
    _print_results(config.out, results)


def _print_results(out: str, results: list[dict]) -> None:
    if os.environ.get("RANK", "0") != "0":  # one summary under torchrun / accelerate launch
        return
    print(f"\nheld-out reward: initial {results[0]['baseline_mean_reward']:.4f}")
    for e in results:
        lo, hi = e["win_rate_ci"]
        print(f"  after round {e['round']}: reward {e['mean_reward']:.4f}  "
              f"win rate vs initial {e['win_rate']:.3f} [{lo:.3f}, {hi:.3f}]")
        for name, m in e.get("benchmarks", {}).items():
            print(f"    {name} avg prompt/inst (strict): {100 * m['avg_prompt_inst_strict_acc']:.1f} "
                  f"(initial {100 * m['initial']['avg_prompt_inst_strict_acc']:.1f})")
    print(f"report: {Path(out) / 'report.md'}")
    print(f"the trained policy as one model folder: ampo export {out} --out MODEL_DIR")


def cmd_report(args) -> None:
    """Rewrite RUN's report from its files (no models, no stages): under the run folder's lock, and
    recorded in its manifest so that the next `ampo run` keeps it."""
    import dataclasses

    from ..config import load_config
    from ..report import REPORT_FILES, write_run_report
    from ..runner import Manifest, RunLock, fingerprints
    from ..stage_keys import RunKeys

    run = Path(args.run)
    config = dataclasses.replace(load_config(run / "config.yaml"), out=str(run))  # RUN, wherever it is now
    with RunLock(run):
        path = write_run_report(run, config)
        manifest = Manifest(run / "manifest.json")
        manifest.mark("report", RunKeys(config).report(), "done",
                      outputs=fingerprints(run, [run / name for name in REPORT_FILES]))
    print(path)
