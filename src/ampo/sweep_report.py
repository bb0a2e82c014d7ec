"""What a sweep folder shows: `sweep.md` (one row per trial folder: its options, the metric with its
interval, run time, status), `sweep.png` (the metric against each swept option) and `best.yaml`
(the best trial's full config, ready for `ampo run`). All of it is rebuilt from the study, so
every process of a sweep (and every machine sharing its storage) writes the same files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sweep import HOST, Study, Sweep
from .sweep_space import fmt_value

CONTAMINATION_WARNING = ("the metric is computed on a benchmark ({name}): choosing options by it tunes on the "
                         "benchmark, so {name} is contaminated for these runs and cannot measure them without "
                         "bias. Report another benchmark, or a held-out split the sweep never saw.")


@dataclass
class TrialRow:
    folder: str
    number: int
    status: str  # done | failed | running | interrupted | waiting
    params: dict[str, Any]
    value: float | None = None
    ci: list[float] | None = None
    seconds: float | None = None
    error: str | None = None
    run_dir: str | None = None
    host: str | None = None
    attempts: int = 1
    from_store: int | None = None  # stages this folder took from the stage store
    extra: dict = field(default_factory=dict)


def collect(st: Study) -> list[TrialRow]:
    """One row per trial folder (its latest attempt), in folder order."""
    from optuna.trial import TrialState

    from .sweep import holder_alive

    latest: dict[str, Any] = {}
    attempts: dict[str, int] = {}
    for t in st.study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        folder = t.user_attrs.get("folder") or f"{t.number:03d}"
        attempts[folder] = attempts.get(folder, 0) + 1
        if folder not in latest or t.number > latest[folder].number:
            latest[folder] = t
    rows = []
    for folder, t in sorted(latest.items()):
        a = t.user_attrs
        status = {TrialState.COMPLETE: "done", TrialState.FAIL: "failed", TrialState.WAITING: "waiting",
                  TrialState.RUNNING: "running"}.get(t.state, t.state.name.lower())
        if status == "running" and a.get("host") == HOST and a.get("lock") and not holder_alive(Path(a["lock"])):
            status = "interrupted"  # its process is gone: the next `ampo sweep` resumes it
        rows.append(TrialRow(folder, t.number, status, dict(t.params), t.value if status == "done" else None,
                             a.get("metric_ci"), a.get("seconds"), a.get("error"), a.get("run_dir"), a.get("host"),
                             attempts[folder], _from_store(a.get("run_dir"))))
    return rows


def _from_store(run_dir: str | None) -> int | None:
    if not run_dir or not (Path(run_dir) / "manifest.json").is_file():
        return None
    try:
        stages = json.loads((Path(run_dir) / "manifest.json").read_text())["stages"]
        return sum(1 for e in stages.values() if e.get("from_store"))
    except (OSError, ValueError, KeyError, AttributeError):
        return None


def best_row(rows: list[TrialRow], direction: str) -> TrialRow | None:
    done = [r for r in rows if r.status == "done" and r.value is not None]
    if not done:
        return None
    return (max if direction == "maximize" else min)(done, key=lambda r: (r.value, -r.number))


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return ""
    s = int(round(s))
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def fmt_metric(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def write_outputs(sweep: Sweep, rows: list[TrialRow]) -> TrialRow | None:
    """Write sweep.md, sweep.png and best.yaml; returns the best row."""
    from .config import dump_config
    from .data import atomic_path

    best = best_row(rows, sweep.direction)
    png = _plot(sweep, rows, best)
    text = sweep_markdown(sweep, rows, best, png)
    with atomic_path(sweep.dir / "sweep.md") as tmp:
        tmp.write_text(text)
    if best is not None:
        config = sweep.trial_config(best.params, sweep.dir / "best")
        head = (f"# The best trial of the sweep {sweep.dir} (trial {best.folder}: {sweep.metric} = "
                f"{fmt_metric(best.value, best.ci)}).\n# `ampo run {sweep.dir / 'best.yaml'}` remakes it in "
                f"{sweep.dir / 'best'}, taking every stage from the sweep's stage store.\n")
        with atomic_path(sweep.dir / "best.yaml") as tmp:
            tmp.write_text(head + dump_config(config))
    return best


def sweep_markdown(sweep: Sweep, rows: list[TrialRow], best: TrialRow | None, png: Path | None) -> str:
    space, names = sweep.space, [p.name for p in sweep.space.params]
    done = sum(r.status == "done" for r in rows)
    lines = [f"# Sweep {sweep.dir.name}", ""]
    if sweep.benchmark_metric:
        bench = sweep.metric.split(".")[1]
        lines += [f"> **Warning**: {CONTAMINATION_WARNING.format(name=bench)}", ""]
    if sweep.command:
        lines += [f"Command: `{sweep.command}`", ""]
    grid = f" ({' x '.join(str(len(p.values)) for p in space.params)} grid)" if space.grid_size else ""
    what = ("the held-out reward of the run's own task after the last round (`eval.json` `mean_reward`)"
            if sweep.metric == "mean_reward" else f"`{sweep.metric}` of the last round's `eval.json`")
    lines += [
        f"- swept: {'; '.join(p.describe() for p in space.params)}",
        f"- sampler: {space.sampler}{grid}; {done} of {space.n_trials} trials done",
        f"- metric: {what}, {sweep.direction}d; [95% bootstrap interval over prompts] where there is one",
        f"- study: {sweep.study_name} in {sweep.storage or sweep.dir / 'study.journal'}; trials in "
        f"{sweep.dir / 'trials'}, sharing the stage store {sweep.store}",
    ]
    if best is not None:
        shown = ", ".join(f"{k}={fmt_value(v)}" for k, v in best.params.items())
        lines.append(f"- **best**: trial {best.folder} ({shown}): {fmt_metric(best.value, best.ci)}; its full config: "
                     f"`best.yaml`")
    lines += ["", f"| trial | {' | '.join(names)} | {sweep.metric} [95% CI] | run time | stages from the store | status |",
              f"|---|{'---|' * len(names)}---|---|---|---|"]
    for r in rows:
        status = r.status + (f" ({r.attempts} attempts)" if r.attempts > 1 else "")
        if r.error:
            status += f": {r.error[:200]}"
        if r.host and r.host != HOST:
            status += f" (on {r.host})"
        mark = " **(best)**" if best is not None and r is best else ""
        cells = [fmt_value(r.params[n]) if n in r.params else "" for n in names]
        lines.append(f"| {r.folder}{mark} | {' | '.join(cells)} | {fmt_metric(r.value, r.ci)} | "
                     f"{fmt_seconds(r.seconds)} | {'' if r.from_store is None else r.from_store} | {status} |")
    if png is not None:
        lines += ["", f"![{sweep.metric} against each swept option]({png.name})"]
    return "\n".join(lines) + "\n"


def _plot(sweep: Sweep, rows: list[TrialRow], best: TrialRow | None) -> Path | None:
    """The metric (with its interval) against each swept option, one panel per option."""
    done = [r for r in rows if r.status == "done" and r.value is not None]
    if not done:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .data import atomic_path

    params = sweep.space.params
    fig, axes = plt.subplots(1, len(params), figsize=(4.2 * len(params), 3.4), squeeze=False)
    for ax, p in zip(axes[0], params):
        xs = [r.params.get(p.name) for r in done]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        if numeric:
            pos = [float(x) for x in xs]
            positive = min(pos) > 0
            if p.log or (positive and max(pos) / min(pos) >= 10):
                ax.set_xscale("log")
            if p.kind == "grid" and len(p.values) <= 8:
                ax.set_xticks([float(v) for v in p.values], [fmt_value(v) for v in p.values])
                ax.minorticks_off()
        else:
            labels = [fmt_value(v) for v in (p.values if p.kind == "grid" else sorted(set(map(str, xs))))]
            pos = [labels.index(fmt_value(x)) for x in xs]
            ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0)
        ys = [r.value for r in done]
        err = [[max(r.value - r.ci[0], 0) if r.ci else 0 for r in done],
               [max(r.ci[1] - r.value, 0) if r.ci else 0 for r in done]]
        ax.errorbar(pos, ys, yerr=err, fmt="o", capsize=3, alpha=0.8)
        if best is not None and p.name in best.params and best in done:
            i = done.index(best)
            ax.plot([pos[i]], [ys[i]], marker="*", markersize=14, color="tab:red", linestyle="", label="best")
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel(p.name)
        ax.set_ylabel(sweep.metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{sweep.dir.name}: {sweep.metric} per trial (95% CI)", fontsize=10)
    fig.tight_layout()
    out = sweep.dir / "sweep.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out

