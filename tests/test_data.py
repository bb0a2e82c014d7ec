"""Pool files: layouts, validation errors that name file/row/field, atomic writes, TRL export."""

import json
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from ampo.data import (PoolError, PoolRecord, atomic_dir, atomic_path, prompt_text, read_pool, read_prompts,
                       trl_pairs, write_pool)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("name,layout,first_rewards", [
    ("tiny_pool", "ampo", None),
    ("multi_response", "multi_response", None),
    ("ultrafeedback_style", "ultrafeedback", None),
    ("trl_pairs", "trl_pairs", [1.0, 0.0]),
])
def test_published_layouts_are_read(name, layout, first_rewards):
    recs, got = read_pool(EXAMPLES / f"{name}.jsonl")
    assert got == layout
    raw = [json.loads(line) for line in (EXAMPLES / f"{name}.jsonl").read_text().splitlines()]
    assert len(recs) == len(raw)
    for rec in recs:
        assert len(rec.rewards) == len(rec.responses) >= 2
    if first_rewards:
        assert recs[0].rewards == first_rewards
    if layout == "ultrafeedback":
        assert recs[0].responses == [c["response"] for c in raw[0]["completions"]]
        assert recs[0].rewards == [c["overall_score"] for c in raw[0]["completions"]]


def test_chat_prompt_text_is_last_user_message():
    msgs = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "how are you?"}]
    assert prompt_text(msgs) == "how are you?"
    assert prompt_text("plain") == "plain"


@pytest.mark.parametrize("row,fragment", [
    ({"prompt": "p"}, "field 'prompt'"),  # no responses at all -> only a prompts file
    ({"prompt": "p", "responses": []}, "field 'responses': empty response list"),
    ({"prompt": "p", "responses": ["a", 3]}, "field 'responses[1]': must be a string"),
    ({"prompt": "p", "responses": ["a", "b"], "rewards": [1.0]}, "field 'rewards': has 1 entries but there are 2"),
    ({"prompt": "p", "responses": ["a", "b"], "rewards": [1.0, float("nan")]}, "field 'rewards[1]': must be finite"),
    ({"prompt": "p", "responses": ["a", "b"], "rewards": [1.0, "x"]}, "field 'rewards[1]': must be a number"),
    ({"prompt": 5, "responses": ["a"]}, "field 'prompt'"),
    ({"prompt": "p", "responses": ["a", "b"], "embeddings": [[1.0, 2.0]]}, "field 'embeddings'"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, row, fragment):
    good = {"prompt": "ok", "responses": ["x", "y"], "rewards": [0.0, 1.0]}
    path = tmp_path / "pool.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(row, allow_nan=True) + "\n")
    with pytest.raises(PoolError) as e:
        read_pool(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: row 2")
    if fragment != "field 'prompt'" or "responses" in row:
        assert fragment in msg


def test_truncated_json_line(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"prompt": "a", "responses": ["x"]}\n{"prompt": "b", "respo\n')
    with pytest.raises(PoolError, match=r"row 2: not valid JSON"):
        read_pool(path)


def test_require_names_missing_field(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "responses": ["x", "y"]}])
    with pytest.raises(PoolError, match=r"row 1: field 'rewards': missing"):
        read_pool(path, require=("rewards",))


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_roundtrip(tmp_path, suffix):
    recs = [PoolRecord(prompt=[{"role": "user", "content": "hi"}], responses=["a", "b", "c"], rewards=[1.0, 0.0, -1.0],
                       embeddings=np.eye(3, dtype=np.float32), id="x", finished=[True, False, True],
                       n_tokens=[3, 64, 2], selected=[0, 2])]
    path = tmp_path / f"pool{suffix}"
    write_pool(path, recs)
    back, layout = read_pool(path)
    assert layout == "ampo"
    r = back[0]
    assert (r.prompt, r.responses, r.rewards, r.id, r.finished, r.n_tokens, r.selected) == (
        recs[0].prompt, ["a", "b", "c"], [1.0, 0.0, -1.0], "x", [True, False, True], [3, 64, 2], [0, 2])
    np.testing.assert_array_equal(r.embeddings, np.eye(3))


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_previous_file_on_error(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise RuntimeError("boom")
    assert target.read_text() == "old"


def test_trl_pairs_export():
    rec = PoolRecord(prompt="p", responses=["a", "b", "c", "d"], rewards=[0.1, 0.9, -1.0, 0.0], selected=[1, 2, 3])
    pairs = trl_pairs([rec])
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("b", "c"), ("b", "d")]
    assert pairs[0]["score_chosen"] == 0.9 and pairs[0]["score_rejected"] == -1.0


def test_read_prompts(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "x"}, {"prompt": "y"}])
    assert read_prompts(path) == [("a", "x"), ("row2", "y")]
    txt = tmp_path / "p.txt"
    txt.write_text("one\n\ntwo\n")
    assert [p for _, p in read_prompts(txt)] == ["one", "two"]
    dup = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])
    with pytest.raises(PoolError, match="duplicate id 'a'"):
        read_prompts(dup)


def test_parquet_with_mixed_prompt_forms(tmp_path):
    recs = [PoolRecord(prompt="plain", responses=["a"]),
            PoolRecord(prompt=[{"role": "user", "content": "chat"}], responses=["b"])]
    write_pool(tmp_path / "p.parquet", recs)
    back, _ = read_pool(tmp_path / "p.parquet")
    assert [prompt_text(r.prompt) for r in back] == ["plain", "chat"]


def test_atomic_outputs_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_pool(tmp_path / "p.jsonl", [PoolRecord(prompt="p", responses=["a"])])
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "f.txt").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "p.jsonl").stat().st_mode) == 0o644  # mkstemp would give 0600
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755  # mkdtemp would give 0700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "p.jsonl"]


def test_atomic_dir_keeps_previous_folder_on_error(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "w").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "w").write_text("new")
            raise RuntimeError("boom")
    assert (target / "w").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_atomic_dir_replaces_a_folder_whole_even_if_deleting_the_old_one_is_cut_short(tmp_path, monkeypatch):
    import shutil

    target = tmp_path / "ckpt"
    target.mkdir()
    for name in ("a", "b"):
        (target / name).write_text("old")

    def killed_mid_delete(path, ignore_errors=False):  # deleting the old folder dies after one file
        if Path(path).is_dir():
            next(iter(sorted(Path(path).iterdir()))).unlink()
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text("new")
            monkeypatch.setattr(shutil, "rmtree", killed_mid_delete)
    monkeypatch.undo()
    assert sorted(p.name for p in target.iterdir()) == ["a"] and (target / "a").read_text() == "new"


def test_write_under_a_file_names_the_output(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'file' / 'out.jsonl'}: "):
        write_pool(tmp_path / "file" / "out.jsonl", [PoolRecord(prompt="p", responses=["a"])])


def test_duplicate_id_check_is_linear(tmp_path):
    """40,000 prompts once took 39 s (a quadratic duplicate check); linear, it is well under a second."""
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": f"p{i}", "prompt": f"prompt {i}"} for i in range(40_000)])
    t0 = time.perf_counter()
    assert len(read_prompts(path)) == 40_000
    assert time.perf_counter() - t0 < 5


def test_numbered_layout_reads_a0_to_an_and_their_scores(tmp_path):
    """The AMPO authors' `A0..An` / `score_A0..An` columns; a null `Aj` is no response."""
    from ampo.data import PoolError, read_pool

    path = tmp_path / "numbered.jsonl"
    path.write_text('{"prompt_id": "p1", "prompt": "hi", "A0": "a", "A1": null, "A2": "c", '
                    '"score_A0": 1, "score_A1": null, "score_A2": 0.5}\n'
                    '{"prompt_id": "p2", "prompt": "yo", "A0": "x", "A1": "y"}\n')
    pool, layout = read_pool(path)
    assert layout == "numbered"
    assert (pool[0].id, pool[0].responses, pool[0].rewards) == ("p1", ["a", "c"], [1.0, 0.5])
    assert (pool[1].responses, pool[1].rewards) == (["x", "y"], None)
    path.write_text('{"prompt": "hi", "A0": "a", "A1": "b", "score_A0": 1}\n')
    with pytest.raises(PoolError, match=r"row 1: field 'score_A1': missing while other responses have scores"):
        read_pool(path)


def test_a_save_to_disk_folder_reads_like_a_file(tmp_path):
    import datasets

    from ampo.data import PoolError, read_pool

    rows = [{"prompt": "hi", "all_generated_responses": ["a", "b"], "all_reward_scores": [1.0, 0.0]}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows * 2),
                          "test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dict"))
    assert [r.responses for r in read_pool(tmp_path / "single")[0]] == [["a", "b"]]
    assert len(read_pool(tmp_path / "dict")[0]) == 2  # the train split
    (tmp_path / "plain").mkdir()
    with pytest.raises(PoolError, match="not one written by datasets' save_to_disk"):
        read_pool(tmp_path / "plain")


def test_atomic_dir_puts_the_previous_folder_back_when_the_new_one_cannot_take_its_place(tmp_path, monkeypatch):
    import ampo.data.atomic as atomic

    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "w").write_text("old")
    rename = atomic.os.rename

    def refuse_the_new(src, dst):
        if Path(src).name.endswith(".tmp"):
            raise OSError(18, "Invalid cross-device link")
        return rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", refuse_the_new)
    with pytest.raises(OSError):
        with atomic_dir(target) as tmp:
            (tmp / "w").write_text("new")
    assert (target / "w").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["ckpt"]
