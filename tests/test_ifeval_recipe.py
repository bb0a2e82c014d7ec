"""The IFEval recipe's driver (benchmarks/ifeval_recipe.py, issue 28): its pure parts. The recipe
config, the settings taken from the tuned study, the archive layout and the report, with the
fixed-lr study's archived benchmark answers standing in for rounds. Fast: no model loads."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import alignment_ifeval_tuned as tuned  # noqa: E402
import ifeval_recipe as recipe  # noqa: E402

FIXED = tuned.FIXED_ARCHIVE


def test_the_recipe_is_the_plans(tmp_path):
    s = recipe.explicit_settings("dpo best-vs-worst", {"train.learning_rate": 3e-4, "train.beta": 0.1}, "test")
    c = recipe.load_recipe(1, s["overrides"], tmp_path)
    assert c.rounds == 3 and c.data.train_prompts == 128 and c.data.heldout == 32 and c.seed == 1
    assert c.generate.n == 16 and c.generate.max_new_tokens == 128 and c.score.unfinished_reward == 0
    assert c.select.min_margin == 1e-6 and c.select.strategy == "best_worst" and c.train.loss == "dpo"
    assert c.train.learning_rate == 3e-4 and c.train.hparams["beta"] == 0.1 and c.train.reference == "round_start"
    assert c.eval.temperature == 0 and c.eval.benchmark_max_new_tokens == 128
    assert c.eval.benchmarks == []  # measured by the driver, the initial policy once
    assert recipe.load_recipe(1, s["overrides"], tmp_path, rounds=1).rounds == 1  # one round at a time


def test_an_arm_keeps_the_studys_group_size_whatever_the_recipe_file_says(tmp_path):
    """The recipe file carries the main arm's selection (best-vs-worst, k=1); the AMPO variant
    still selects the 7 responses it was tuned with."""
    assert recipe.load_recipe(0, [], tmp_path).select.k == 1
    for arm, k in (("ampo+optselect", 7), ("swepo all", 7), ("simpo best-vs-worst", 1)):
        s = recipe.explicit_settings(arm, {"train.learning_rate": 1e-4, "train.beta": 2.0}, "test")
        assert recipe.load_recipe(0, s["overrides"], tmp_path).select.k == k, arm


def fake_tuned(archive: Path, values: dict) -> None:
    """A tuned archive whose every arm's design is complete, each point scoring values[arm]."""
    for arm in tuned.TUNED_ARMS:
        done = []
        for i, point in enumerate(tuned.lr_points(arm)):
            done.append({"params": point, "value": values.get(arm, 0.1) - i * 1e-3})
        for point in tuned.beta_points(arm, tuned.choose(done, tuned.default_beta(arm))["params"]["train.learning_rate"]):
            done.append({"params": point, "value": 0.0})
        for i, t in enumerate(done):
            folder = archive / "tuning" / tuned.slug(arm) / f"lr-{i:03d}"
            folder.mkdir(parents=True)
            (folder / "trial.json").write_text(json.dumps(t))


def test_the_settings_are_the_tuned_studys_choice(tmp_path):
    with pytest.raises(SystemExit, match="has not chosen settings for"):
        recipe.tuned_settings("main", tmp_path)
    fake_tuned(tmp_path, {"swepo all": 0.5, "ampo+bottomk": 0.4, "ampo+random": 0.3})
    main = recipe.tuned_settings("main", tmp_path)
    assert main["arm"] == "swepo all" and main["params"] == {"train.learning_rate": 3e-6, "train.beta": 0.1}
    assert "select.strategy=all" in main["overrides"] and "train.learning_rate=3e-06" in main["overrides"]
    assert recipe.tuned_settings("ampo", tmp_path)["arm"] == "ampo+bottomk"
    recorded = recipe.record_settings(tmp_path / "a", "main", main)
    assert recipe.settings_of(tmp_path / "a", "main") == recorded
    with pytest.raises(SystemExit, match="records other settings"):
        recipe.record_settings(tmp_path / "a", "main", recipe.tuned_settings("ampo", tmp_path))


def fake_round(folder: Path, r: int, source: Path) -> None:
    """Round r of a run folder, its benchmark files copied from a fixed-lr unit; its held-out
    evaluation as a run writes it (eval.json without an interval, the samples beside it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name in ("ifeval", "ifbench"):
        shutil.copytree(source / name, recipe.round_bench_dir(folder, r, name))
    (folder / f"round-{r}" / "eval.json").write_text(json.dumps({"mean_reward": 0.25, "baseline_mean_reward": 0.36}))
    pq.write_table(pa.table({"rewards": [[0.0], [0.5], [0.5], [0.0]]}), folder / f"round-{r}" / "eval_samples.parquet")
    (folder / f"round-{r}" / "train_log.json").write_text("[]")
    (folder / f"round-{r}" / "checkpoint").mkdir()  # big files stay out of the archive
    (folder / "config.yaml").write_text("seed: 0\neval: {bootstrap: 200}\n")


def fake_training_samples(folder: Path, r: int) -> None:
    """Round r's training samples: two prompts of two answers, one group without a spread (dropped)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = ["a", "b"]
    pq.write_table(pa.table({"id": ids, "prompt": ["p", "q"], "responses": [["x", "y"], ["z", "w"]],
                             "finished": [[True, False], [True, True]], "n_tokens": [[10, 128], [20, 30]],
                             "meta": ["{}", "{}"]}), folder / f"round-{r}" / "pool.parquet")
    pq.write_table(pa.table({"id": ids, "rewards": [[1.0, 0.0], [0.5, 0.5]]}), folder / f"round-{r}" / "rewards.parquet")
    pq.write_table(pa.table({"id": ids, "selected": [[0, 1], []], "short": [False, False]}),
                   folder / f"round-{r}" / "selection.parquet")


def test_rounds_are_archived_in_the_issues_layout_and_reported(tmp_path):
    if not (FIXED / "seed0" / "dpo_best-vs-worst" / "bench" / "ifeval" / "done.json").is_file():
        pytest.skip("the fixed-lr study's archive is not here")
    out, archive = tmp_path / "runs", tmp_path / "archive"
    shutil.copytree(FIXED / "initial", archive / "initial")
    recipe.record_settings(archive, "main", recipe.explicit_settings("dpo best-vs-worst", {"train.learning_rate": 3e-4,
                                                                                            "train.beta": 0.1}, "test"))
    for seed, arm, rounds in ((0, "dpo_best-vs-worst", 3), (1, "swepo_all", 2)):
        folder = recipe.run_dir(out, "main", seed)
        for r in range(rounds):
            fake_round(folder, r, FIXED / f"seed{seed}" / arm / "bench")
            assert recipe.archive_round(folder, archive, "main", seed, r)
    assert not recipe.archive_round(folder, archive, "main", 1, 1)  # already there, the same evaluations
    assert not (archive / "seed1" / "round-1" / "pool.parquet").exists()
    fake_training_samples(folder, 1)  # files that joined the archive's round files after the round was archived
    assert not recipe.archive_round(folder, archive, "main", 1, 1)
    assert (archive / "seed1" / "round-1" / "rewards.parquet").is_file()
    done = recipe.round_bench_dir(folder, 1, "ifeval") / "done.json"
    done.write_text(json.dumps({**json.loads(done.read_text()), "key": "another policy"}))
    with pytest.raises(SystemExit, match="measured on another policy or setting"):
        recipe.archive_round(folder, archive, "main", 1, 1)
    kept = archive / "seed0" / "round-2"
    assert (kept / "ifeval" / "responses.jsonl").is_file() and (kept / "ifbench" / "metrics.json").is_file()
    assert (kept / "eval.json").is_file() and (kept / "eval_samples.parquet").is_file()
    assert not (kept / "checkpoint").exists() and (archive / "seed0" / "config.yaml").is_file()
    assert recipe.archived_rounds(archive, "main", 0) == [0, 1, 2] and recipe.archived_rounds(archive, "main", 2) == []
    assert recipe.complete_seeds(archive, "main", recipe.settings_of(archive, "main")["overrides"]) == [0]
    for unit, source in (("initial", FIXED / "initial" / "ifeval"), ("main:seed0", FIXED / "seed0" / "dpo_best-vs-worst"
                         / "bench" / "ifeval"), ("main:seed1", FIXED / "seed1" / "swepo_all" / "bench" / "ifeval")):
        shutil.copytree(source, recipe.long_dir(archive, unit))  # stand-ins for the 1280-token units
    import alignment_stats as st

    text = recipe.report(archive)
    assert "## At the model card's 1280 new tokens" in text and "| main seed 1 final |" in text
    long = {s: recipe.read_unit(recipe.long_dir(archive, f"main:seed{s}"))["counts"] for s in (0, 1)}
    d = st.paired_difference([long[0], long[1]], [recipe.read_unit(recipe.long_dir(archive, "initial"))["counts"]] * 2)
    assert (f"| main, mean over 2 seeds [prompts] | – | {100 * d['mean']:+.1f} [{100 * d['mean_ci'][0]:+.1f}, "
            f"{100 * d['mean_ci'][1]:+.1f}] | – | – |") in text
    assert "### seed 0" in text and "### seed 1" in text and "| initial |" in text
    assert "| 0.250 [0.000, 0.500] |" in text  # the held-out interval, from the archived samples
    assert "| 0.360 | " in text  # the initial policy's held-out reward, from round 0's evaluation
    short = st.short_answers(recipe.read_unit(archive / "initial" / "ifeval")["answers"])
    initial_row = next(line for line in text.splitlines() if line.startswith("| initial | "))
    assert 0 < short < 1 and initial_row.endswith(f"| {100 * short:.1f} |")
    assert "(seed 1: 2 round(s) archived so far; not in the final comparison)" in text
    # seed 1's round 1 has its training samples: 1 of 2 groups trained, mean reward 0.5, best of group 0.75
    assert "| 1 | 1 / 2 | 0.500 | 0.750 (of 2) | 75.0 | 47.0 |" in text
    assert text.count("Training samples of each round") == 1  # seed 0's rounds have none
    assert "### The final round (after round 2) against the initial policy" in text and "Gaming audit" in text
    assert "**Target not reached**" in text and "3 seeds (1 finished): no" in text
    assert "Per instruction type" in text and "Answers side by side" in text
    # the change apart on the prompts whose initial answer was cut, and on those where it ended
    cut = [k for k, e in recipe.read_unit(archive / "initial" / "ifeval")["ended"].items() if not e]
    final_counts = recipe.read_unit(kept / "ifeval")["counts"]
    initial_counts = recipe.read_unit(archive / "initial" / "ifeval")["counts"]
    before = st.average(np.array([initial_counts[k] for k in cut]))
    after = st.average(np.array([final_counts[k] for k in cut]))
    assert (f"| cut at the budget | {len(cut)} | {100 * before:.1f} | {100 * after:.1f} ({100 * (after - before):+.1f}) |"
            in text)
    assert (archive / "report.md").read_text() == text and (archive / "recipe.png").is_file()
    # the paired difference the report shows is the one computed from the same files
    final = recipe.read_unit(kept / "ifeval")
    initial = recipe.read_unit(archive / "initial" / "ifeval")
    d = st.paired_difference([final["counts"]], [initial["counts"]])
    assert f"{100 * d['per_seed'][0]:+.1f} [" in text
    row = next(line for line in text.splitlines() if line.startswith("| 2 | "))  # seed 0's curve, round 2
    assert row.split(" | ")[2] == f"{100 * d['mean']:+.1f} [{100 * d['mean_ci'][0]:+.1f}, {100 * d['mean_ci'][1]:+.1f}]"


def test_the_verdict_names_each_criterion_of_the_target():
    diffs = {"ifeval": {"mean": 0.061, "per_seed_ci": [(0.01, 0.1), (0.02, 0.1), (0.005, 0.09)]},
             "ifbench": {"mean": 0.0}}
    shares = {"initial": 0.1, "seed 0 final": 0.1, "seed 1 final": 0.05, "seed 2 final": 0.0}
    assert recipe.target_verdict(diffs, shares, 3).startswith("**Target reached**: IFEval +6.1 points")
    diffs["ifeval"]["per_seed_ci"][1] = (-0.01, 0.1)
    text = recipe.target_verdict(diffs, {**shares, "seed 2 final": 0.2}, 3)
    assert text.startswith("**Target not reached**") and "above 0: no" in text and "initial policy: no" in text
    assert "3 seeds (2 finished): no" in recipe.target_verdict(diffs, shares, 2)


def test_the_initial_evaluation_is_shared_only_at_the_same_length_dtype_and_cpu(tmp_path):
    import alignment_ifeval as ai

    source, archive = tmp_path / "tuned", tmp_path / "recipe"
    for a, tokens in ((source, 128), (archive, 128)):
        a.mkdir()
        (a / "sizes.json").write_text(json.dumps({"eval_tokens": tokens, "limit": 0, "generation_dtype": "bfloat16",
                                                  "n": 16}))
    for name in ai.BENCHMARKS:
        (source / "initial" / name).mkdir(parents=True)
        (source / "initial" / name / "done.json").write_text(json.dumps({"machine": "another CPU"}))
    assert not ai.copy_initial(source, archive)  # made on another kind of CPU
    for name in ai.BENCHMARKS:
        (source / "initial" / name / "done.json").write_text(json.dumps({"machine": ai.machine(),
                                                                       "shard": ai.EVAL_SHARD}))
    (archive / "sizes.json").write_text(json.dumps({"eval_tokens": 256, "limit": 0, "generation_dtype": "bfloat16"}))
    assert not ai.copy_initial(source, archive)  # another length
    (archive / "sizes.json").write_text(json.dumps({"eval_tokens": 128, "limit": 0, "generation_dtype": "bfloat16"}))
    (archive / "initial" / "ifeval").mkdir(parents=True)  # what a copy killed half way would have left before
    (archive / "initial" / "ifeval" / "done.json").write_text("{}")
    assert ai.copy_initial(source, archive) and ai.is_finished(archive, "initial")
    assert not (archive / "initial.partial").exists()
    assert all(json.loads((archive / "initial" / n / "done.json").read_text()).get("shard") == ai.EVAL_SHARD
               for n in ai.BENCHMARKS)
    assert not ai.copy_initial(source, archive)  # already there


def test_a_seed_runs_round_by_round_and_is_archived_and_measured_long(tiny_policy, tmp_path, monkeypatch):
    """The driver end to end on a tiny policy: two rounds, each measured on 3 IFEval and IFBench
    prompts and archived in the issue's layout, then the long measurement of the final policy."""
    import alignment_ifeval as ai

    from ampo.cli import main

    prompts = tmp_path / "if_prompts.jsonl"
    assert main(["-q", "make-prompts", "--task", "ifeval", "--output", str(prompts), "--n", "8", "--seed", "1",
                 "--base", str(Path(__file__).parents[1] / "examples" / "tiny_prompts.jsonl")]) == 0
    tiny = [f"model.policy={tiny_policy}", "model.lora=false", f"data.prompts={prompts}", "data.heldout=2",
            "data.train_prompts=2", "generate.n=4", "generate.max_new_tokens=6", "generate.shard_prompts=2",
            "select.k=1", "embed.embedder=policy", "eval.max_new_tokens=6", "eval.bootstrap=50",
            "train.prompts_per_step=2", "train.learning_rate=0.01", "train.save_steps=1", "rounds=2",
            "select.min_margin=null"]  # a random tiny policy's answers often tie
    small = ai.Sizes(seeds=(0,), train_prompts=0, heldout=0, n=0, k=0, gen_tokens=0, eval_tokens=4, limit=3, rounds=0)
    monkeypatch.setattr(recipe, "sizes", lambda: small)
    monkeypatch.setattr(recipe, "LONG", small)
    out, archive = tmp_path / "runs", tmp_path / "archive"
    recipe.run_seed(out, archive, "main", 0, tiny)
    assert recipe.archived_rounds(archive, "main", 0) == [0, 1]
    for r in (0, 1):
        kept = archive / "seed0" / f"round-{r}"
        assert json.loads((kept / "ifeval" / "metrics.json").read_text())["n_prompts"] == 3
        assert len((kept / "ifbench" / "responses.jsonl").read_text().splitlines()) == 3
        assert (kept / "eval.json").is_file() and (kept / "train_log.json").is_file()
    config = (archive / "seed0" / "config.yaml").read_text()
    assert "rounds: 2" in config and "unfinished_reward: 0" in config
    # the in-run benchmarks are off: the driver measures each round once
    manifest = json.loads((out / "seed0" / "manifest.json").read_text())["stages"]
    assert not any(name.endswith("/ifeval") or name.startswith("baseline/") for name in manifest)
    first = json.loads((archive / "seed0" / "round-0" / "ifeval" / "done.json").read_text())
    recipe.run_seed(out, archive, "main", 0, tiny)  # a rerun makes and measures nothing again
    assert json.loads((archive / "seed0" / "round-0" / "ifeval" / "done.json").read_text()) == first
    manifest_before = (out / "seed0" / "manifest.json").read_text()
    with pytest.raises(SystemExit, match="measured on another policy"):  # other settings: refused before training
        recipe.run_seed(out, archive, "main", 0, [*tiny, "train.learning_rate=0.02"])
    assert (out / "seed0" / "manifest.json").read_text() == manifest_before
    recipe.run_long(out, archive, "main:seed0", tiny)
    long_done = archive / "long" / "seed0" / "ifeval" / "done.json"
    assert (archive / "long" / "seed0" / "ifeval" / "responses.jsonl").is_file()
    assert json.loads((archive / "long" / "seed0" / "ifeval" / "policy.json").read_text())["round"] == 1
    shutil.rmtree(out / "long")  # the archived unit is kept: nothing is measured again
    recipe.run_long(out, archive, "main:seed0", tiny)
    assert not (out / "long").exists() and long_done.is_file()
    manifest_file = out / "seed0" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["stages"]["round-1/train"]["key"] = "another policy"
    manifest_file.write_text(json.dumps(manifest))
    long_done.unlink()
    with pytest.raises(SystemExit, match="does not hold the policy"):  # not the policy the archive measured
        recipe.run_long(out, archive, "main:seed0", tiny)
    manifest_file.write_text(manifest_before)
    recipe.run_long(out, archive, "main:seed0", tiny)  # measured again, of the archived final policy
    shutil.move(out / "seed0", tmp_path / "kept")  # the run folder gone: the archived unit is still kept
    recipe.run_long(out, archive, "main:seed0", tiny)
    shutil.move(tmp_path / "kept", out / "seed0")
    other = recipe.load_recipe(0, [*tiny, "generate.temperature=0.7"], recipe.run_dir(out, "ampo", 0))
    recipe.reuse_main_round0(out, 0, other)  # sampled otherwise: nothing to take from the main run
    assert not recipe.run_dir(out, "ampo", 0).exists()
    # the AMPO variant's round 0 samples as the main run's: its pool is copied, not made again
    recipe.run_seed(out, archive, "ampo", 0, [*tiny, "train.loss=ampo"])
    main_stages = json.loads(manifest_before)["stages"]
    ampo_stages = json.loads((out / "ampo" / "seed0" / "manifest.json").read_text())["stages"]
    for name in ("split", "round-0/generate", "round-0/score", "round-0/embed", "baseline"):
        assert ampo_stages[name] == main_stages[name], name  # the same record: copied
    assert ampo_stages["round-0/train"]["key"] != main_stages["round-0/train"]["key"]
    assert recipe.archived_rounds(archive, "ampo", 0) == [0, 1]
    monkeypatch.setattr(recipe, "EXTENDED_ROUNDS", 3)
    recipe.record_settings(archive, "main", {"arm": "tiny", "params": {}, "source": "test", "overrides": tiny})
    with pytest.raises(SystemExit, match="finish that first"):  # the main run of seed 1 has no round yet
        recipe.start_extended(out, archive, 1)
    extended = recipe.extended_settings(archive)
    assert extended["overrides"] == [*tiny, "rounds=3"]
    def stage_records(folder):
        stages = json.loads((folder / "manifest.json").read_text())["stages"]
        return {name: stages[name] for name in ("round-0/train", "round-1/train")}

    done = out / "seed0" / "round-1" / "ifeval" / "done.json"
    record = done.read_text()
    done.write_text(json.dumps({**json.loads(record), "key": "another policy"}))
    with pytest.raises(SystemExit, match="measured on another policy"):  # not what the archive measured
        recipe.start_extended(out, archive, 0)
    done.unlink()
    with pytest.raises(SystemExit, match="does not hold the archived round 1"):
        recipe.start_extended(out, archive, 0)
    done.write_text(record)
    trained = stage_records(out / "seed0")
    recipe.run_seed(out, archive, "extended", 0, extended["overrides"])  # goes on from the main run's round 1
    assert recipe.archived_rounds(archive, "extended", 0) == [0, 1, 2]
    assert recipe.archived_rounds(archive, "main", 0) == [0, 1]
    assert stage_records(out / "extended" / "seed0") == trained  # the main run's rounds, copied, not retrained
    for r in (0, 1):  # nor measured again
        assert (json.loads((archive / "extended" / "seed0" / f"round-{r}" / "ifeval" / "done.json").read_text())
                == json.loads((archive / "seed0" / f"round-{r}" / "ifeval" / "done.json").read_text()))
    shutil.move(out, tmp_path / "elsewhere")  # the run folder lost: archived rounds cannot be continued from
    with pytest.raises(SystemExit, match="does not hold that round"):
        recipe.run_seed(out, archive, "main", 0, tiny)


def test_training_samples_sum_up_a_round_and_skip_what_they_cannot(tmp_path):
    (tmp_path / "round-0").mkdir()
    assert recipe.training_samples(tmp_path / "round-0") is None  # archived before the files joined
    fake_training_samples(tmp_path, 0)
    t = recipe.training_samples(tmp_path / "round-0")
    assert t == {"prompts": 2, "selected": 1, "mean_reward": 0.5, "best_of_group": 0.75, "group_size": 2,
                 "ended": 0.75, "new_tokens": 47.0}
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a"], "rewards": [[1.0, 0.0]]}), tmp_path / "round-0" / "rewards.parquet")
    assert recipe.training_samples(tmp_path / "round-0") is None  # a prompt without rewards
