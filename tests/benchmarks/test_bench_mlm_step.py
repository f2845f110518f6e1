"""benchmarks/bench_mlm_step.py (the fused MLM loss's measurement): the per-step peak-memory probe, and one tiny
run of the 50k-vocabulary MLM workload with the fused / plain / tied variants, written as JSON and Markdown."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_mlm_step.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPT.parent))  # the script imports bench_models from its own folder
    try:
        spec = importlib.util.spec_from_file_location("bench_mlm_step", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(SCRIPT.parent))


_PEAK_PROBE = """
import importlib.util, sys, torch
sys.path.insert(0, sys.argv[1])
spec = importlib.util.spec_from_file_location("bench_mlm_step", sys.argv[2])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
bench.fix_mmap_threshold()

def step():
    for _ in range(3):  # 8 MiB three times: freed buffers leave the resident size, the peak is one
        buf = torch.ones(8 * 2**20 // 4)
        assert buf.sum() > 0
        del buf

step()  # first use: torch's lazy set-up (library pages, allocator state) is not the step's memory
peaks = [bench.step_peak_mb(step) for _ in range(2)]  # the second time as the first: nothing kept for reuse
print(*peaks, bench.step_peak_mb(lambda: None))
"""


def test_step_peak_counts_freed_buffers():
    # In a fresh process: the resident size of one that already ran other tests depends on what its
    # allocator kept, which is what the probe must not be confused by, but a test cannot control.
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_PROBE, str(SCRIPT.parent), str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    first, second, idle = (float(x) for x in done.stdout.split()[-3:])
    assert 7 <= first < 15 and 7 <= second < 15  # two live buffers would be 16
    assert idle < 5


def test_tiny_mlm_50k_run_records_time_memory_and_load(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    argv = ["--label", "tiny", "--batch", "2", "--seq-len", "8", "--reps", "1", "--warmup", "0"]
    bench.main([*argv, "--workloads", "mlm_50k", "--mlm-variants", "--memory"])
    run = json.loads((tmp_path / "mlm_step.json").read_text())["tiny"]
    models = {"hyte_fh", "hyte_fh_unfused", "hyte_fh_tied", "euclidean"}
    result = run["workloads"]["mlm_50k"]
    assert set(result["median_ms"]) == models and set(result["peak_mb"]) == models
    assert all(v > 0 for v in result["median_ms"].values()) and all(v > 0 for v in result["peak_mb"].values())
    assert len(run["load_average"]["before"]) == 3
    table = (tmp_path / "mlm_step.md").read_text()
    assert "| mlm_50k | HyTE-FH, plain head + cross-entropy |" in table
    assert "| mlm_50k | Euclidean twin |" in table and "load average (1/5/15 min) before" in table
