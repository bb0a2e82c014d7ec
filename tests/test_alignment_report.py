"""The IFEval alignment benchmark's report (benchmarks/alignment_report.py) on hand-made finished
evaluations: what it names as missing, its tables, the answers' loops and drift, the answers side by
side. Its statistics are tested in test_alignment_stats.py."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import alignment_ifeval as ai  # noqa: E402
import alignment_report as ar  # noqa: E402
import alignment_stats  # noqa: E402


def test_report_runs_nothing_and_names_what_is_missing(tmp_path, monkeypatch):
    import bench_alignment

    out = tmp_path / "bench"
    monkeypatch.setattr(sys, "argv", ["bench_alignment.py", "--task", "ifeval", "--report", "--seeds", "0",
                                      "--arms", "ampo+random", "--out", str(out)])
    with pytest.raises(SystemExit, match="nothing to report"):
        bench_alignment.main()
    out.mkdir()
    bench_alignment.main()
    text = (out / "alignment.md").read_text()
    assert "seed0/ampo+random/ifeval" in text and "seed0/ampo+random/ifbench" in text
    assert not (out / "seed0").exists()  # nothing was run


def finished_evaluation(folder: Path, score: float, answers: dict | None, followed: tuple = (1,)) -> None:
    """A finished benchmark evaluation of two prompts (1 and 2, one instruction each, the prompts in
    `followed` following it) as `evaluate` leaves it."""
    folder.mkdir(parents=True)
    metrics = {**{f: score for f in alignment_stats.FIGURES}, "mean_new_tokens": 84.0, "finished_rate": 0.5}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    results = [{"key": k, "instruction_id_list": ["x"], "follow_instruction_list_strict": [k in followed],
                "follow_instruction_list_loose": [k in followed]} for k in (1, 2)]
    (folder / "results.jsonl").write_text("\n".join(json.dumps(r) for r in results) + "\n")
    if answers is not None:
        rows = [{"key": k, "prompt": f"prompt {k}", "response": v} for k, v in answers.items()]
        (folder / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "done.json").write_text(json.dumps({"seconds": 1.0}))


def report(out: Path, monkeypatch, arms=("ampo+random",)) -> str:
    """`bench_alignment.py --task ifeval --report` on seed 0's `arms`; alignment.md's text."""
    import bench_alignment

    monkeypatch.setattr(sys, "argv", ["bench_alignment.py", "--task", "ifeval", "--report", "--seeds", "0",
                                      "--arms", *arms, "--out", str(out)])
    bench_alignment.main()
    return (out / "alignment.md").read_text()


def test_report_shows_a_finished_evaluation_with_its_answer_lengths(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    finished_evaluation(out / "initial" / "ifeval", 0.25, None)
    text = report(out, monkeypatch)
    assert "| initial policy | 25.0 | 25.0 | 25.0 | 25.0 | 25.0 | – |" in text
    assert "| initial policy | 84.0 | 50.0 | – | 100 | 100 | – |" in text  # no answers kept: no short share


def test_report_gives_each_arms_loops_and_drift_from_the_initial_answers(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    # prompt 1 is followed, prompt 2 not; the initial policy loops on prompt 2, the arm does not
    finished_evaluation(out / "initial" / "ifeval", 0.25, {1: "same answer", 2: "a b a b a"})
    finished_evaluation(ai.arm_dir(out, 0, "ampo+random") / "bench" / "ifeval", 0.5, {1: "same answer", 2: "a b zz"},
                        followed=(1, 2))
    text = report(out, monkeypatch)
    assert "| initial policy | 84.0 | 50.0 | 100.0 | 100 | 100 | – |" in text  # both answers under 20 words
    assert "| ampo+random | 84.0 (1 seed) | 50.0 (1 seed) | 100.0 (1 seed) | 50.0 (1 seed) | 72.2 (1 seed) | 1 |" in text
    assert "| initial policy | 50.0 | 0.0 | 100.0 | – |" in text  # loops: share, average on them, on the rest
    assert "| ampo+random | 0.0 (1 seed) | – | 100.0 (1 seed) | 1 |" in text
    # the gaming audit: the answers that pass, of them looping and filler (all are under 5 words here)
    assert "| initial policy | 1 | 0 | 1 | 100.0 | – |" in text
    assert "| ampo+random | 2.0 (1 seed) | 0.0 (1 seed) | 2.0 (1 seed) | 100.0 (1 seed) | 1 |" in text
    arm = json.loads((out / "results.json").read_text())["benchmarks"]["ifeval"]["arms"]["ampo+random"][0]
    assert arm["identical_to_initial"] == 0.5 and arm["prefix_kept"] == pytest.approx((1 + 4 / 9) / 2)
    assert arm["seed"] == 0 and "| ampo+random | 50.0 (+25.0) |" in text  # the per-seed table
    assert "| ampo+random | 1 | 50.0 (1 seed) |  |  | – |  |  |" in text  # the summary: no baseline but itself
    assert (out / "alignment.png").stat().st_size > 0
    # answers side by side: only prompt 2, where the number of instructions followed differs
    assert "Prompt 2: prompt 2" in text and "Prompt 1:" not in text
    assert "| initial policy | 0 of 1 | a b a b a |" in text and "| ampo+random | 1 of 1 | a b zz |" in text


def test_report_gives_the_contrasts_of_the_arms_it_has(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    for arm, followed in (("ampo+random", (1,)), ("swepo+random", (1, 2)), ("swepo all", ()), ("ampo+bottomk", (1, 2))):
        finished_evaluation(ai.arm_dir(out, 0, arm) / "bench" / "ifeval", 0.5, None, followed=followed)
    text = report(out, monkeypatch, arms=("ampo+random", "swepo+random", "swepo all", "swepo+optselect", "ampo+bottomk"))
    # prompt-level and instruction-level strict coincide (one instruction per prompt): 1 of 2 vs 2 of 2
    loss = "| swepo+random − ampo+random | the loss: SWEPO against AMPO on the same selected responses | +50.0 ["
    assert loss in text
    assert "| swepo all − swepo+random | the set: " in text and "| -100.0 [-100.0, -100.0] | 0/1/0 |" in text
    assert "swepo+optselect − swepo+random" not in text  # not finished: no row
    contrasts = json.loads((out / "results.json").read_text())["benchmarks"]["ifeval"]["contrasts"]
    assert [(c["arm"], c["against"], c["seeds"]) for c in contrasts] == [
        ("swepo+random", "ampo+random", [0]), ("swepo all", "swepo+random", [0]), ("ampo+bottomk", "ampo+random", [0])]
    assert "| ampo+bottomk − ampo+random | active selection under AMPO: bottom-k's k negatives against random ones | +50.0 [" in text


def test_the_pool_is_read_from_an_arm_or_from_the_archives_copy(tmp_path):
    arms = ["ampo+random", "ampo+coreset+policy-emb"]
    assert ar.round0_folder(tmp_path, 0, arms) is None
    archived = ai.archive_round0(tmp_path, 0, "minilm")
    for name in ai.POOL_FILES + ("round-0/embeddings.npy",):
        (archived / name).parent.mkdir(parents=True, exist_ok=True)
        (archived / name).write_text(name)
    assert ar.round0_folder(tmp_path, 0, arms) == archived  # reporting from an archive
    assert ar.round0_folder(tmp_path, 0, arms, "policy") is None
    arm = ai.arm_dir(tmp_path, 0, "ampo+coreset+policy-emb")
    (arm / "round-0").mkdir(parents=True)
    (arm / "round-0" / "embeddings.npy").write_text("policy")
    assert ar.round0_folder(tmp_path, 0, arms, "policy") == arm


def test_grpo_answers_are_shown_beside_the_initial_policys(tmp_path, monkeypatch):
    """The tuned study's policy-gradient baseline is among the arms read side by side."""
    out = tmp_path / "bench"
    finished_evaluation(out / "initial" / "ifeval", 0.25, {1: "same answer", 2: "a b a b a"})
    finished_evaluation(ai.arm_dir(out, 0, "grpo all") / "bench" / "ifeval", 0.5, {1: "same answer", 2: "a b zz"},
                        followed=(1, 2))
    ar.analyse(out, ai.Sizes(seeds=(0,), train_prompts=2, heldout=2, n=4, k=1, gen_tokens=8, eval_tokens=8, limit=2, rounds=1),
               ["grpo all"], n_boot=50)
    text = (out / "alignment.md").read_text()
    assert "| initial policy | 0 of 1 | a b a b a |" in text and "| grpo all | 1 of 1 | a b zz |" in text
