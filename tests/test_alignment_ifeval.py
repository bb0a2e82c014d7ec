"""The IFEval alignment benchmark's plumbing (benchmarks/alignment_ifeval.py): arms, the cost
estimate, the worker command line, copying a seed's round-0 pool, timings (the report's, which
`--rates-from` reads). The runs themselves are smoke-tested by `make bench-quick`
(`bench_alignment.py --task ifeval --quick`); the report in test_alignment_report.py."""

import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import alignment_ifeval as ai  # noqa: E402
import alignment_report as ar  # noqa: E402
from ampo.selection import SELECTORS  # noqa: E402



def args(**kw):
    base = dict(quick=False, seeds=None, train_prompts=None, n=None, k=None, gen_tokens=None, eval_tokens=None,
                limit=None, rounds=1, out="runs/x", jobs=2, archive=None)
    return Namespace(**{**base, **kw})


def test_every_arm_is_a_valid_config_at_full_and_quick_size():
    for quick in (False, True):
        sizes = ai.sizes_from(args(quick=quick))
        for arm in ai.ARMS:
            c = ai.arm_config(arm, sizes, 0, Path("/tmp/unused"))
            assert c.generate.n == sizes.n and c.train.shared_prefix and c.score.reward.startswith("ifeval")
            assert c.select.k == (1 if SELECTORS[c.select.strategy].one_negative else sizes.k)
    full = ai.sizes_from(args())
    assert (full.n, full.k, full.eval_tokens, full.limit, len(full.seeds)) == (16, 7, 128, 0, 3)


def test_the_swepo_diagnostic_arms_train_on_the_ampo_arms_groups():
    sizes = ai.sizes_from(args())
    for swepo, ampo in (("swepo+random", "ampo+random"), ("swepo+optselect", "ampo+optselect")):
        a, b = (ai.arm_config(arm, sizes, 0, Path("/tmp/unused")) for arm in (swepo, ampo))
        assert a.select == b.select and a.embed == b.embed and a.generate == b.generate
        assert (a.train.loss, b.train.loss) == ("swepo", "ampo")


def test_reward_only_selectors_are_not_run_twice():
    policy_arms = {a for a in ai.ARMS if ai.embedder_of(a) == "policy"}
    assert policy_arms == {"ampo+optselect+policy-emb", "ampo+coreset+policy-emb"}
    assert set(ar.SELECTIONS.values()) <= set(ai.ARMS)


def test_estimate_counts_each_part():
    sizes = ai.Sizes(seeds=(0, 1), train_prompts=10, heldout=3, n=4, k=2, gen_tokens=5, eval_tokens=7, limit=0,
                     rounds=1)
    rates = {name: 1.0 for name in ai.RATES}
    parts = dict(ai.estimate(sizes, ["ampo+random", "dpo best-vs-worst"], jobs=1, rates=rates))
    assert parts["round-0 pools: sampling"] == 2 * 10 * 4 * 5
    assert parts["round-0 pools: policy embeddings"] == 0  # no arm on policy embeddings
    assert parts["per arm: selection, held-out evaluation, loading"] == 2 * 2
    # ampo+random: groups of k+1 = 3; dpo: pairs, and only dpo needs reference log-probs
    assert parts["training (one round, every arm)"] == 2 * 10 * (3 + 2) * 5
    assert parts["reference log-probs"] == 2 * 10 * 2 * 5
    assert parts["benchmarks: each arm's final policy"] == 2 * 2 * 841 * 7
    assert parts["benchmarks: the initial policy (once)"] == 841 * 7


def test_worker_argv_reproduces_the_sizes(monkeypatch):
    import bench_alignment

    a = args(quick=True, seeds=[3, 4], train_prompts=6, limit=2, archive="kept")
    sizes = ai.sizes_from(a)
    argv = ai.worker_argv(a, sizes, ["ampo+random", "dpo sweet-spot"]) + ["--unit", "seed3"]
    monkeypatch.setattr(sys, "argv", ["bench_alignment.py", *argv])
    parsed = bench_alignment.parse_args()
    assert ai.sizes_from(parsed) == sizes and parsed.unit == "seed3" and parsed.archive == "kept"
    assert parsed.arms == ["ampo+random", "dpo sweet-spot"]


def test_seed_round0_copies_the_pool_and_its_manifest_entries(tmp_path):
    src = tmp_path / "src"
    for name in ai.POOL_FILES + ai.EMBEDDER_FILES:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(name)
    stages = {s: {"key": s, "status": "done"} for s in ai.POOL_STAGES + ai.EMBEDDER_STAGES + ("round-0/train",)}
    (src / "manifest.json").write_text(json.dumps({"stages": stages}))
    ai.seed_round0(tmp_path / "a", src, with_embedder=False)
    assert not (tmp_path / "a" / "round-0" / "embeddings.npy").exists()
    assert set(json.loads((tmp_path / "a" / "manifest.json").read_text())["stages"]) == set(ai.POOL_STAGES)
    ai.seed_round0(tmp_path / "b", src, with_embedder=True)
    assert (tmp_path / "b" / "round-0" / "embeddings.npy").read_text() == "round-0/embeddings.npy"
    assert "round-0/train" not in json.loads((tmp_path / "b" / "manifest.json").read_text())["stages"]
    # a copy killed half way leaves only a partial folder, which the next copy replaces
    (src / ai.POOL_FILES[-1]).unlink()
    with pytest.raises(FileNotFoundError):
        ai.seed_round0(tmp_path / "c", src, with_embedder=False)
    assert not (tmp_path / "c").exists() and (tmp_path / "c.partial").is_dir()
    (src / ai.POOL_FILES[-1]).write_text(ai.POOL_FILES[-1])
    ai.seed_round0(tmp_path / "c", src, with_embedder=False)
    assert (tmp_path / "c" / "manifest.json").is_file() and not (tmp_path / "c.partial").exists()


def test_an_evaluation_under_another_key_drops_the_old_record_before_it_runs(tmp_path):
    sizes = ai.Sizes(seeds=(0,), train_prompts=1, heldout=1, n=2, k=1, gen_tokens=1, eval_tokens=8, limit=2, rounds=1)
    out = tmp_path / "ifeval"
    out.mkdir()
    (out / "done.json").write_text(json.dumps({"key": "another policy's"}))
    (out / "metrics.json").write_text("{}")

    def killed():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ai.evaluate("ifeval", killed, "this policy", out, sizes)
    assert not (out / "done.json").exists()  # the old files no longer look like this policy's


def test_timings_count_shared_stages_once(tmp_path):
    sizes = ai.Sizes(seeds=(0,), train_prompts=1, heldout=1, n=2, k=1, gen_tokens=1, eval_tokens=1, limit=1, rounds=1)
    arms = ["ampo+optselect", "ampo+random"]
    for arm, train in zip(arms, (5.0, 7.0)):
        folder = ai.arm_dir(tmp_path, 0, arm)
        folder.mkdir(parents=True)
        stages = {"round-0/generate": {"key": "g", "status": "done", "seconds": 100.0},
                  "round-0/train": {"key": arm, "status": "done", "seconds": train}}
        (folder / "manifest.json").write_text(json.dumps({"stages": stages}))
        (folder / "bench" / "ifeval").mkdir(parents=True)
        (folder / "bench" / "ifeval" / "done.json").write_text(json.dumps({"seconds": 30.0}))
    t = ar.timings(tmp_path, sizes, arms)
    assert t["generate"] == {"count": 1, "total_s": 100.0, "mean_s": 100.0}
    (tmp_path / "results.json").write_text(json.dumps({"sizes": {**sizes.__dict__, "seeds": [0]}, "arms": arms,
                                                       "timings": t}))
    rates = ai.rates_from(tmp_path)
    assert rates["sample_token"] == 100.0 / (1 * 2 * 1)  # 1 prompt x n=2 x 1 token
    assert rates["train_token"] == 12.0 / (1 * 1 * (2 + 2))  # groups of k+1 = 2, two arms
    assert rates["greedy_token"] == 60.0 / (2 * 1 * 1)  # two evaluations of limit=1 prompt, 1 token
    assert t["train"]["count"] == 2 and t["train"]["total_s"] == 12.0
    assert t["benchmark ifeval (arm)"]["count"] == 2


@pytest.mark.parametrize("flag", [["--jobs", "0"], ["--limit", "-1"], ["--n", "0"]])
def test_bad_flags_exit_2(monkeypatch, flag):
    import bench_alignment

    monkeypatch.setattr(sys, "argv", ["bench_alignment.py", "--task", "ifeval", *flag])
    with pytest.raises(SystemExit) as e:
        bench_alignment.parse_args()
    assert e.value.code == 2


def test_units_wait_for_the_pool_and_the_policy_embeddings():
    sizes = ai.sizes_from(args(seeds=[0, 1]))
    arms = ["ampo+random", "ampo+coreset+policy-emb", "ampo+optselect+policy-emb", "dpo sweet-spot"]
    u = ai.units(sizes, arms)
    assert list(u)[-1] == "initial" and u["initial"] == [] and len(u) == 2 * 4 + 1
    first, policy = "seed1:ampo+optselect+policy-emb", "seed1:ampo+coreset+policy-emb"  # ARMS order
    assert u[first] == [] and u[policy] == [first]
    assert u["seed1:ampo+random"] == [first]  # the first MiniLM arm: makes its own embeddings
    assert u["seed1:dpo sweet-spot"] == [first, "seed1:ampo+random"]
    order = list(u)
    assert all(order.index(d) < order.index(x) for x, deps in u.items() for d in deps)


def fake_finished_arm(out, seed, arm, with_pool=True):
    """An arm folder as a finished unit leaves it: manifest, selection, both evaluations (and the pool)."""
    folder = ai.arm_dir(out, seed, arm)
    names = ["round-0/selection.parquet"] + list(ai.POOL_FILES + ai.EMBEDDER_FILES if with_pool else ())
    names += [f"bench/{b}/{f}" for b in ai.BENCHMARKS for f in ai.BENCH_FILES]
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"{arm}:{name}")
    stages = {s: {"key": s, "status": "done"} for s in ai.POOL_STAGES + ai.EMBEDDER_STAGES + ("round-0/train",)}
    (folder / "manifest.json").write_text(json.dumps({"stages": stages}))
    return folder


def test_archive_keeps_finished_units_and_each_seeds_pool_once(tmp_path):
    out, archive = tmp_path / "out", tmp_path / "archive"
    fake_finished_arm(out, 0, "ampo+random")
    fake_finished_arm(out, 0, "dpo sweet-spot")
    unfinished = fake_finished_arm(out, 0, "ampo+coreset")
    (unfinished / "bench" / "ifbench" / "done.json").unlink()
    todo = ai.units(ai.sizes_from(args(seeds=[0])), ["ampo+random", "ampo+coreset", "dpo sweet-spot"])
    assert ai.sync_archive(out, archive, todo) == {"seed0:ampo+random", "seed0:dpo sweet-spot"}
    kept = ai.arm_dir(archive, 0, "dpo sweet-spot")
    assert (kept / "bench" / "ifbench" / "responses.jsonl").read_text() == "dpo sweet-spot:bench/ifbench/responses.jsonl"
    assert (kept / "round-0" / "selection.parquet").is_file() and not (kept / "round-0" / "pool.parquet").exists()
    assert not ai.arm_dir(archive, 0, "ampo+coreset").exists()
    pool = ai.archive_round0(archive, 0, "minilm")  # from the first arm archived, once
    assert (pool / "round-0" / "pool.parquet").read_text() == "ampo+random:round-0/pool.parquet"
    assert set(json.loads((pool / "manifest.json").read_text())["stages"]) == set(ai.POOL_STAGES + ai.EMBEDDER_STAGES)
    assert not list(archive.rglob("*.partial"))


def test_a_new_arm_takes_its_pool_from_the_run_then_from_the_archive(tmp_path):
    out, archive = tmp_path / "out", tmp_path / "archive"
    arms = ["ampo+random", "ampo+coreset+policy-emb", "dpo sweet-spot"]
    assert ai.round0_source(out, archive, 0, "dpo sweet-spot", arms) is None  # nothing yet: the arm makes it
    ai.seed_round0(ai.archive_round0(archive, 0, "minilm"), fake_finished_arm(tmp_path / "old", 0, "ampo+random"), True)
    assert ai.round0_source(out, archive, 0, "dpo sweet-spot", arms) == (ai.archive_round0(archive, 0, "minilm"), True)
    # a policy-embedding arm takes the pool but not MiniLM's embeddings
    assert ai.round0_source(out, archive, 0, "ampo+coreset+policy-emb", arms) == (
        ai.archive_round0(archive, 0, "minilm"), False)
    fake_finished_arm(out, 0, "ampo+random")  # the run's own folder comes first
    assert ai.round0_source(out, archive, 0, "dpo sweet-spot", arms) == (ai.arm_dir(out, 0, "ampo+random"), True)


def test_an_archive_at_other_sizes_or_generated_in_another_dtype_is_refused(tmp_path, monkeypatch):
    import ampo.stage_keys

    ai.check_archive(tmp_path, ai.sizes_from(args()))
    ai.check_archive(tmp_path, ai.sizes_from(args(seeds=[5])))  # other seeds: the same archive
    with pytest.raises(SystemExit, match="other sizes"):
        ai.check_archive(tmp_path, ai.sizes_from(args(n=8)))
    here = json.loads((tmp_path / "sizes.json").read_text())["generation_dtype"]
    monkeypatch.setattr(ampo.stage_keys, "generation_dtype", lambda requested: {"float32": "bfloat16"}.get(here, "float32"))
    with pytest.raises(SystemExit, match="another dtype"):
        ai.check_archive(tmp_path, ai.sizes_from(args()))


def test_units_whose_pool_is_there_need_not_wait(tmp_path):
    out, archive = tmp_path / "out", tmp_path / "archive"
    arms = ["ampo+random", "ampo+coreset+policy-emb", "dpo sweet-spot"]
    assert not ai.has_round0(out, archive, "seed0:dpo sweet-spot", arms) and ai.has_round0(out, archive, "initial", arms)
    ai.seed_round0(ai.archive_round0(archive, 0, "minilm"), fake_finished_arm(tmp_path / "old", 0, "ampo+random"), True)
    assert ai.has_round0(out, archive, "seed0:dpo sweet-spot", arms)
    assert not ai.has_round0(out, archive, "seed0:ampo+coreset+policy-emb", arms)  # its embeddings are not there
    assert not ai.has_round0(out, None, "seed0:dpo sweet-spot", arms)


@pytest.mark.parametrize("arm", list(ai.ARMS))
def test_the_benchmark_makes_the_configs_it_made_before_the_recipe_changed(arm, tmp_path):
    """The ifeval recipe file changed for issue 28; the alignment benchmarks (fixed-lr and tuned)
    pin what they depend on, so their configs (and so their keys and archives) stay the same."""
    import dataclasses

    from ampo.config import load_config

    old = Path(__file__).parent / "data" / "ifeval_recipe_before_issue28.yaml"
    sizes = ai.Sizes(seeds=(0,), train_prompts=64, heldout=32, n=16, k=7, gen_tokens=128, eval_tokens=128, limit=0,
                     rounds=1)
    overrides = [*sizes.overrides(0), *ai.ARMS[arm], f"out={tmp_path}"]
    assert dataclasses.asdict(ai.arm_config(arm, sizes, 0, tmp_path)) == dataclasses.asdict(load_config(old, overrides))


def test_spawn_runs_units_as_processes_and_reports_each_exit(tmp_path, monkeypatch):
    monkeypatch.setattr(ai.time, "sleep", lambda s: None)
    seen = {}
    command = lambda unit: [sys.executable, "-c", f"import sys; print('{unit}'); sys.exit({0 if unit == 'a' else 3})"]
    failed = ai.spawn(["a", "b:c"], 2, command, tmp_path / "logs", lambda unit, code: seen.update({unit: code}))
    assert seen == {"a": 0, "b:c": 3} and failed == ["b:c"]
    assert (tmp_path / "logs" / "a.log").read_text() == "a\n" and (tmp_path / "logs" / "b_c.log").is_file()


def test_spawn_starts_a_unit_after_those_it_waits_for_and_skips_it_when_one_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(ai.time, "sleep", lambda s: None)
    order = tmp_path / "order"
    command = lambda unit: [sys.executable, "-c", f"open({str(order)!r}, 'a').write('{unit} ');"
                                                  f"raise SystemExit({3 if unit == 'bad' else 0})"]
    failed = ai.spawn(["late", "bad", "never", "first"], 2, command, tmp_path / "logs",
                      waits_for=lambda unit: {"late": ["first"], "never": ["bad"]}.get(unit, []))
    assert sorted(failed) == ["bad", "never"]
    assert order.read_text().split() in (["bad", "first", "late"], ["first", "bad", "late"])
    with pytest.raises(ValueError, match="wait for units that are not run"):
        ai.spawn(["a"], 1, command, tmp_path / "logs", waits_for=lambda unit: ["elsewhere"])
