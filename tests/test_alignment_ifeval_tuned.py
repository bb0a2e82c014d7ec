"""The tuned IFEval study's driver (benchmarks/alignment_ifeval_tuned.py): its pure parts. The grid
(as PLAN.md fixes it), the selection rule, the sweep command, the archived pool's keys against a
trial's, and archiving a finished trial. Fast: no model loads."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import alignment_ifeval_tuned as tuned  # noqa: E402

from ampo.config import dump_config, load_config  # noqa: E402


def test_the_grid_is_the_plans():
    assert tuned.LEARNING_RATES == (3e-6, 3e-5, 1e-4, 3e-4)  # the plan's five, less 1e-5 (PLAN.md: the trim)
    assert set(tuned.LEARNING_RATES) < set(tuned.LEARNING_RATES_PLANNED)
    betas = {arm: tuned.grid(arm).get("train.beta") for arm in tuned.TUNED_ARMS}
    assert betas["ampo+random"] == betas["ampo+optselect"] == betas["ampo+bottomk"] == [3.0, 10.0]
    assert betas["swepo all"] == betas["swepo+random"] == betas["swepo+optselect"] == [0.03, 0.1]
    assert betas["dpo best-vs-worst"] == betas["dpo sweet-spot"] == [0.03, 0.1]
    assert betas["simpo best-vs-worst"] == [2.0, 10.0] and betas["grpo all"] is None
    assert len(tuned.TUNED_ARMS) == 10 and tuned.n_trials() == 9 * 5 + 4  # the coordinate design (second trim)
    points = tuned.grid_points("dpo best-vs-worst")
    assert len(points) == len({tuple(p.items()) for p in points}) == 8
    assert {"train.learning_rate": 3e-4, "train.beta": 0.1} in points
    for arm in tuned.TUNED_ARMS:  # each beta set holds the loss's default
        if tuned.BETAS[tuned.loss_of(arm)]:
            assert tuned.DEFAULT_BETA[tuned.loss_of(arm)] in tuned.grid(arm)["train.beta"]
    assert "grpo all" in tuned.plan_table() and "49 trials" in tuned.plan_table()


def test_the_coordinate_design_runs_the_rates_at_the_default_beta_then_the_other_beta_at_the_chosen_rate():
    arm, done = "ampo+random", []
    assert tuned.next_sweep_points(arm, done) == ("lr", [{"train.learning_rate": lr, "train.beta": 10.0}
                                                        for lr in tuned.LEARNING_RATES])
    done += [trial(3e-6, 0.30, 10.0), trial(3e-5, 0.35, 10.0), trial(1e-4, 0.33, 10.0), trial(3e-4, 0.20, 3.0)]
    assert tuned.next_sweep_points(arm, done)[0] == "lr"  # a point outside stage 1 does not count
    assert tuned.choose_design(arm, done) is None
    done.append(trial(3e-4, 0.31, 10.0))
    assert tuned.next_sweep_points(arm, done) == ("beta", [{"train.learning_rate": 3e-5, "train.beta": 3.0}])
    assert len(tuned.design_points(arm, done)) == 5 and tuned.choose_design(arm, done) is None
    done.append(trial(3e-5, 0.353, 3.0))
    assert tuned.next_sweep_points(arm, done) is None
    assert tuned.choose_design(arm, done)["params"] == {"train.learning_rate": 3e-5, "train.beta": 10.0}  # the tie
    done[-1] = trial(3e-5, 0.40, 3.0)
    assert tuned.choose_design(arm, done)["params"] == {"train.learning_rate": 3e-5, "train.beta": 3.0}
    grpo = [trial(lr, 0.3) for lr in tuned.LEARNING_RATES]
    assert tuned.next_sweep_points("grpo all", grpo) is None and tuned.n_design("grpo all") == 4


@pytest.mark.parametrize("arm", tuned.TUNED_ARMS)
def test_every_grid_point_is_a_valid_config(arm, tmp_path):
    for params in tuned.grid_points(arm):
        c = tuned.final_config(arm, 1, params, tmp_path / "x", tmp_path / "store")
        assert c.train.learning_rate == params["train.learning_rate"]
        assert c.train.hparams.get("beta") == params.get("train.beta")
        assert (c.model.lora_r, c.model.lora_alpha, c.model.lora_dropout) == (16, 32, 0.0)
        assert c.eval.temperature == 0 and c.eval.samples_per_prompt == 1 and c.eval.benchmarks == []
        assert c.generate.n == 16 and c.rounds == 1 and c.seed == 1
    grpo = tuned.final_config("grpo all", 0, tuned.grid_points("grpo all")[0], tmp_path / "x", tmp_path / "s")
    assert grpo.select.strategy == "all" and grpo.select.min_margin == 1e-6 and grpo.train.loss == "grpo"


def trial(lr, value, beta=None):
    return {"params": {"train.learning_rate": lr, **({"train.beta": beta} if beta is not None else {})},
            "value": value}


def test_the_highest_metric_wins_and_ties_go_to_the_lower_rate_then_the_default_beta():
    assert tuned.choose([]) is None and tuned.choose([{"params": {}, "value": None}]) is None
    picked = tuned.choose([trial(3e-6, 0.40), trial(1e-4, 0.50), trial(3e-4, 0.45)])
    assert picked["params"]["train.learning_rate"] == 1e-4
    # within 0.005 of the best: the lowest rate, even when its metric is a little lower
    assert tuned.choose([trial(3e-5, 0.496), trial(1e-4, 0.500)])["params"]["train.learning_rate"] == 3e-5
    assert tuned.choose([trial(3e-5, 0.494), trial(1e-4, 0.500)])["params"]["train.learning_rate"] == 1e-4
    # the same rate within the tie: the loss's default beta
    picked = tuned.choose([trial(1e-4, 0.500, beta=3.0), trial(1e-4, 0.499, beta=10.0)], default_beta=10.0)
    assert picked["params"]["train.beta"] == 10.0
    picked = tuned.choose([trial(1e-4, 0.5, 3.0), trial(1e-4, 0.4, 10.0)], default_beta=10.0)
    assert picked["params"]["train.beta"] == 3.0


def test_the_sweep_command_sweeps_the_grid_and_fixes_the_rest(tmp_path):
    cmd = tuned.sweep_command("ampo+random", tmp_path, "lr", tuned.lr_points("ampo+random"))
    grids = [cmd[i + 1] for i, x in enumerate(cmd) if x == "--grid"]
    assert grids == ["train.learning_rate=3e-06,3e-05,0.0001,0.0003", "train.beta=10"]
    assert f"store={tmp_path / 'store'}" in cmd and "eval.temperature=0" in cmd and "select.strategy=random" in cmd
    assert cmd[cmd.index("--out") + 1] == str(tmp_path / "sweeps" / "ampo+random-lr")
    assert not any(x.startswith("train.learning_rate=") for x in cmd if x not in grids)
    cmd = tuned.sweep_command("ampo+random", tmp_path, "beta", tuned.beta_points("ampo+random", 1e-4))
    assert [cmd[i + 1] for i, x in enumerate(cmd) if x == "--grid"] == ["train.learning_rate=0.0001", "train.beta=3"]
    assert cmd[cmd.index("--out") + 1] == str(tmp_path / "sweeps" / "ampo+random-beta")
    grpo = tuned.sweep_command("grpo all", tmp_path, "lr", tuned.lr_points("grpo all"))
    assert "--grid" not in " ".join(grpo).split("train.learning_rate=")[1]


def test_the_archived_seed0_pool_has_the_keys_a_tuned_trial_computes(tmp_path):
    """So the trials take seed 0's pool from the store instead of generating it again."""
    source = tuned.ai.archive_round0(tuned.FIXED_ARCHIVE, 0, "minilm")
    if not (source / "manifest.json").is_file():
        pytest.skip("the fixed-lr study's archive is not here")
    recorded = json.loads((source / "manifest.json").read_text())["stages"]
    for arm in ("ampo+random", "grpo all", "dpo sweet-spot"):
        keys = tuned.trial_keys(arm, tmp_path / "store")
        for stage in ("split", "round-0/generate", "round-0/score", "round-0/embed"):
            assert keys[stage] == recorded[stage]["key"], (arm, stage)
        assert keys["baseline"] != recorded["baseline"]["key"]  # greedy held-out evaluation: made once, anew


def fake_trial(folder: Path, lr: float, beta: float, value: float) -> Path:
    c = load_config(None, ["train.loss=dpo", f"train.learning_rate={lr}", f"train.hparams.beta={beta}", "rounds=1",
                           f"out={folder}"])
    (folder / "round-0").mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(dump_config(c))
    (folder / "manifest.json").write_text(json.dumps({"stages": {}}))
    (folder / "round-0" / "eval.json").write_text(json.dumps({"mean_reward": value, "mean_reward_ci": [0.1, 0.9],
                                                               "baseline_mean_reward": 0.363}))
    (folder / "round-0" / "train_log.json").write_text("[]")
    (folder / "round-0" / "checkpoint").mkdir()  # big files stay out of the archive
    return folder


def test_a_finished_trial_is_archived_once_with_its_metric_and_params(tmp_path, monkeypatch):
    out, archive = tmp_path / "runs", tmp_path / "archive"
    trials = tuned.sweep_dir(out, "dpo best-vs-worst", "lr") / "trials"
    fake_trial(trials / "000", 3e-5, 0.1, 0.42)
    fake_trial(trials / "001", 3e-4, 0.03, 0.45)
    (trials / "002" / "round-0").mkdir(parents=True)  # still running: not archived
    assert tuned.sync_tuning(out, archive, ["dpo best-vs-worst"]) == 1  # design points done: 001 is outside it
    kept = archive / "tuning" / "dpo_best-vs-worst"
    assert sorted(p.name for p in kept.iterdir()) == ["lr-000", "lr-001"]
    assert sorted(str(p.relative_to(kept / "lr-000")) for p in (kept / "lr-000").rglob("*") if p.is_file()) == [
        "config.yaml", "manifest.json", "round-0/eval.json", "round-0/train_log.json", "trial.json"]
    records = tuned.archived_trials(archive, "dpo best-vs-worst")
    assert records[0]["params"] == {"train.learning_rate": 3e-5, "train.beta": 0.1}
    assert records[0]["value"] == 0.42 and records[0]["ci"] == [0.1, 0.9] and records[0]["loss"] == "dpo"
    # no choice before the design is in; the curve shows what is there, points outside it marked
    assert tuned.chosen(archive, "dpo best-vs-worst") is None
    table = tuned.curve_table(records, "dpo best-vs-worst")
    assert "| 3e-05 | – | 0.420 [0.100, 0.900] |" in table and "★" not in table
    assert "| 0.0003 | 0.450 [0.100, 0.900] † |" in table
    # the design complete (two rates here): the choice and the star; the higher point outside the
    # design (a trial of the full grid) is never chosen
    monkeypatch.setattr(tuned, "LEARNING_RATES", (3e-5, 3e-4))
    fake_trial(trials / "002", 3e-4, 0.1, 0.20)
    assert tuned.sync_tuning(out, archive, ["dpo best-vs-worst"]) == 2 and tuned.chosen(archive, "dpo best-vs-worst") is None
    # stage 2's point, found in the full grid's folder (as dpo's were): it counts
    fake_trial(tuned.sweep_dir(out, "dpo best-vs-worst", "grid") / "trials" / "000", 3e-5, 0.03, 0.30)
    assert tuned.sync_tuning(out, archive, ["dpo best-vs-worst"]) == 3
    assert "000" in {p.name for p in kept.iterdir()}
    assert tuned.chosen(archive, "dpo best-vs-worst")["params"] == {"train.learning_rate": 3e-5, "train.beta": 0.1}
    (archive / "heldout_noise.json").write_text(json.dumps({"fp32": {"mean_reward": 0.5},
                                                            "weights draw 1": {"mean_reward": 0.30},
                                                            "weights draw 2": {"mean_reward": 0.34}}))
    text = tuned.report(archive, ["dpo best-vs-worst"])
    assert "**0.420 [0.100, 0.900]** ★" in text
    assert "| dpo best-vs-worst | 3e-05 | 0.1 | 0.420 [0.100, 0.900] | no | lowest |" in text  # of the patched grid
    assert "initial policy's greedy answers score 0.363" in text
    assert "scores 0.320 on average over 2 draws (range 0.300 to 0.340)" in text  # fp32 is not a draw
    defaults = tuned.defaults_text(archive)
    assert "| dpo | dpo best-vs-worst | 3e-05 | 0.420 |" in defaults and "| grpo | grpo all | not chosen yet |" in defaults
    assert (archive / "tuning.md").is_file()


def rows(flags_by_prompt, instructions=None):
    return [{"key": i, "instruction_id_list": (instructions or {}).get(i, ["x"] * len(f)),
             "follow_instruction_list_strict": f} for i, f in enumerate(flags_by_prompt)]


def test_the_seed_resampling_interval_holds_the_prompt_one_and_widens_with_the_seed_spread():
    st = tuned.ai_stats()
    base = [[i % 2 == 1] for i in range(60)]
    better = [[True] if i % 4 == 0 else f for i, f in enumerate(base)]  # half the failures fixed
    a, b = st.prompt_counts(rows(better)), st.prompt_counts(rows(base))
    d = st.paired_difference([a, a, a], [b, b, b], n_boot=400)
    both = st.seed_and_prompt_interval([a, a, a], [b, b, b], n_boot=400)
    assert both[0] > 0 and abs(both[0] - d["mean_ci"][0]) < 0.02  # identical seeds: no seed spread to add
    worse = st.prompt_counts(rows([[False]] * 60))
    spread = st.seed_and_prompt_interval([a, a, worse], [b, b, b], n_boot=400)
    assert spread[1] - spread[0] > d["mean_ci"][1] - d["mean_ci"][0]
    with pytest.raises(ValueError):
        st.seed_and_prompt_interval([a], [b, b])


def test_leaving_out_an_instruction_drops_the_prompts_that_carry_it():
    st = tuned.ai_stats()
    r = rows([[True], [False, True], [False]], {0: ["a"], 1: ["punctuation:no_comma", "b"], 2: ["c"]})
    assert [x["key"] for x in st.leave_out_instruction(r, "punctuation:no_comma")] == [0, 2]
    assert st.leave_out_instruction(r, "nothing") == r


@pytest.mark.parametrize("arm", ["ampo+random", "grpo all"])
def test_a_final_seed0_run_has_its_tuned_trials_keys(arm, tmp_path):
    """So seed 0's final run takes every stage, training included, from the sweep's store."""
    from ampo.cli import RECIPES
    from ampo.dry_run import stage_keys
    from ampo.stage_keys import RunKeys
    from ampo.sweep_space import base_data, trial_config

    store = tmp_path / "store"
    base = base_data(load_config(RECIPES["ifeval"], tuned.base_overrides(arm, 0, store)))
    for point in tuned.grid_points(arm):
        swept = {("train.hparams.beta" if k == "train.beta" else k): v for k, v in point.items()}
        trial = trial_config(base, swept, str(tmp_path / "trial"), str(store))
        final = tuned.final_config(arm, 0, point, tmp_path / "final", store)
        assert dict(stage_keys(RunKeys(trial))) == dict(stage_keys(RunKeys(final)))


def test_the_tuned_averages_beside_the_fixed_lr_ones():
    def results(arm, values):
        return {"benchmarks": {b: {"arms": {arm: [{"avg_prompt_inst_strict_acc": v} for v in values]}}
                               for b in ("ifeval", "ifbench")}}

    fixed, tuned_results = results("ampo+random", [0.20, 0.19]), results("ampo+random", [0.22])
    choices = {"ampo+random": {"params": {"train.learning_rate": 3e-5, "train.beta": 3.0}, "value": 0.5}}
    table = tuned.beside_fixed(fixed, tuned_results, choices)
    row = next(line for line in table.splitlines() if line.startswith("| ampo+random"))
    assert row.startswith("| ampo+random | learning_rate 3e-05, beta 3 | 19.5 ± 0.7 (2) | 22.0 (1 seed) |")
    assert "| grpo all | not tuned yet | – | – |" in table


def test_the_final_phase_archives_its_units_and_reports_them(tmp_path, monkeypatch):
    """The final phase's plumbing, with each unit's run replaced by copying a fixed-lr unit's files
    (real benchmark outputs): the chosen settings reach the unit, the archive holds the units, and
    --report writes tuning.md beside alignment.md."""
    import shutil

    fixed = tuned.FIXED_ARCHIVE
    if not (fixed / "seed0" / "dpo_best-vs-worst" / "bench" / "ifeval" / "done.json").is_file():
        pytest.skip("the fixed-lr study's archive is not here")
    out, archive = tmp_path / "runs", tmp_path / "archive"
    monkeypatch.setattr(tuned, "LEARNING_RATES", (3e-5,))
    monkeypatch.setattr(tuned, "sizes", lambda: tuned.ai.Sizes(seeds=(0,), train_prompts=64, heldout=32, n=16, k=7,
                                                                gen_tokens=128, eval_tokens=128, limit=0, rounds=1))
    arms = ["dpo best-vs-worst", "ampo+random"]
    for arm in arms:  # a finished grid: beta 0.03 wins for dpo, 10 (the default, tied) for ampo
        for i, point in enumerate(tuned.grid_points(arm)):
            folder = archive / "tuning" / tuned.slug(arm) / f"{i:03d}"
            folder.mkdir(parents=True)
            value = 0.5 if point.get("train.beta") in (0.03, 3.0, 10.0) else 0.4
            (folder / "trial.json").write_text(json.dumps({"params": point, "value": value, "ci": None}))
    got = {}

    def fake_unit(out_, archive_, seed, arm, params):
        got[arm] = params
        shutil.copytree(fixed / f"seed{seed}" / tuned.slug(arm), tuned.ai.arm_dir(out_ / "final", seed, arm))

    monkeypatch.setattr(tuned, "run_final_unit", fake_unit)
    monkeypatch.setattr(tuned.ai, "run_initial", lambda o, z: shutil.copytree(fixed / "initial", o / "initial"))
    tuned.final(out, archive, arms, jobs=1)
    assert got == {"dpo best-vs-worst": {"train.learning_rate": 3e-5, "train.beta": 0.03},
                   "ampo+random": {"train.learning_rate": 3e-5, "train.beta": 10.0}}
    for unit in ("initial", "seed0:dpo best-vs-worst", "seed0:ampo+random"):
        assert tuned.ai.is_finished(archive, unit)
    text = tuned.report(archive, arms)
    assert "## Beside the fixed-lr study" in text and "| dpo best-vs-worst | learning_rate 3e-05, beta 0.03 |" in text
    md = (archive / "alignment.md").read_text()
    assert "over seeds and prompts" in md and "punctuation:no_comma" in md


class FakeSweeps:
    """Stand-ins for the sweep processes of `tuned.tune`: each poll of a running process finishes
    (archives) the first point of its stage that no trial has yet, a value that makes 3e-5 the
    chosen rate; it exits once its stage has none left."""

    def __init__(self, archive: Path, failing: float | None = None):
        self.archive, self.commands, self.clock = archive, [], 0.0
        self.failing = failing  # a learning rate whose trial failed first: never archived; the arm's own
        # sweep then runs the other points slowly (one every 4 polls) while a helper finds nothing to
        # take (the failed trial is not retried, the others are taken) and exits at once

    def popen(self, cmd, **kw):
        self.commands.append(cmd)
        fake, points = self, self.points(cmd)
        helper = "sweep-worker" in cmd

        class Proc:
            returncode, polls = None, 0

            def poll(self):
                trials = tuned.archived_trials(fake.archive, fake.arm)
                left = [p for p in points if tuned.find(trials, p) is None
                        and p["train.learning_rate"] != fake.failing]
                self.polls += 1
                if fake.failing is not None:
                    if helper or not left:
                        self.returncode = 0 if helper else 1
                        return self.returncode
                    if self.polls % 4:
                        return None
                if not left:
                    self.returncode = 0
                    return 0
                folder = fake.archive / "tuning" / tuned.slug(fake.arm) / f"{len(trials):03d}"
                folder.mkdir(parents=True)
                value = 0.4 if left[0]["train.learning_rate"] == 3e-5 else 0.3
                (folder / "trial.json").write_text(json.dumps({"params": left[0], "value": value}))
                return None
        return Proc()

    def points(self, cmd) -> list[dict]:
        folder = Path(cmd[cmd.index("--out") + 1] if "--out" in cmd else cmd[-1])
        stage = "beta" if folder.name.endswith("-beta") else "lr"
        return tuned.next_sweep_points(self.arm, tuned.archived_trials(self.archive, self.arm))[1] \
            if stage == "beta" else tuned.lr_points(self.arm)

    def time(self):
        self.clock += 100.0
        return self.clock

    def install(self, monkeypatch) -> None:
        """`tuned.tune` with these processes, this clock, and no store or archive work."""
        monkeypatch.setattr(tuned.subprocess, "Popen", self.popen)
        monkeypatch.setattr(tuned.time, "time", self.time)
        monkeypatch.setattr(tuned.time, "sleep", lambda s: None)
        monkeypatch.setattr(tuned, "mem_available_gb", lambda: 20.0)
        monkeypatch.setattr(tuned, "seed_store", lambda store, source: {})
        monkeypatch.setattr(tuned.ai, "check_archive", lambda archive, sizes: None)
        monkeypatch.setattr(tuned.ai, "archive_round0", lambda *a: None)
        monkeypatch.setattr(tuned, "sync_tuning", lambda out, archive, arms: len(list(archive.rglob("trial.json"))))


def test_tune_moves_each_arm_through_its_stages_and_lets_a_free_slot_join_the_last_sweep(tmp_path, monkeypatch):
    out, archive = tmp_path / "out", tmp_path / "archive"
    fake = FakeSweeps(archive)
    fake.arm = "dpo best-vs-worst"
    fake.install(monkeypatch)
    tuned.tune(out, archive, [fake.arm], jobs=2)
    kinds = [("worker" if "sweep-worker" in c else "sweep", Path(c[-1] if "sweep-worker" in c else
                                                                  c[c.index("--out") + 1]).name) for c in fake.commands]
    # stage 1 (four rates) by its sweep and a helper that joined it, stage 2 (one beta) alone
    assert kinds == [("sweep", "dpo_best-vs-worst-lr"), ("worker", "dpo_best-vs-worst-lr"),
                     ("sweep", "dpo_best-vs-worst-beta")]
    chosen = tuned.chosen(archive, fake.arm)
    assert chosen["params"]["train.learning_rate"] == 3e-5 and tuned.n_done(archive, fake.arm) == 5


def test_a_sweep_with_a_failed_point_gets_one_helper_not_one_every_few_minutes(tmp_path, monkeypatch):
    out, archive = tmp_path / "out", tmp_path / "archive"
    fake = FakeSweeps(archive, failing=3e-4)
    fake.arm = "grpo all"
    fake.install(monkeypatch)
    tuned.tune(out, archive, [fake.arm], jobs=2)
    assert sum("sweep-worker" in c for c in fake.commands) == 1 and tuned.n_done(archive, fake.arm) == 3


def test_the_lora_default_rates_are_the_studys_choices():
    """`ampo.losses.rates.LORA` carries the rate the archived study chose for each studied loss's arm
    (PLAN.md, "defaults from evidence"), its metric in the source, and the studied loss nearest in
    form's rate for the others."""
    from ampo.losses.rates import LORA, NEAREST

    for loss, arm in tuned.DEFAULT_ARMS.items():
        c = tuned.chosen(tuned.ARCHIVE, arm)
        assert c is not None, arm
        assert LORA[loss].value == c["params"]["train.learning_rate"], loss
        assert f"{arm} " in LORA[loss].source and f"{c['value']:.3f}" in LORA[loss].source, loss
    nearest = {"ipo": "dpo", "mmpo": "dpo", "mrpo": "dpo", "infonca": "dpo", "nca": "dpo", "lipo": "dpo",
               "gpo": "dpo", "refa": "ampo", "pro": "simpo", "tripo": "simpo"}
    assert set(nearest) | set(tuned.DEFAULT_ARMS) == set(LORA) and nearest == NEAREST
    for loss, studied in nearest.items():
        assert LORA[loss].value == LORA[studied].value and LORA[studied].source in LORA[loss].source, loss
