"""`ampo sweep` and the stage store on a tiny in-process policy: shared stages made once (store),
grid and TPE studies, the outputs (sweep.md, sweep.png, best.yaml), `--estimate`, refusals before
any model loads, resume after `kill -9`, and two processes on one study storage."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ampo.cli import main
from ampo.config import load_config
from ampo.pipeline import Pipeline
from ampo.runner import Runner

ROOT = Path(__file__).resolve().parents[1]


def tiny(policy: Path, *extra: str) -> list[str]:
    """The options of a tiny one-round run (as tests/test_pipeline.py), without `out`."""
    return ["rounds=1", f"model.policy={policy}", "model.lora=false",
            f"data.prompts={ROOT / 'examples' / 'tiny_prompts.jsonl'}", "data.heldout=2", "generate.n=4",
            "generate.max_new_tokens=6", "generate.shard_prompts=2", "select.k=2", "embed.embedder=policy",
            "eval.samples_per_prompt=2", "eval.max_new_tokens=6", "eval.bootstrap=200", "train.prompts_per_step=2",
            "train.save_steps=1", *extra]


def sweep(policy, out, *flags, extra=()) -> int:
    return main(["-q", "sweep", *tiny(policy, *extra), "--out", str(out), *flags])


def study_trials(out: Path):
    import optuna

    from ampo.sweep import Sweep, open_study

    st = open_study(Sweep.load(out))
    return st.study.get_trials(deepcopy=False), optuna.trial.TrialState


def stages(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())["stages"]


def mtimes(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


# -- the stage store ---------------------------------------------------------------------------

def _write_stage(folder: Path, calls: list, text: str = "pool"):
    def fn():
        calls.append(folder.name)
        (folder / "round-0" / "checkpoint").mkdir(parents=True, exist_ok=True)
        (folder / "round-0" / "pool.txt").write_text(text)
        (folder / "round-0" / "checkpoint" / "w.bin").write_bytes(b"\0\1\2")
        return {"shards_by_rank": {"0": 1}}
    return fn


def _outputs(folder: Path) -> list[Path]:
    return [folder / "round-0" / "pool.txt", folder / "round-0" / "checkpoint"]


def test_store_gives_a_finished_stage_to_another_run_folder(tmp_path):
    store, calls = tmp_path / "store", []
    for name in ("a", "b"):
        folder = tmp_path / name
        with Runner(folder, store=store) as run:
            run.stage("round-0/generate", "k1", _write_stage(folder, calls), _outputs(folder))
            run.stage("split", "k2", lambda f=folder: [(f / "split.json").write_text("{}"), calls.append("split")]
                      and None, [folder / "split.json"])
    assert calls == ["a", "split", "split"]  # made once; `split` (names its prompt file) is never shared
    a, b = stages(tmp_path / "a")["round-0/generate"], stages(tmp_path / "b")["round-0/generate"]
    assert b["outputs"] == a["outputs"] and b["shards_by_rank"] == {"0": 1} and b["from_store"]["seconds"] is not None
    assert "from_store" not in a
    same = lambda rel: os.path.samefile(tmp_path / "a" / rel, tmp_path / "b" / rel)
    assert same("round-0/pool.txt") and same("round-0/checkpoint/w.bin")  # hard links, not copies
    # a rerun finds the stage done in its own folder
    with Runner(tmp_path / "b", store=store) as run:
        run.stage("round-0/generate", "k1", _write_stage(tmp_path / "b", calls), _outputs(tmp_path / "b"))
    assert calls == ["a", "split", "split"]


def test_ampo_store_lists_entries_and_prunes_those_no_kept_run_records(tmp_path, capsys):
    store, calls = tmp_path / "store", []
    for name, key in (("a", "k1"), ("b", "k2")):
        folder = tmp_path / "runs" / name
        with Runner(folder, store=store) as run:
            run.stage("round-0/generate", key, _write_stage(folder, calls), _outputs(folder))
    assert main(["store", str(store)]) == 0
    listed = capsys.readouterr().out
    assert "k1" in listed and "k2" in listed and "2 entries" in listed
    shutil.rmtree(tmp_path / "runs" / "b")  # the user deleted a run folder: its entry is held only by the store
    assert main(["store", str(store), "--prune", "--keep", str(tmp_path / "runs"), "--dry-run"]) == 0
    assert "would delete 1 of 2 entries" in capsys.readouterr().out and (store / "k2").is_dir()
    assert main(["store", str(store), "--prune", "--keep", str(tmp_path / "runs")]) == 0
    assert "deleted 1 of 2 entries" in capsys.readouterr().out
    assert (store / "k1" / "entry.json").is_file() and not (store / "k2").exists()
    assert (tmp_path / "runs" / "a" / "round-0" / "pool.txt").read_text() == "pool"  # the kept run is whole
    assert main(["store", str(store), "--prune"]) == 2  # nothing named to keep: refused, nothing deleted
    assert "name the run or sweep folders" in capsys.readouterr().err and (store / "k1").is_dir()


def test_a_damaged_store_entry_is_dropped_and_the_stage_runs(tmp_path):
    store, calls = tmp_path / "store", []
    with Runner(tmp_path / "a", store=store) as run:
        run.stage("round-0/generate", "k1", _write_stage(tmp_path / "a", calls), _outputs(tmp_path / "a"))
    stored = store / "k1" / "files" / "round-0" / "pool.txt"
    stored.unlink()
    stored.write_text("tampered")  # a new file: the run folder's copy is untouched
    with Runner(tmp_path / "b", store=store) as run:
        run.stage("round-0/generate", "k1", _write_stage(tmp_path / "b", calls), _outputs(tmp_path / "b"))
    assert calls == ["a", "b"]
    assert (tmp_path / "b" / "round-0" / "pool.txt").read_text() == "pool"
    assert "from_store" not in stages(tmp_path / "b")["round-0/generate"]
    assert (store / "k1" / "files" / "round-0" / "pool.txt").read_text() == "pool"  # stored again, intact


def test_a_store_entry_with_a_missing_file_is_dropped_and_stored_again(tmp_path):
    """What a deletion cut short (or a user) leaves: entry.json kept, a file gone. The entry must
    not make every later run redo the stage without ever healing."""
    store, calls = tmp_path / "store", []
    with Runner(tmp_path / "a", store=store) as run:
        run.stage("round-0/generate", "k1", _write_stage(tmp_path / "a", calls), _outputs(tmp_path / "a"))
    (store / "k1" / "files" / "round-0" / "pool.txt").unlink()
    for name in ("b", "c"):
        with Runner(tmp_path / name, store=store) as run:
            run.stage("round-0/generate", "k1", _write_stage(tmp_path / name, calls), _outputs(tmp_path / name))
    assert calls == ["a", "b"]  # b remade it and stored it again; c took it from the store
    assert stages(tmp_path / "c")["round-0/generate"]["from_store"]


def test_store_deletions_and_killed_writes_leave_only_hidden_folders_that_prune_removes(tmp_path, capsys):
    import os

    from ampo.stage_store import StageStore

    store, calls = tmp_path / "store", []
    with Runner(tmp_path / "a", store=store) as run:
        run.stage("round-0/generate", "k1", _write_stage(tmp_path / "a", calls), _outputs(tmp_path / "a"))
    StageStore(store).remove("k1")
    assert not (store / "k1").exists() and not StageStore(store).leftovers()
    for name in (".k2.123-ab.tmp", ".k3.123-cd.del", ".k4.123-ef.tmp"):  # killed put, killed delete, a put running
        (store / name / "files").mkdir(parents=True)
    for p in (store / ".k2.123-ab.tmp", store / ".k2.123-ab.tmp" / "files"):  # untouched for long, inside too
        os.utime(p, (0, 0))
    os.utime(store / ".k4.123-ef.tmp", (0, 0))  # its top folder old, but a file being copied inside is new
    (store / ".k4.123-ef.tmp" / "files" / "weights").write_text("copying")
    os.utime(store / ".k4.123-ef.tmp", (0, 0))
    assert [p.name for p in StageStore(store).leftovers()] == [".k2.123-ab.tmp", ".k3.123-cd.del"]
    assert main(["store", str(store), "--prune", "--keep", str(tmp_path / "a")]) == 0
    assert "and 2 folder(s) left by killed processes" in capsys.readouterr().out
    assert sorted(p.name for p in store.iterdir() if p.name != ".claims") == [".k4.123-ef.tmp"]


def test_ampo_run_with_a_store_reuses_the_pool_of_a_run_that_differs_in_train(tiny_policy, tmp_path):
    store = tmp_path / "store"
    make = lambda out, *extra: load_config(overrides=[*tiny(tiny_policy, *extra), f"out={tmp_path / out}",
                                                      f"store={store}"])
    Pipeline(make("a", "train.learning_rate=0.01"), progress=False).run()
    second = make("b", "train.learning_rate=0.001")
    from ampo.dry_run import plan

    status = {s.name: s.status for s in plan(second)}
    assert status["round-0/generate"] == status["baseline"] == "store" and status["round-0/train"] == "run"
    Pipeline(second, progress=False).run()
    b = stages(tmp_path / "b")
    for name in ("baseline", "round-0/generate", "round-0/score", "round-0/embed", "round-0/select"):
        assert b[name]["from_store"], name
    for name in ("split", "round-0/train", "round-0/evaluate"):
        assert "from_store" not in b[name], name
    assert not (tmp_path / "b" / "round-0" / "generate.parts").exists()


# -- refusals, before any model loads ----------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--grid", "train.learning_rate=fast,1e-3"], "expected float, got 'fast'"),
    (["--grid", "model.foo=1,2"], "unknown config key 'model.foo'"),
    (["--grid", "train.lerning_rate=1,2"], "not a hyperparameter of loss 'ampo'"),
    (["--grid", "select.k=0,1"], "must be >= 1"),
    (["--grid", "train.learning_rate="], "empty grid"),
    (["--grid", "train.learning_rate=1e-3,1e-3"], "given twice"),
    (["--grid", "train.learning_rate=1e-3,1e-2", "--trials", "3"], "more trials than the grid has (2)"),
    (["--range", "train.learning_rate=1e-3:1e-2:log", "--sampler", "grid"], "--range needs --sampler tpe"),
    (["--range", "train.learning_rate=1e-3:1e-2:log"], "needs --trials"),
    (["--range", "train.learning_rate=1e-2:1e-3", "--trials", "2"], "LOW must be below HIGH"),
    (["--range", "select.strategy=a:b", "--trials", "2"], "--range select.strategy"),
    (["--grid", "out=a,b"], "cannot be swept"),
    (["--grid", "train.learning_rate=1e-3,1e-2", "--grid", "train.learning_rate=1e-4"], "swept twice"),
    (["--grid", "train.seed=1,2"], "not a hyperparameter"),
    (["--grid", "train.loss=dpo,ampo", "--grid", "train.gamma=0.5,1"], "not a hyperparameter of loss 'dpo'"),
    (["--grid", "train.learning_rate=1e-3,1e-2", "--metric", "benchmarks.ifeval.avg_prompt_inst_strict_acc"],
     "contaminates the benchmark"),
    (["--grid", "train.learning_rate=1e-3,1e-2", "--metric", "accuracy"], "unknown; choose one of"),
    ([], "nothing to sweep"),
])
def test_bad_sweeps_are_refused_in_one_line(tiny_policy, tmp_path, capsys, flags, message):
    out = tmp_path / "sweep"
    assert sweep(tiny_policy, out, *flags) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ampo: error:") and "\n" not in err and message in err, err
    assert not out.exists()


def test_a_value_both_swept_and_set_is_refused(tiny_policy, tmp_path, capsys):
    assert sweep(tiny_policy, tmp_path / "s", "--grid", "train.learning_rate=1e-3,1e-2",
                 extra=["train.learning_rate=0.1"]) == 2
    assert "both swept and set" in capsys.readouterr().err


def test_a_folder_holding_another_sweep_is_refused(tiny_policy, tmp_path, capsys):
    out = tmp_path / "s"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"params": [], "sampler": "grid"}))
    assert sweep(tiny_policy, out, "--grid", "train.learning_rate=1e-3,1e-2") == 2
    assert "holds another sweep (its swept options differ)" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["sweep.json"]


def _written_by_an_earlier_ampo(policy, out: Path, *flags) -> dict:
    """Write the sweep.json that an ampo without `score.unfinished_reward` (added later, default
    None) would have written for the same command: its base config and default study name."""
    from ampo.cli import build_parser
    from ampo.commands.sweep import build_sweep
    from ampo.sweep import default_study_name

    args = build_parser().parse_args(["sweep", *tiny(policy), "--out", str(out), *flags])
    new, _ = build_sweep(args)
    old = new.to_json()
    del old["base"]["score"]["unfinished_reward"]
    old["study"] = default_study_name(new.identity(old["base"], new.space, new.metric, new.direction))
    out.mkdir(parents=True)
    (out / "sweep.json").write_text(json.dumps(old))
    return old


def test_a_sweep_written_by_an_earlier_ampo_resumes_under_its_own_study(tiny_policy, tmp_path):
    """Upgrading ampo mid-sweep adds options at their defaults: the folder's study is the same one."""
    from ampo.cli import build_parser
    from ampo.commands.sweep import build_sweep
    from ampo.sweep import check_folder

    out = tmp_path / "s"
    old = _written_by_an_earlier_ampo(tiny_policy, out, "--grid", "train.learning_rate=1e-3,1e-2")
    new, _ = build_sweep(build_parser().parse_args(["sweep", *tiny(tiny_policy), "--out", str(out), "--grid",
                                                    "train.learning_rate=1e-3,1e-2"]))
    assert new.study_name != old["study"]
    resumed = check_folder(new)
    assert resumed.study_name == old["study"] and resumed.base == old["base"]
    assert resumed.trial_config({}, out / "t").to_dict() == new.trial_config({}, out / "t").to_dict()


def test_an_earlier_sweep_that_differs_beyond_new_defaults_is_still_refused(tiny_policy, tmp_path, capsys):
    out = tmp_path / "s"
    _written_by_an_earlier_ampo(tiny_policy, out, "--grid", "train.learning_rate=1e-3,1e-2")
    assert sweep(tiny_policy, out, "--grid", "train.learning_rate=1e-3,1e-2", "--estimate",
                 extra=["score.unfinished_reward=0"]) == 2
    assert "base config differ: score.unfinished_reward was None, now 0" in capsys.readouterr().err


# -- --estimate ---------------------------------------------------------------------------------

def test_estimate_counts_trials_and_shared_stages_without_running(tiny_policy, tmp_path, capsys):
    out = tmp_path / "s"
    assert sweep(tiny_policy, out, "--grid", "train.learning_rate=1e-3,1e-2", "--grid", "train.beta=1,2",
                 "--estimate") == 0
    text = capsys.readouterr().out
    assert "4 trials (grid 2 train.learning_rate x 2 train.hparams.beta)" in text  # train.beta is the loss's
    # per trial: split, baseline, generate, score, embed, select, train, evaluate; the five in the
    # middle are shared, split is per folder: 4 x 8 = 32 in all, 5 + 4 x 3 = 17 distinct
    assert "32 in all trials, 17 distinct" in text and "17 to make" in text
    assert "no stage timings yet" in text
    assert not out.exists()


def test_an_allowed_benchmark_metric_warns_that_the_benchmark_is_contaminated(tiny_policy, tmp_path, capsys):
    assert sweep(tiny_policy, tmp_path / "s", "--grid", "train.learning_rate=1e-3,1e-2", "--metric",
                 "benchmarks.ifeval.avg_prompt_inst_strict_acc", "--allow-benchmark-metric", "--estimate",
                 extra=["eval.benchmarks=[ifeval]"]) == 0
    assert "contaminated" in capsys.readouterr().err


# -- sweeps -------------------------------------------------------------------------------------

def test_grid_sweep_shares_stages_and_writes_its_outputs(tiny_policy, tmp_path, capsys):
    out = tmp_path / "s"
    flags = ["--grid", "train.learning_rate=1e-3,1e-2"]
    assert sweep(tiny_policy, out, *flags) == 0
    trials, State = study_trials(out)
    assert [t.state for t in trials] == [State.COMPLETE] * 2
    assert sorted(t.params["train.learning_rate"] for t in trials) == [1e-3, 1e-2]
    first, second = (out / "trials" / f"{t.number:03d}" for t in trials)
    for t, folder in zip(trials, (first, second)):
        ev = json.loads((folder / "round-0" / "eval.json").read_text())
        assert t.value == ev["mean_reward"] and len(t.user_attrs["metric_ci"]) == 2
        assert load_config(folder / "config.yaml").train.learning_rate == t.params["train.learning_rate"]
    # the second trial took the pool, its scores and embeddings, the selection and the baseline from
    # the store: one generation in all
    a, b = stages(first), stages(second)
    for name in ("baseline", "round-0/generate", "round-0/score", "round-0/embed", "round-0/select"):
        assert "from_store" not in a[name] and b[name]["from_store"] and a[name]["key"] == b[name]["key"], name
    assert "from_store" not in b["round-0/train"] and a["round-0/train"]["key"] != b["round-0/train"]["key"]
    generations = [e for e in (out / "store").glob("*/entry.json") if json.loads(e.read_text())["stage"]
                   == "round-0/generate"]
    assert len(generations) == 1
    stored = {q.relative_to(out / "store").as_posix() for q in (out / "store").rglob("*") if q.is_file()}
    assert any("/files/round-0/checkpoint/" in f for f in stored)  # a declared output: shared
    assert not any("/round-0/train/" in f or ".parts/" in f for f in stored)  # Trainer checkpoints, shards: not
    # outputs
    md = (out / "sweep.md").read_text()
    assert "| trial | train.learning_rate | mean_reward [95% CI] |" in md and md.count("| done |") == 2
    assert (out / "sweep.png").stat().st_size > 0
    best_trial = max(trials, key=lambda t: t.value)
    best = load_config(out / "best.yaml")
    assert best.train.learning_rate == best_trial.params["train.learning_rate"] and best.out == str(out / "best")
    printed = capsys.readouterr().out
    assert "2 of 2 trials done" in printed and "best: trial" in printed
    # each trial is an ordinary run folder: `ampo report` works on it
    assert main(["-q", "report", str(second)]) == 0
    # rerunning the finished sweep does nothing
    before = mtimes(out / "trials")
    assert sweep(tiny_policy, out, *flags) == 0
    after = mtimes(out / "trials")
    assert {k for k in before if before[k] != after.get(k)} <= set()
    assert len(study_trials(out)[0]) == 2
    # best.yaml is ready for `ampo run`: every shared stage comes from the sweep's store
    assert main(["-q", "run", str(out / "best.yaml")]) == 0
    remade = stages(out / "best")
    assert all(e.get("from_store") for name, e in remade.items() if name not in ("split", "report"))


def test_tpe_sweep_over_a_log_range(tiny_policy, tmp_path):
    out = tmp_path / "s"
    assert sweep(tiny_policy, out, "--range", "train.learning_rate=1e-4:1e-1:log", "--trials", "2") == 0
    trials, State = study_trials(out)
    assert [t.state for t in trials] == [State.COMPLETE] * 2
    lrs = [t.params["train.learning_rate"] for t in trials]
    assert all(1e-4 <= lr <= 1e-1 for lr in lrs) and lrs[0] != lrs[1]
    assert json.loads((out / "sweep.json").read_text())["sampler"] == "tpe"
    assert (out / "best.yaml").exists()


def test_a_failed_trial_is_recorded_and_retried_in_its_folder(tiny_policy, tmp_path, monkeypatch, capsys):
    import ampo.sweep

    out = tmp_path / "s"
    real = ampo.sweep.read_metric

    def broken(run_dir, config, metric):
        if config.train.learning_rate == 1e-2:
            raise ValueError("boom")
        return real(run_dir, config, metric)

    monkeypatch.setattr(ampo.sweep, "read_metric", broken)
    flags = ["--grid", "train.learning_rate=1e-3,1e-2"]
    assert sweep(tiny_policy, out, *flags) == 2
    assert "1 of 2 trials failed" in capsys.readouterr().err
    assert "ValueError: boom" in (out / "sweep.md").read_text()
    monkeypatch.setattr(ampo.sweep, "read_metric", real)
    assert sweep(tiny_policy, out, *flags) == 0
    trials, State = study_trials(out)
    assert [t.state for t in trials] == [State.COMPLETE, State.FAIL, State.COMPLETE] or \
        [t.state for t in trials] == [State.FAIL, State.COMPLETE, State.COMPLETE]
    retry = trials[2]
    assert retry.user_attrs["retry_of"] in (0, 1) and retry.user_attrs["folder"] == f"{retry.user_attrs['retry_of']:03d}"
    assert sorted(os.listdir(out / "trials")) == ["000", "001"]
    assert "2 attempts" in (out / "sweep.md").read_text()


# -- resume after kill -9, and several processes on one study ------------------------------------

def _cli(args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ampo.cli", "-q", *args], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def test_kill_9_mid_trial_and_rerun_resumes_it_in_its_folder(tiny_policy, tmp_path):
    out = tmp_path / "s"
    flags = ["--grid", "train.learning_rate=1e-3,1e-2"]
    slower = "generate.max_new_tokens=48"
    proc = _cli(["sweep", *tiny(tiny_policy, slower), "--out", str(out), *flags])
    second_training = out / "trials" / "001" / "round-0" / "train"
    t0 = time.time()
    while not second_training.exists():  # the second trial is training (its pool came from the store)
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended (exit {proc.returncode}) before the kill point: {proc.stderr.read()[-2000:]}")
        if time.time() - t0 > 300:
            proc.kill()
            pytest.fail("kill point not reached")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    trials, State = study_trials(out)
    assert [t.state for t in trials] == [State.COMPLETE, State.RUNNING]  # Optuna's record of the killed trial
    from ampo.sweep import Sweep, open_study
    from ampo.sweep_report import collect

    assert [r.status for r in collect(open_study(Sweep.load(out)))] == ["done", "interrupted"]
    first = mtimes(out / "trials" / "000")
    assert sweep(tiny_policy, out, *flags, extra=[slower]) == 0
    trials, State = study_trials(out)
    assert [t.state for t in trials] == [State.COMPLETE, State.COMPLETE]  # resumed, not asked again
    assert sorted(os.listdir(out / "trials")) == ["000", "001"]
    assert mtimes(out / "trials" / "000") == first  # the finished trial is kept as it was
    b = stages(out / "trials" / "001")
    assert b["round-0/generate"]["from_store"] and all(e["status"] == "done" for e in b.values())
    md = (out / "sweep.md").read_text()
    assert md.count("| done |") == 2


@pytest.mark.slow
@pytest.mark.ci  # the one test of several processes on a study: CI runs it (a minute)
def test_two_processes_share_one_study_storage_and_one_store(tiny_policy, tmp_path):
    """Two `ampo sweep` commands on one database (as two machines would: each its own --out; one
    with --jobs 2) and one stage store: every grid point runs once, the shared stages are made once."""
    db, store = tmp_path / "study.db", tmp_path / "store"
    flags = ["--grid", "train.learning_rate=1e-3,3e-3,1e-2", "--grid", "train.beta=1,2", "--storage",
             f"sqlite:///{db}"]
    procs = [_cli(["sweep", *tiny(tiny_policy, f"store={store}"), "--out", str(tmp_path / name), *flags, *jobs])
             for name, jobs in (("a", []), ("b", ["--jobs", "2"]))]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read()[-3000:]
    folders = {name: sorted(os.listdir(tmp_path / name / "trials")) for name in ("a", "b")}
    assert sorted(folders["a"] + folders["b"]) == [f"{i:03d}" for i in range(6)]  # each trial once, somewhere
    from ampo.sweep import Sweep, open_study

    st = open_study(Sweep.load(tmp_path / "a"))
    asked = st.study.get_trials(deepcopy=False)
    # an ask that lost the race for the last slot to the other command (they hold no common lock) is
    # recorded as a surplus failure and never run
    assert all(t.state.name == "FAIL" for t in asked if t.user_attrs.get("surplus"))
    trials = [t for t in asked if not t.user_attrs.get("surplus")]
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6
    made = [name for name in ("a", "b") for f in folders[name]
            if "from_store" not in stages(tmp_path / name / "trials" / f)["round-0/generate"]]
    assert len(made) == 1  # one generation for six trials in three processes
    for name in ("a", "b"):  # a process that ended first may have seen the other's last trial running:
        # rerunning its command (nothing left to run) brings its sweep.md up to date
        assert main(["-q", "sweep", *tiny(tiny_policy, f"store={store}"), "--out", str(tmp_path / name), *flags]) == 0
        assert (tmp_path / name / "sweep.md").read_text().count("| done |") == 6


# -- races between processes, driven step by step -----------------------------------------------

def _opened(tiny_policy, out: Path, *flags):
    from ampo.cli import build_parser
    from ampo.commands.sweep import build_sweep
    from ampo.sweep import open_study, save

    sweep, _ = build_sweep(build_parser().parse_args(["sweep", *tiny(tiny_policy), "--out", str(out),
                                                      "--grid", "train.learning_rate=1e-3,1e-2", *flags]))
    return open_study(save(sweep))


def test_a_trial_that_finishes_after_anothers_snapshot_is_not_adopted(tiny_policy, tmp_path):
    """Worker Y reads the trials while X's trial runs; X finishes, tells the study and releases
    its lock; Y must not take the finished trial over (it crashed the worker before)."""
    from ampo.sweep import _adopt, next_trial

    st = _opened(tiny_policy, tmp_path / "s")
    claim = next_trial(st)
    snapshot = st.study.get_trials(deepcopy=False)
    assert snapshot[0].state.name == "RUNNING"
    st.study.tell(claim.number, 0.5)
    os.close(claim.fd)
    assert _adopt(st, snapshot) is None


def test_a_trial_asked_by_another_machine_between_count_and_ask_makes_ours_surplus(tiny_policy, tmp_path):
    """Two machines (two --out on one storage) with one grid slot left: the machine whose ask comes
    second gets no trial, even though the slot looked free when it counted."""
    from ampo.sweep import next_trial

    flags = ["--storage", f"sqlite:///{tmp_path / 'study.db'}"]
    a, b = _opened(tiny_policy, tmp_path / "a", *flags), _opened(tiny_policy, tmp_path / "b", *flags)
    first = next_trial(a)
    a.study.tell(first.number, 0.5)
    ask = b.study.ask

    def late_ask(*args, **kw):  # machine A asks the last slot just before B's ask goes through
        taken = next_trial(a)
        assert taken is not None
        return ask(*args, **kw)

    b.study.ask = late_ask
    assert next_trial(b) is None
    trials = b.study.get_trials(deepcopy=False)
    assert [t.user_attrs.get("surplus", False) for t in trials] == [False, False, True]


def test_a_failing_progress_update_does_not_stop_the_trials(tiny_policy, tmp_path, monkeypatch):
    """sweep.md is rewritten as trials finish; a storage hiccup or a full disk there must not end
    the sweep (nor, with --jobs, terminate its workers) in the middle of its trials."""
    import ampo.sweep_report as sr

    write, calls = sr.write_outputs, []

    def hiccup(*args, **kw):  # the update after the first trial fails, the others work
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return write(*args, **kw)

    monkeypatch.setattr(sr, "write_outputs", hiccup)
    assert sweep(tiny_policy, tmp_path / "s", "--grid", "train.learning_rate=1e-3,1e-2") == 0
    assert (tmp_path / "s" / "sweep.md").read_text().count("| done |") == 2


def test_another_machines_trial_with_no_heartbeat_is_adopted_once_stale_since_its_start(tiny_policy, tmp_path,
                                                                                      monkeypatch):
    """An older ampo wrote the host before the heartbeat: a kill between left a host and no beat."""
    import ampo.sweep as sw

    st = _opened(tiny_policy, tmp_path / "s")
    trial = st.study.ask({p.name: p.distribution() for p in st.sweep.space.params})
    st.storage.set_trial_user_attr(trial._trial_id, "host", "another-machine")
    trials = st.study.get_trials(deepcopy=False)
    assert sw._adopt(st, trials) is None  # just started: its owner may be writing its heartbeat now
    start = time.time()
    monkeypatch.setattr(sw.time, "time", lambda: start + sw.STALE_AFTER_S + 5)
    claim = sw._adopt(st, trials)
    assert claim is not None and claim.number == trial.number
    os.close(claim.fd)


def test_a_store_that_cannot_be_written_does_not_stop_a_run_at_a_damaged_entry(tmp_path, monkeypatch):
    import ampo.stage_store as ss

    store, calls = tmp_path / "store", []
    with Runner(tmp_path / "a", store=store) as run:
        run.stage("round-0/generate", "k1", _write_stage(tmp_path / "a", calls), _outputs(tmp_path / "a"))
    stored = store / "k1" / "files" / "round-0" / "pool.txt"
    stored.unlink()
    stored.write_text("tampered")  # damaged: its sha256 is not the recorded one
    rename = ss.os.rename

    def read_only(src, dst):
        if str(dst).endswith(".del"):
            raise PermissionError(13, "Read-only file system")
        return rename(src, dst)

    monkeypatch.setattr(ss.os, "rename", read_only)
    with Runner(tmp_path / "b", store=store) as run:
        run.stage("round-0/generate", "k1", _write_stage(tmp_path / "b", calls), _outputs(tmp_path / "b"))
    assert calls == ["a", "b"] and (tmp_path / "b" / "round-0" / "pool.txt").read_text() == "pool"


def test_folders_sharing_a_storage_do_not_ask_the_same_point(tmp_path, monkeypatch):
    """Two folders on one `--storage` ask under their own locks, possibly at the same trial count:
    their tpe samplers are seeded apart (by machine and folder), so they do not suggest the same
    point; a sweep in its own journal asks as it did when rerun, wherever its folder is."""
    import optuna

    import ampo.sweep
    from ampo.sweep import Sweep, ask_seed, make_sampler
    from ampo.sweep_space import SweepParam, SweepSpace

    space = SweepSpace((SweepParam("train.learning_rate", "float", low=1e-5, high=1e-2, log=True),), "tpe", 4)

    def folder(name, storage):
        return Sweep(tmp_path / name, {}, space, "mean_reward", "maximize", False, storage, "s", "", 0)

    def first_ask(sweep):
        study = optuna.create_study(sampler=make_sampler(sweep, ask_seed(sweep, 0)), direction="maximize")
        return study.ask({p.name: p.distribution() for p in space.params}).params["train.learning_rate"]

    shared = "sqlite:///" + str(tmp_path / "study.db")
    a, b = folder("a", shared), folder("b", shared)
    assert first_ask(a) != first_ask(b) and first_ask(a) == first_ask(a)
    here = first_ask(a)
    monkeypatch.setattr(ampo.sweep, "HOST", "another-machine")
    assert first_ask(a) != here  # the same folder path on another machine
    assert ask_seed(folder("c", None), 3) == ask_seed(folder("d", None), 3)


def test_a_reused_pid_is_not_taken_for_the_trials_process(tmp_path):
    """`sweep.md` marks a trial running while its lock's holder lives: the holder is its pid and its
    start time, so another process given the same pid later does not count."""
    import os

    from ampo.sweep import _lock, holder_alive

    lock = tmp_path / "locks" / "000.lock"
    fd = _lock(lock, block=False)
    os.close(fd)
    pid, start = lock.read_text().split()
    assert int(pid) == os.getpid() and holder_alive(lock)
    lock.write_text(f"{pid} {int(start) + 1}")  # this pid, another process's start time
    assert not holder_alive(lock)
    lock.write_text(pid)  # written by an earlier ampo: the pid alone
    assert holder_alive(lock)
    lock.write_text("999999999 1")
    assert not holder_alive(lock)
