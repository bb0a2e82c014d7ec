"""Finished runs: damaged files are detected, not trusted (every stage output's size and sha256 is
recorded in the manifest when its stage finishes; a rerun that finds an output emptied, truncated,
altered or missing says which file and redoes that stage alone, giving the same bytes as before);
outputs get the usual permissions; a read-only finished run is reused without writing; `ampo
report RUN` writes into RUN."""

import json
import logging
import os
import re
import shutil
import stat
import subprocess

import pytest

from ampo.cli import main
from ampo.runner import Manifest
from helpers import run

CONFIG = ("model.lora=true", "model.lora_r=2", "model.lora_targets=[q_proj]", "train.loss=dpo")


@pytest.fixture(scope="module")
def finished_run(tiny_policy, tmp_path_factory):  # noqa: F811
    """A finished one-round run (LoRA, a reference-based loss so that every stage runs)."""
    out = tmp_path_factory.mktemp("integrity") / "run"
    old = os.umask(0o022)
    try:
        run(tiny_policy, out, *CONFIG)
    finally:
        os.umask(old)
    return out


def _empty(path):
    path.write_bytes(b"")


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_last_byte(path):  # same size: only the hash can tell
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _delete(path):
    path.unlink()


CASES = [  # (file, stage that must be redone, damage)
    ("split.json", "split", _empty),
    ("baseline/samples.parquet", "baseline", _truncate),
    ("baseline/summary.json", "baseline", _flip_last_byte),
    ("round-0/pool.parquet", "round-0/generate", _empty),
    ("round-0/rewards.parquet", "round-0/score", _truncate),
    ("round-0/embeddings.npy", "round-0/embed", _flip_last_byte),
    ("round-0/selection.parquet", "round-0/select", _empty),
    ("round-0/ref_logps.parquet", "round-0/refs", _truncate),
    ("round-0/checkpoint/adapter_model.safetensors", "round-0/train", _truncate),
    ("round-0/checkpoint/adapter_config.json", "round-0/train", _delete),
    ("round-0/train_log.json", "round-0/train", _empty),
    ("round-0/eval.json", "round-0/evaluate", _empty),
    ("round-0/eval_samples.parquet", "round-0/evaluate", _flip_last_byte),
    ("report.md", "report", _truncate),
    ("selection_map.png", "report", _delete),
]
NOT_REPRODUCIBLE = {"round-0/train_log.json"}  # holds wall-clock timings; checked for its steps instead


@pytest.mark.parametrize("rel,stage,damage", CASES, ids=[f"{c[0]}-{c[2].__name__[1:]}" for c in CASES])
def test_damaged_output_is_detected_and_redone(finished_run, tiny_policy, tmp_path, caplog, rel, stage,  # noqa: F811
                                               damage):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    damage(out / rel)
    caplog.set_level(logging.INFO, logger="ampo")
    run(tiny_policy, out, *CONFIG)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"[{stage}] {out / rel} " in w and "redoing the stage" in w for w in warnings), warnings
    redone = [m.group(1) for r in caplog.records if (m := re.match(r"\[(.+)\] running", r.getMessage()))]
    assert redone == [stage]  # the stage alone: its outputs come back the same, so nothing downstream changes
    if rel in NOT_REPRODUCIBLE:
        steps = lambda p: [h["step"] for h in json.loads(p.read_text()) if "loss" in h]  # noqa: E731
        assert steps(out / rel) == steps(finished_run / rel)
    elif rel == "report.md":  # its title names the run folder
        assert (out / rel).read_text() == (finished_run / rel).read_text().replace(str(finished_run), str(out))
    else:
        assert (out / rel).read_bytes() == (finished_run / rel).read_bytes()
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages[stage]["outputs"][rel]["size"] == (out / rel).stat().st_size


def test_manifest_records_every_output(finished_run):
    stages = json.loads((finished_run / "manifest.json").read_text())["stages"]
    recorded = {rel for s in stages.values() for rel in s["outputs"]}
    assert {rel for rel, _, _ in CASES} <= recorded
    for rel in recorded:
        entry = next(s["outputs"][rel] for s in stages.values() if rel in s["outputs"])
        assert entry["size"] == (finished_run / rel).stat().st_size and len(entry["sha256"]) == 64


def test_outputs_get_the_usual_permissions(finished_run):
    """Made under umask 022: files 0644, folders 0755 (not mkstemp's 0600 / mkdtemp's 0700)."""
    for path in finished_run.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def _snapshot(folder):
    """Each file's identity and content stamp: an atomic rewrite changes the inode."""
    return {p: (s.st_ino, s.st_size, s.st_mtime_ns) for p in folder.rglob("*") if (s := p.stat())}


def test_report_writes_into_the_run_folder_it_is_given(finished_run, tmp_path, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(finished_run, moved)  # its config.yaml still names the original folder as `out`
    before = _snapshot(finished_run)
    assert main(["-q", "report", str(moved)]) == 0
    assert capsys.readouterr().out.strip() == str(moved / "report.md")
    assert (moved / "report.md").read_text().startswith(f"# ampo run: `{moved}`")
    assert _snapshot(finished_run) == before  # the other run's report is left alone


def _make_read_only(folder) -> bool:
    """chmod a-w, and for root (whom modes do not stop) the immutable flag; False if writes still work."""
    subprocess.run(["chmod", "-R", "a-w", str(folder)], check=True)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-R", "+i", str(folder)], capture_output=True)
    try:
        (folder / "probe").write_text("x")
    except OSError:
        return True
    return False


def _make_writable(folder) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-R", "-i", str(folder)], capture_output=True)
    subprocess.run(["chmod", "-R", "u+w", str(folder)], check=True)


@pytest.fixture
def read_only_run(finished_run, tiny_policy, tmp_path):  # noqa: F811
    """A copy of the finished run, made in place (its config names it), then made read-only."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    run(tiny_policy, out, *CONFIG)  # nothing to do but record the new place in config.yaml
    (out / "report.md").unlink()
    if not _make_read_only(out):
        _make_writable(out)
        pytest.skip("cannot make a folder read-only here")
    yield out
    _make_writable(out)


def test_read_only_finished_run_resumes_without_writing(read_only_run, capsys, caplog):
    before = _snapshot(read_only_run)
    assert main(["-q", "run", str(read_only_run / "config.yaml")]) == 0
    assert "after round 0: reward" in capsys.readouterr().out
    assert _snapshot(read_only_run) == before
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"[report] {read_only_run / 'report.md'} is missing: redoing the stage", warnings[1]]
    assert warnings[1].startswith(f"the report was not written: cannot write {read_only_run}/") and "\n" not in warnings[1]
    assert main(["-q", "report", str(read_only_run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ampo: error: cannot write {read_only_run}/"), err


@pytest.mark.parametrize("content", [b"", b'{"stages": ', b"[]", b'{"stages": {"split": "done"}}'])
def test_damaged_manifest_counts_as_empty(tmp_path, caplog, content):
    (tmp_path / "manifest.json").write_bytes(content)
    manifest = Manifest(tmp_path / "manifest.json", write=False)
    assert manifest.data["stages"] == {} and not manifest.done("split", "any")
    assert f"{tmp_path / 'manifest.json'} is damaged: redoing every stage" in caplog.text
