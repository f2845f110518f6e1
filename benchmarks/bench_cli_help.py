"""Wall-clock time of ``lorentz-rag --help`` and every ``lorentz-rag X --help``, each in a fresh interpreter.

The parser is built without importing torch, transformers, sentence-transformers or mteb (the commands
import their libraries only when they run), so help answers in a fraction of a second. Each command runs
``--repeats`` times; the median is reported, with the heavy modules found imported (none expected).

Writes ``benchmarks/results/cli_help.json`` and ``cli_help.md``. Run: ``.venv/bin/python
benchmarks/bench_cli_help.py`` (``--src DIR`` times another checkout's ``src`` folder, e.g. an older commit
extracted with ``git archive``, for a before/after comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = [
    [],
    ["info"],
    ["train"],
    ["data", "to-mds"],
    ["eval", "beir"],
    ["eval", "mteb"],
    ["eval", "hierarchy"],
    ["eval", "rag"],
    ["index", "build"],
    ["search"],
    ["quickstart"],
]
_PROBE = """
import sys
from lorentz_rag.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("HEAVY:", ",".join(m for m in ("torch", "transformers", "sentence_transformers", "mteb") if m in sys.modules))
"""


def time_command(argv: list[str], repeats: int, src: str | None) -> dict[str, object]:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    times, heavy = [], ""
    for _ in range(repeats):
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, *argv, "--help"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        ).stdout
        times.append(time.perf_counter() - start)
        heavy = out.rsplit("HEAVY:", 1)[-1].strip()
    return {
        "command": " ".join(["lorentz_rag", *argv, "--help"]),
        "median_s": statistics.median(times),
        "heavy": heavy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--src", default=None, help="a src folder to time instead of the installed lorentz_rag"
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    rows = [time_command(argv, args.repeats, args.src) for argv in COMMANDS]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "src": args.src,
        "rows": rows,
    }
    (out / "cli_help.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| command | median s | heavy modules imported |", "|---|---|---|"]
    lines += [f"| `{r['command']}` | {r['median_s']:.2f} | {r['heavy'] or 'none'} |" for r in rows]
    (out / "cli_help.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
