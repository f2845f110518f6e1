"""benchmarks/bench_ddp_hook.py --blocks=1 end to end: the committed results come from a script that runs, and
it reduces the real tokens' rows (a few hundred of the table's) with far fewer bytes than the dense all-reduce."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_one_block_writes_times_rows_and_bytes(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "benchmarks/bench_ddp_hook.py", "--blocks=1", f"--out={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "ddp_hook.json").read_text())
    assert result["table"] == [30522, 64]
    for mode in ("local", "dense", "sparse"):
        assert result[mode]["steps"] == 10 and 0 < result[mode]["min_ms"] <= result[mode]["median_ms"], mode
    assert 10 < result["rows_reduced_per_step"] < 30522 / 4
    sent = result["bytes_all_reduced_per_step"]
    assert sent["sparse"] < sent["dense"] / 4
    assert "| sparse |" in (tmp_path / "ddp_hook.md").read_text()
