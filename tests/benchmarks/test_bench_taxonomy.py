"""benchmarks/bench_taxonomy.py --quick: zero-shot, HyTE-H and the twin trained with the taxonomy recipe for two
steps on the animals fixture, every measurement and comparison written (the numbers mean nothing)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANIMALS = REPO / "tests" / "data" / "fixtures" / "animals.jsonl"


@pytest.mark.slow
def test_quick_mode_measures_every_model_and_comparison(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    script = REPO / "benchmarks" / "bench_taxonomy.py"
    argv = [sys.executable, str(script), "--quick", "--taxonomies", str(ANIMALS), "--out", str(out)]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    res = results["taxonomies"][str(ANIMALS)]
    for name in ("hyte_h", "twin"):
        (run,) = res["trained"][name]
        assert run["broader"] and run["broader_relation"] and run["faq_dev"]
        assert all(0.0 <= x <= 1.0 for x in run["broader"] + run["broader_relation"] + run["faq_dev"])
        assert math.isfinite(run["subsumption_f1"]) and math.isfinite(run["depth_spearman"])
    assert "broader_relation" not in res["zero_shot"]  # cosine: no radius, no relation search
    intervals = res["summary"]["intervals"]
    assert {
        "broader: hyte_h - twin",
        "faq_dev: twin - zero_shot",
        "broader: hyte_h relation - similarity",
    } <= set(intervals)
    assert all(iv["low"] <= iv["high"] and iv["n_seeds"] == 1 for iv in intervals.values())
    report = (out / "report.md").read_text()
    assert "| broader_relation |" in report and "hyte_h - twin" in report
