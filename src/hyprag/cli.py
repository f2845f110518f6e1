"""The ``hyprag`` command line: argument parsing only.

Every command calls a library function that tests can call too. Subcommand groups are registered by the
``_add_*`` functions below, one per area (train, data, eval, index, quickstart).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hyprag import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyprag",
        description="Train and evaluate hyperbolic (Lorentz-model) text-embedding retrievers.",
    )
    parser.add_argument("--version", action="version", version=f"hyprag {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_info_command(sub)
    _add_train_command(sub)
    _add_data_commands(sub)
    _add_eval_commands(sub)
    _add_index_commands(sub)
    _add_quickstart_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


# --- info -------------------------------------------------------------------------------------------


def _add_info_command(sub) -> None:
    p = sub.add_parser("info", help="print the version and a numerical self-check of the geometry core")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from hyprag.geometry.selfcheck import geometry_report

    print(f"hyprag {__version__}")
    print(geometry_report())
    return 0


# --- train ------------------------------------------------------------------------------------------


def _add_train_command(sub) -> None:
    """``hyprag train --config=... [--section.key=value ...]`` (owned by the training module)."""
    # The dotted overrides are open-ended and validated against the config schema (with "did you mean"),
    # so argparse only collects the raw tokens: prefix_chars="+" stops it from interpreting "--x.y=z".
    p = sub.add_parser(
        "train",
        help="train a model: --config=PATH [--section.key=value ...] [--deepspeed_config=PATH]",
        prefix_chars="+",
        add_help=False,
    )
    p.add_argument("train_argv", nargs=argparse.REMAINDER)

    def run(args: argparse.Namespace) -> int:
        from hyprag.training.trainer import main as train_main

        return train_main(args.train_argv)

    p.set_defaults(func=run)


# --- data -------------------------------------------------------------------------------------------


def _add_data_commands(sub) -> None:
    """``hyprag data to-mds --input FILE_OR_DIR --out DIR [--kind contrastive|mlm]``."""
    data = sub.add_parser("data", help="convert training data")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    p = data_sub.add_parser(
        "to-mds", help="write JSONL / Hugging Face rows as a MosaicML Streaming (MDS) folder, validated"
    )
    p.add_argument("--input", required=True, help="a .jsonl[.gz] file, a folder of them, or a HF dataset")
    p.add_argument("--out", required=True, help="a new (or empty) folder for the MDS shards")
    p.add_argument("--kind", choices=["contrastive", "mlm"], default="contrastive", help="row kind")
    p.add_argument("--split", default="train", help="split of a Hugging Face dataset (default: train)")
    p.add_argument("--skip-malformed", action="store_true", help="skip and count malformed rows")
    p.add_argument("--compression", default="zstd", help="MDS shard compression, or 'none'")

    def run(args: argparse.Namespace) -> int:
        from hyprag.data.mds import convert_to_mds

        report = convert_to_mds(
            args.input,
            args.out,
            args.kind,
            split=args.split,
            skip_malformed=args.skip_malformed,
            compression=None if args.compression == "none" else args.compression,
        )
        print(f"wrote {report.rows} {args.kind} rows to {report.out} ({report.stats.summary()})")
        return 0

    p.set_defaults(func=run)


# --- eval -------------------------------------------------------------------------------------------


def _add_eval_commands(sub) -> None:
    """``hyprag eval beir|mteb|hierarchy|rag``."""


# --- index / search ---------------------------------------------------------------------------------


def _add_index_commands(sub) -> None:
    """``hyprag index build`` and ``hyprag search``."""


# --- quickstart -------------------------------------------------------------------------------------


def _add_quickstart_command(sub) -> None:
    """``hyprag quickstart --out DIR [--seed N] [--steps N] [--fast]``."""
    p = sub.add_parser(
        "quickstart",
        help="train HyTE-H, its Euclidean twin and a tiny HyTE-FH on the bundled data and compare them (CPU)",
        description="Train HyTE-H and its Euclidean twin (same pairs, steps, batch, seed) and a tiny HyTE-FH "
        "(MLM then contrastive) on the bundled data; evaluate them and zero-shot all-MiniLM-L6-v2 on "
        "data/eval/faq-dev and the WordNet hierarchy probe; write results.json, report.md, plots and models.",
    )
    p.add_argument("--out", default="runs/quickstart", help="output folder (default: runs/quickstart)")
    p.add_argument("--seed", type=int, default=42, help="seed of data sampling, initialisation and order")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="contrastive steps of HyTE-H and the twin (default 300); the HyTE-FH stages scale with it",
    )
    p.add_argument("--fast", action="store_true", help="a tiny smoke run (< 1 minute; numbers mean nothing)")

    def run(args: argparse.Namespace) -> int:
        from hyprag.quickstart import main_from_args

        return main_from_args(args)

    p.set_defaults(func=run)


if __name__ == "__main__":
    sys.exit(main())
