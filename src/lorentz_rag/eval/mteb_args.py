"""The command-line options of ``lorentz-rag eval mteb`` and ``eval_mteb_hyperbolic.py``, apart from
:mod:`lorentz_rag.eval.mteb_adapter` so that building the parser (``lorentz-rag --help``) imports neither torch nor
mteb."""

from __future__ import annotations

import argparse

__all__ = ["DEFAULT_BENCHMARK", "SCORINGS", "add_mteb_arguments"]

DEFAULT_BENCHMARK = "MTEB(eng, v2)"
SCORINGS = ("geodesic", "lorentz_inner")


def add_mteb_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``eval_mteb_hyperbolic.py`` and ``lorentz-rag eval mteb`` (the names of the paper's research code's script)."""
    parser.add_argument("--model", required=True, help="a folder lorentz_rag.load_model accepts")
    parser.add_argument("--output_dir", "--output-dir", dest="output_dir", default="results/mteb")
    parser.add_argument(
        "--scoring",
        choices=SCORINGS,
        default=None,
        help="hyperbolic ranking: geodesic (-d(q, x)) or lorentz_inner (<q, x>_L + 1/c); default: the "
        "model's saved similarity. Euclidean models use their saved similarity (cosine or euclidean).",
    )
    parser.add_argument(
        "--hybrid",
        action="store_true",
        help="accepted for command lines written for the paper's research code; the model type (HyTE-H or not) is read "
        "from the saved config, so this flag changes nothing",
    )
    parser.add_argument(
        "--benchmark", default=None, help=f'an mteb benchmark name (e.g. "{DEFAULT_BENCHMARK}")'
    )
    parser.add_argument("--tasks", default=None, help="comma-separated mteb task names (T1,T2)")
    parser.add_argument(
        "--beir",
        action="append",
        default=[],
        metavar="DIR",
        help="a local BEIR folder to run as an mteb retrieval task (repeatable; works offline)",
    )
    parser.add_argument("--split", default="test", help="qrels split of the --beir folders")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=32)
