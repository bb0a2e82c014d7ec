"""`ampo.report.write_report` from explicit inputs: no run folder or Pipeline needed."""

import numpy as np

from ampo.config import load_config
from ampo.data import PoolRecord
from ampo.report import write_report


def test_report_from_explicit_inputs(tmp_path):
    c = load_config(overrides=["rounds=2"])
    evals = [{"round": r, "baseline_mean_reward": 0.1, "baseline_mean_length": 12.0, "n_prompts": 5,
              "mean_reward": 0.2 + r, "win_rate": 0.6, "win_rate_ci": [0.4, 0.8], "mean_length": 11.0,
              "distinct_2": 0.5, "drift": 0.01} for r in range(2)]
    logs = [[{"step": 1, "loss": 0.7}, {"step": 2, "loss": 0.6}], []]
    rng = np.random.default_rng(0)
    pool = [PoolRecord(id=f"p{i}", prompt="q", responses=list("abcd"), rewards=[0.0, 1.0, 0.5, -1.0],
                       embeddings=rng.normal(size=(4, 3)).astype(np.float32), selected=[1, 3, 0]) for i in range(2)]
    path = write_report(tmp_path, c, evals, logs, pool)
    text = path.read_text()
    assert path == tmp_path / "report.md" and text.startswith(f"# ampo run: `{tmp_path}`")
    assert "| 1 | 1.2000 | 0.600 [0.400, 0.800] | 11.0 | 0.500 | 0.010 |" in text
    assert "## Benchmarks" not in text and not (tmp_path / "benchmarks.png").exists()
    assert all((tmp_path / name).stat().st_size > 0 for name in ("rounds.png", "loss.png", "selection_map.png"))
