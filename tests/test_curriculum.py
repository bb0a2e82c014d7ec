"""Curry-DPO stages: pair order and schedule against worked numbers computed by hand (docs/pipeline.md), and
`ampo run` with `train.curriculum: pairs` on a tiny policy: stages, moved references, resume, determinism."""

import json
import math

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from ampo.curriculum import pair_order, stage_count, stage_pairs
from ampo.losses import GroupBatch, compute
from helpers import kill_when, run_cli, stage_done, run, tiny_overrides

TOY = [2.0, 1.0, -0.5, -1.5]  # the toy prompt's rewards (docs/losses.md)
B = [0.9, 0.8, 0.1]


def pair_loss(lp, ref, j, beta=0.1):
    """DPO on the pair (slot 0, slot j) of one group."""
    batch = GroupBatch(logps=torch.tensor([[lp[0], lp[j]]], dtype=torch.float64), lengths=torch.ones(1, 2),
                       rewards=torch.tensor([[TOY[0], TOY[j]]]), mask=torch.ones(1, 2, dtype=torch.bool),
                       ref_logps=torch.tensor([[[ref[0], ref[j]]]], dtype=torch.float64))
    return float(compute("dpo", batch, beta=beta)[0])


def test_c1_pairs_go_from_the_largest_reward_gap_to_the_smallest():
    assert pair_order(TOY) == [3, 2, 1]  # gaps 3.5, 2.5, 1.0


def test_c1_stage_losses():
    """Stage 1 trains (0, 3) with toy h = [2, -1, -2, -5]: 0.403186. With the reference moved to
    the policy itself every pair's loss is log 2; later in stage 2, pair (0, 2): 0.554355."""
    h = [2.0, -1.0, -2.0, -5.0]
    assert pair_loss(h, [0.0] * 4, 3) == pytest.approx(0.403186, abs=1e-6)
    lp = [-38.0, -56.0, -63.0, -85.0]
    for j in (1, 2, 3):
        assert pair_loss(lp, lp, j) == pytest.approx(math.log(2), abs=1e-12)
    assert pair_loss(lp, [-39.0, -56.0, -61.0, -85.0], 2) == pytest.approx(0.554355, abs=1e-6)


def test_c2_schedule():
    """A = toy, B = [0.9, 0.8, 0.1]: {A(0,3), B(0,2)}, {A(0,2), B(0,1)}, {A(0,1)}."""
    groups = [TOY, B]
    assert stage_count(groups) == 3
    assert [stage_pairs(groups, t) for t in (1, 2, 3)] == [[(0, 3), (1, 2)], [(0, 2), (1, 1)], [(0, 1)]]
    assert stage_pairs(groups, 4) == []
    with pytest.raises(ValueError, match="from 1"):
        stage_pairs(groups, 0)


def test_order_follows_the_gap_not_the_slot_and_ties_go_to_the_lower_slot():
    assert pair_order([1.0, 0.5, -1.0, 0.5, 0.9]) == [2, 1, 3, 4]
    assert pair_order([0.3, 0.3]) == [1]
    assert pair_order([1.0]) == []


# ---------------------------------------------------------------------------------------------
# `ampo run` with `train.curriculum: pairs` on a tiny policy

PAIRS = ("train.curriculum=pairs", "train.loss=dpo", "train.epochs=2", "train.warmup_ratio=0")
LORA = ("model.lora=true", "model.lora_r=2", "model.lora_targets=[q_proj]")


def stages_of(out):
    return json.loads((out / "manifest.json").read_text())["stages"]


def weights(folder):
    (path,) = [p for p in folder.glob("*.safetensors")]
    return load_file(path)


def test_pairs_train_in_stages_with_the_reference_moved_forward(tiny_policy, tmp_path):
    """Full fine-tune, k = 2: stage 1 trains each prompt's easiest pair against the round's
    references, stage 2 the next pair against the stage-1 policy, so stage 2 starts at loss log 2;
    the round's checkpoint is stage 2's and the manifest records both stages."""
    out = tmp_path / "run"
    run(tiny_policy, out, *PAIRS)
    stages = stages_of(out)
    assert stages["round-0/train"]["stages"] == 2 and stages["round-0/train"]["pairs_per_stage"] == [4, 4]
    assert all(stages[f"round-0/{name}"]["status"] == "done" for name in ("train-s1", "refs-s2", "train-s2"))
    assert "round-0/refs-s1" not in stages  # stage 1 reads the round's references
    rd = out / "round-0"
    pool = pq.read_table(rd / "pool.parquet").to_pylist()
    rewards = pq.read_table(rd / "rewards.parquet").to_pylist()
    selected = [row["selected"] for row in pq.read_table(rd / "selection.parquet").to_pylist()]
    round_refs = [row["ref_logps"][0] for row in pq.read_table(rd / "ref_logps.parquet").to_pylist()]
    stage_refs = [row["ref_logps"][0] for row in pq.read_table(rd / "stage-2" / "ref_logps.parquet").to_pylist()]
    for rec, rw, sel, before, after in zip(pool, rewards, selected, round_refs, stage_refs):
        order = pair_order([rw["rewards"][i] for i in sel])
        assert len(after) == 2 and after != pytest.approx([before[0], before[order[1]]], abs=1e-3)  # moved on
    history = json.loads((rd / "train_log.json").read_text())
    steps = [h for h in history if "loss" in h]
    assert [h["step"] for h in steps] == list(range(1, len(steps) + 1))  # counted on across stages
    first_of_2 = next(h for h in steps if h["stage"] == 2)
    assert first_of_2["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert any(abs(h["loss"] - math.log(2)) > 0.05 for h in steps if h["stage"] == 1)  # stage 1 did learn
    final, last = weights(rd / "checkpoint"), weights(rd / "stage-2" / "checkpoint")
    assert all(torch.equal(final[name], last[name]) for name in final)


@pytest.mark.parametrize("point", ["after-stage-1", "mid-stage-2"])
def test_pairs_resume_at_the_stage_they_were_in_and_give_the_same_adapter(tiny_policy, tmp_path, point):
    """LoRA (stage 2 trains stage 1's adapter further): `kill -9` once stage 1 is done, or inside
    stage 2's training; the rerun skips stage 1 and ends with the uninterrupted run's adapter."""
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    extra = (*PAIRS, *LORA, "train.epochs=4")
    reference = run(tiny_policy, ref_out, *extra)[0]
    proc = run_cli(tiny_overrides(tiny_policy, out, *extra))
    stage_2 = out / "round-0" / "stage-2" / "train"
    ready = {"after-stage-1": stage_done(out, "round-0/train-s1"),
             "mid-stage-2": lambda: any(stage_2.glob("checkpoint-*/trainer_state.json"))}
    kill_when(proc, ready[point])
    assert stages_of(out)["round-0/train"]["status"] == "running"
    stage_1 = stages_of(out)["round-0/train-s1"]
    resumed = run(tiny_policy, out, *extra)[0]
    assert stages_of(out)["round-0/train-s1"] == stage_1  # not redone
    assert (out / "round-0" / "checkpoint" / "adapter_config.json").exists()
    got, want = weights(out / "round-0" / "checkpoint"), weights(ref_out / "round-0" / "checkpoint")
    assert got.keys() == want.keys() and all(torch.allclose(got[k], want[k], atol=1e-6) for k in got)
    assert any(bool(want[k].abs().sum()) for k in want if "lora_B" in k)  # the adapter did train
    for key in ("mean_reward", "win_rate", "mean_length"):
        assert resumed[key] == pytest.approx(reference[key], abs=1e-6), key
