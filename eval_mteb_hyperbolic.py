"""Seed-compatible MTEB script: ``python eval_mteb_hyperbolic.py --model PATH --output_dir DIR
--scoring {geodesic,lorentz_inner} [--hybrid] [--benchmark "MTEB(eng, v2)"] [--tasks T1,T2] [--beir DIR]``.

A thin wrapper over :mod:`lorentz_rag.eval.mteb_adapter` (also ``lorentz-rag eval mteb``).
"""

from __future__ import annotations

import sys

from lorentz_rag.eval.mteb_adapter import main

if __name__ == "__main__":
    sys.exit(main())
