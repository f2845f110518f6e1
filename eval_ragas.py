"""Seed-compatible entry point: ``python eval_ragas.py --model_path PATH --dataset covidqa ...``.

The same command is ``lorentz-rag eval rag ...``; see ``python eval_ragas.py --help``.
"""

from __future__ import annotations

import sys

from lorentz_rag.eval.rag.command import main

if __name__ == "__main__":
    sys.exit(main())
