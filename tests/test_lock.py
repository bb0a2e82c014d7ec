"""One run per folder: a second `ampo run` on a folder in use is refused with one line (exit 2)
and the first finishes unharmed; a lock left by a killed process blocks nothing."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ampo.runner import RunInUseError, RunLock
from helpers import ROOT, tiny_overrides

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _ampo_run(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "ampo.cli", "-q", "run", *args], env=ENV, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(ready, proc, timeout=120):
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, f"process ended early: {proc.communicate()[1][-2000:]}"
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.01)


def test_second_run_on_the_same_folder_is_refused(tiny_policy, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    args = tiny_overrides(tiny_policy, out, "generate.max_new_tokens=32")
    first = _ampo_run(args)
    _wait_for(lambda: (out / "manifest.json").exists(), first)  # the first run holds the folder
    second = _ampo_run(args)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2
    assert err.strip() == (f"ampo: error: run folder {out} is in use by another ampo process (pid {first.pid}); "
                           "wait for it to end or choose another 'out'")
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages and all(s["status"] == "done" for s in stages.values())


def test_a_second_ampo_train_is_refused_before_the_training_stack_loads(tmp_path):
    """`ampo train` takes its output folder's lock before it imports the Trainer (and PEFT), so a
    second one on a folder in use stops at once, having loaded neither (issue 29)."""
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from ampo.runner import RunLock; "
                               "RunLock.hold(Path(sys.argv[1])); print('locked', flush=True); sys.stdin.read()",
         str(out)], env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        probe = ("import sys; from ampo.cli import main; code = main(sys.argv[1:]); "
                 "print(code, sorted(m for m in ('transformers.trainer', 'peft', 'ampo.pooltrain') if m in sys.modules))")
        done = subprocess.run([sys.executable, "-c", probe, "-q", "train", "--input",
                               str(ROOT / "examples" / "trl_pairs.jsonl"), "--output", str(out)],
                              env=ENV, capture_output=True, text=True, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert done.stdout == "2 []\n", done.stderr[-2000:]
    *info, error = done.stderr.splitlines()  # info: the config's note on the default learning rate
    assert error == (f"ampo: error: output folder {out} is in use by another ampo process (pid {holder.pid}); "
                     "wait for it to end or choose another --output")
    assert all("train.learning_rate is not set" in line for line in info), info
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # the second one wrote nothing


def test_a_killed_holder_leaves_no_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from ampo.runner import RunLock; "
                               "RunLock(Path(sys.argv[1])); print('locked', flush=True); time.sleep(120)",
         str(tmp_path)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUseError, match=f"pid {holder.pid}"):
            RunLock(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / ".lock").exists()  # the file stays; the lock went with the process
    RunLock(tmp_path).release()


def test_lock_is_released_when_a_pipeline_closes(tmp_path):
    first = RunLock(tmp_path)
    with pytest.raises(RunInUseError):
        RunLock(tmp_path)  # another handle, even in the same process, is refused
    first.release()
    RunLock(tmp_path).release()


def test_a_runner_that_fails_to_open_its_folder_does_not_keep_it_locked(tmp_path):
    from ampo.runner import Runner

    (tmp_path / "run" / "config.yaml").mkdir(parents=True)  # not a file: writing the config fails
    with pytest.raises(OSError):
        Runner(tmp_path / "run", config_text="seed: 0\n")
    RunLock(tmp_path / "run").release()  # free for the next process
