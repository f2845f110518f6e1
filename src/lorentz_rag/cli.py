"""The ``lorentz_rag`` command line: argument parsing only.

Every command calls a library function that tests can call too. Subcommand groups are registered by the
``_add_*`` functions below, one per area (train, data, eval, index, quickstart).

The modules imported at the top hold only argument definitions and the config schema (no torch), so
``lorentz-rag --help`` and ``lorentz-rag train --help`` answer at once. The module that does a command's work
(and imports torch) is named as ``"module:function"`` and imported by :func:`_command` when the command
runs: that is the one place the CLI imports lazily.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from lorentz_rag._version import __version__
from lorentz_rag.errors import run_entry_point
from lorentz_rag.eval.mteb_args import add_mteb_arguments
from lorentz_rag.eval.rag.command import DESCRIPTION as RAG_DESCRIPTION
from lorentz_rag.eval.rag.command import add_rag_arguments, run_from_args
from lorentz_rag.store_specs import STORE_SPECS
from lorentz_rag.training.config import parse_command_line


def _command(target: str) -> Callable[..., Any]:
    """The function ``"package.module:function"``, imported now (a command's work, with its heavy imports)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose long options accept both spellings, ``--top-k`` and ``--top_k``.

    Subcommand parsers inherit the class (``add_subparsers`` uses the parent's type), so every command
    follows the same convention; the help shows both spellings.
    """

    def add_argument(self, *names: str, **kwargs):  # type: ignore[override]
        spelled = list(names)
        for name in names:
            if not name.startswith("--") or "." in name:
                continue
            for other in (name[:2] + name[2:].replace("_", "-"), name[:2] + name[2:].replace("-", "_")):
                if other not in spelled and other not in self._option_string_actions:
                    spelled.append(other)
        return super().add_argument(*spelled, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lorentz-rag",
        description="Train and evaluate hyperbolic (Lorentz-model) text-embedding retrievers.",
    )
    parser.add_argument("--version", action="version", version=f"lorentz-rag {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_info_command(sub)
    _add_train_command(sub)
    _add_data_commands(sub)
    _add_taxonomy_commands(sub)
    _add_eval_commands(sub)
    _add_index_commands(sub)
    _add_quickstart_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``lorentz-rag ...``: user errors end in one ``error:`` line and exit status 2 (``--debug``: traceback)."""
    return run_entry_point(_main, argv)


def _main(argv: list[str]) -> int:
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
    print(f"lorentz_rag {__version__}")
    print(_command("lorentz_rag.geometry.selfcheck:geometry_report")())
    return 0


# --- train ------------------------------------------------------------------------------------------


def _add_train_command(sub) -> None:
    """``lorentz-rag train --config=... [--section.key=value ...]`` (owned by the training module)."""
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
        if {"-h", "--help"} & set(args.train_argv):
            # The config schema alone lists the keys; the trainer (and torch) is not imported for help.
            parse_command_line(["--help"])
        return _command("lorentz_rag.training.trainer:main")(args.train_argv)

    p.set_defaults(func=run)


# --- data -------------------------------------------------------------------------------------------


def _add_data_commands(sub) -> None:
    """``lorentz-rag data to-mds --input FILE_OR_DIR --out DIR [--kind contrastive|mlm]``."""
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
        report = _command("lorentz_rag.data.convert:convert_to_mds")(
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


# --- taxonomy ---------------------------------------------------------------------------------------


def _add_taxonomy_commands(sub) -> None:
    """``lorentz-rag taxonomy build T --out DIR``: the split and every set derived from a taxonomy."""
    tax = sub.add_parser("taxonomy", help="split a taxonomy and write its training and evaluation sets")
    tax_sub = tax.add_subparsers(dest="taxonomy_command", metavar="TAXONOMY_COMMAND", required=True)
    p = tax_sub.add_parser(
        "build",
        help="split T (.jsonl[.gz], .obo, SKOS, or bundled: wordnet, icd10cm) and write the train taxonomy, "
        "edges, pairs and BEIR / probe / subsumption sets on its held-out concepts",
    )
    p.add_argument("taxonomy", metavar="T", help="taxonomy file, or a bundled name (wordnet, icd10cm)")
    p.add_argument("--out", required=True, help="folder to write (must be empty unless --overwrite)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and every sample (default 0)")
    p.add_argument("--held-out-fraction", type=float, default=0.1, help="concepts held out (default 0.1)")
    p.add_argument("--validation-fraction", type=float, default=0.5, help="of them, the tune half (0.5)")
    p.add_argument("--max-queries", type=int, default=500, help="held-out concepts per retrieval set (500)")
    p.add_argument("--corpus-size", type=int, default=5000, help="documents per retrieval corpus (5000)")
    p.add_argument("--max-hops", type=int, default=3, help="ancestors / descendants judged up to (3)")
    p.add_argument("--negatives", type=int, default=10, help="subsumption negatives per positive (10)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")

    def run(args: argparse.Namespace) -> int:
        _command("lorentz_rag.data.taxonomy_sets:taxonomy_build_command")(
            args.taxonomy,
            args.out,
            overwrite=args.overwrite,
            seed=args.seed,
            held_out_fraction=args.held_out_fraction,
            validation_fraction=args.validation_fraction,
            max_queries=args.max_queries,
            corpus_size=args.corpus_size,
            max_hops=args.max_hops,
            negatives=args.negatives,
        )
        return 0

    p.set_defaults(func=run)


# --- eval -------------------------------------------------------------------------------------------


def _add_eval_commands(sub) -> None:
    """``lorentz-rag eval beir|mteb|hierarchy|rag``."""
    p = sub.add_parser("eval", help="evaluate a saved model (BEIR retrieval, MTEB, hierarchy probe, RAG)")
    eval_sub = p.add_subparsers(dest="eval_command", metavar="EVAL")
    p.set_defaults(func=lambda args: p.print_help() or 2)

    b = eval_sub.add_parser(
        "beir",
        help="exact retrieval on a BEIR folder: nDCG@10, MRR@10, MAP@100, Recall@1/10/100",
        description="Embed a BEIR folder (documents as title + ' ' + text with the document prefix, queries "
        "with the query prefix) and rank exactly in float64 with the model's similarity. Queries without "
        "qrels are excluded, as in BEIR.",
    )
    b.add_argument("--model", required=True, help="a folder lorentz_rag.load_model accepts")
    b.add_argument("--data", required=True, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv)")
    b.add_argument("--split", default="test")
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument(
        "--top-k",
        type=int,
        default=100,
        help="documents ranked per query (default 100); metrics that read more (map@100 and recall@100 "
        "for --top-k 10) are not reported",
    )
    b.add_argument("--output", help="write the metrics JSON here")
    b.add_argument(
        "--search",
        choices=["exact", "faiss", "hnsw"],
        default="exact",
        help="exact: blocked float64 scoring (default); faiss: the exact FAISS index (same ranking, faster "
        "on large corpora); hnsw: approximate candidates, exact re-rank",
    )
    b.add_argument(
        "--relation",
        choices=["similar", "broader", "narrower"],
        default="similar",
        help="similar: the model's similarity (default); broader / narrower: with --taxonomy graph-kNN over "
        "the taxonomy, without it the geometric relation score (models with a radius), both exact",
    )
    b.add_argument(
        "--radius-weight",
        type=float,
        default=None,
        help="--relation broader / narrower without --taxonomy: weight in [0, 1] of the radius term (default 0.5)",
    )
    _add_taxonomy_arguments(b, "rank --relation broader / narrower by graph-kNN")
    b.set_defaults(func=_run_eval_beir)

    m = eval_sub.add_parser(
        "mteb",
        help="MTEB (mteb 2.x) with the model's hyperbolic similarity; --beir registers local folders",
        description=_MTEB_DESCRIPTION,
    )
    add_mteb_arguments(m)
    m.set_defaults(func=_run_eval_mteb)

    h = eval_sub.add_parser(
        "hierarchy",
        help="radius d(o, x) (or Euclidean norm) of embeddings by hierarchy level, with plots",
    )
    h.add_argument("--model", action="append", required=True, help="model folder (repeat to compare models)")
    h.add_argument("--data", default=None, help="JSONL rows {level, text} (default: bundled wordnet-levels)")
    h.add_argument("--output", required=True, help="output folder (hierarchy.json, PNG plots)")
    h.add_argument("--batch-size", type=int, default=32)
    h.set_defaults(func=_run_eval_hierarchy)

    _add_eval_rag_command(eval_sub)


_MTEB_DESCRIPTION = (
    "Run MTEB tasks with the model's own similarity (mteb ranks with -d(q, x) or <q, x>_L + 1/c, not "
    "cosine). The model type (HyTE-FH, HyTE-H, Euclidean, sentence-transformers) comes from the saved "
    "config; --hybrid is accepted for command lines written for the paper's research code and changes nothing. "
    "Hub tasks and benchmarks need internet access; --beir DIR runs local BEIR folders offline."
)


def _add_taxonomy_arguments(p, what: str) -> None:
    """``--taxonomy`` and ``--graph-settings`` (graph-kNN, lorentz_rag.search.graph_knn)."""
    p.add_argument(
        "--taxonomy",
        default=None,
        help=f"a taxonomy (JSONL, OBO or SKOS, as `taxonomy build` reads) to {what}: the query's nearest "
        "concepts vote for their ancestors (broader) or descendants (narrower), mixed with the similarity",
    )
    p.add_argument(
        "--graph-settings",
        default=None,
        metavar="JSON",
        help="--taxonomy: a JSON file of graph-kNN settings (k, temperature, hop_discount, graph_weight, "
        "links_per_document, max_hops; default: the tuned defaults)",
    )


def _run_eval_beir(args: argparse.Namespace) -> int:
    extra = {}
    if args.relation != "similar" or args.taxonomy is not None or args.radius_weight is not None:
        extra = {
            "relation": args.relation,
            "taxonomy": args.taxonomy,
            "graph_settings": args.graph_settings,
            "radius_weight": args.radius_weight,
        }
    _command("lorentz_rag.eval.retrieval:run_beir_command")(
        args.model, args.data, args.split, args.batch_size, args.top_k, args.output, args.search, **extra
    )
    return 0


def _run_eval_mteb(args: argparse.Namespace) -> int:
    _command("lorentz_rag.eval.mteb_adapter:run_mteb_command")(args)
    return 0


def _run_eval_hierarchy(args: argparse.Namespace) -> int:
    _command("lorentz_rag.eval.hierarchy:run_hierarchy_command")(
        args.model, args.data, args.output, batch_size=args.batch_size
    )
    return 0


def _add_eval_rag_command(eval_sub) -> None:
    """lorentz-rag eval rag (owned by the RAG module): the flags of ``eval_ragas.py``."""
    r = eval_sub.add_parser(
        "rag",
        help="RAG evaluation on RAGBench (or a local file): retrieval, generation, ragas metrics",
        description=RAG_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_rag_arguments(r)
    r.set_defaults(func=run_from_args)  # imports the pipeline when it runs


# --- index / search ---------------------------------------------------------------------------------


def _add_index_commands(sub) -> None:
    """``lorentz-rag index build`` and ``lorentz-rag search``."""
    p = sub.add_parser("index", help="build an exact (or HNSW) hyperbolic vector index over a corpus")
    index_sub = p.add_subparsers(dest="index_command", metavar="INDEX")
    p.set_defaults(func=lambda args: p.print_help() or 2)
    b = index_sub.add_parser(
        "build", help="embed a corpus and save a FAISS index folder (--out) or a vector database (--store)"
    )
    b.add_argument(
        "--model", required=True, help="a folder lorentz_rag.load_model accepts (recorded in the index)"
    )
    b.add_argument("--corpus", required=True, help="JSONL rows {_id, title, text}, or a BEIR folder")
    b.add_argument("--out", default=None, help="index folder to write (a FAISS index; or give --store)")
    _add_store_arguments(b)
    b.add_argument(
        "--max-radius",
        type=float,
        default=None,
        help="--store: the largest radius any document will have (default: the model's bound; needed for "
        "models without one, e.g. HyTE-FH); documents beyond it are refused",
    )
    b.add_argument(
        "--kind",
        choices=_INDEX_KINDS,
        default="flat",
        help="flat: exact (default); hnsw: approximate (FAISS folder, Qdrant); ivf_*: LanceDB's ANN indexes",
    )
    b.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an --out index or a --store table / collection that already holds documents (without "
        "it they are kept and the build is refused; `index add` appends to a --store)",
    )
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--hnsw-m", type=int, default=32, help="HNSW graph degree M")
    b.add_argument(
        "--ef-search", type=int, default=128, help="HNSW efSearch (raised to the fetch size if smaller)"
    )
    b.add_argument(
        "--resumable",
        action="store_true",
        help="keep finished shards in OUT.encoding so an interrupted build resumes (always under torchrun)",
    )
    b.add_argument("--shard-size", type=int, default=1024, help="documents per resumable shard")
    _add_taxonomy_arguments(
        b,
        "attach to the index folder, or a local --store (saved with it; `search --relation` then uses it)",
    )
    b.add_argument(
        "--max-new-shards", type=int, default=None, help="stop each process after N new shards (resume later)"
    )
    b.set_defaults(func=_run_index_build)
    _add_store_edit_commands(index_sub)

    s = sub.add_parser("search", help="search an index folder with query texts")
    s.add_argument(
        "--index", default=None, help="folder written by `lorentz-rag index build` (or give --store)"
    )
    _add_store_arguments(s)
    s.add_argument(
        "--exact",
        action="store_true",
        help="--store: brute force, certified exact (default: its ANN index, if any)",
    )
    s.add_argument("queries", nargs="+", help="query texts")
    s.add_argument("-k", "--top-k", dest="k", type=int, default=10, help="results per query")
    s.add_argument("--model", default=None, help="model folder (default: the one recorded in the index)")
    s.add_argument(
        "--allow-model-mismatch",
        action="store_true",
        help="search even if the model is not the one the index was built with (its fingerprint differs)",
    )
    s.add_argument(
        "--relation",
        choices=["similar", "broader", "narrower"],
        default="similar",
        help="similar: the model's similarity (default); broader / narrower: documents nearer the centre / "
        "further out than the query (hyperbolic models and the Euclidean-distance twin; exact on a flat index "
        "and with --store --exact); on an index or store built with --taxonomy: graph-kNN over that taxonomy "
        "(any model, exact)",
    )
    s.add_argument(
        "--radius-weight",
        type=float,
        default=None,
        help="broader / narrower only: weight in [0, 1] of the radius term (default 0.5; 0: plain distance; "
        "1: twice the Gromov product, 0 for every point between the origin and the query)",
    )
    s.set_defaults(func=_run_search)


def _run_index_build(args: argparse.Namespace) -> int:
    taxonomy = {}
    if args.taxonomy is not None or args.graph_settings is not None:
        taxonomy = {"taxonomy": args.taxonomy, "graph_settings": args.graph_settings}
    if _one_target(args, "out") == "store":
        _command("lorentz_rag.stores.commands:build_store_command")(
            args.model,
            args.corpus,
            args.store,
            kind=args.kind,
            batch_size=args.batch_size,
            max_radius=args.max_radius,
            name=args.collection,
            overwrite=args.overwrite,
            **taxonomy,
        )
        return 0
    if args.kind not in ("flat", "hnsw"):
        raise ValueError(f"--kind {args.kind} needs a LanceDB --store; a FAISS folder is flat or hnsw")
    _command("lorentz_rag.eval.index:build_index_command")(
        args.model,
        args.corpus,
        args.out,
        kind=args.kind,
        batch_size=args.batch_size,
        hnsw_m=args.hnsw_m,
        ef_search=args.ef_search,
        shard_size=args.shard_size,
        resumable=args.resumable,
        max_new_shards=args.max_new_shards,
        overwrite=args.overwrite,
        **taxonomy,
    )
    return 0


def _run_search(args: argparse.Namespace) -> int:
    target = _one_target(args, "index")
    relation = {"relation": args.relation}
    if args.radius_weight is not None:
        if args.relation == "similar":
            raise ValueError(
                "--radius-weight weighs the radius term of --relation broader / narrower; the similar ranking "
                "(the default) has none: drop --radius-weight or pass --relation broader / narrower"
            )
        relation["radius_weight"] = args.radius_weight
    if target == "store":
        _command("lorentz_rag.stores.commands:search_store_command")(
            args.store,
            args.queries,
            args.k,
            model_path=args.model,
            exact=args.exact,
            allow_model_mismatch=args.allow_model_mismatch,
            name=args.collection,
            **relation,
        )
        return 0
    _command("lorentz_rag.eval.index:search_command")(
        args.index,
        args.queries,
        args.k,
        model_path=args.model,
        allow_model_mismatch=args.allow_model_mismatch,
        **relation,
    )
    return 0


# --- vector stores (lorentz_rag.stores) ------------------------------------------------------------

_INDEX_KINDS = ("flat", "hnsw", "ivf_pq", "ivf_hnsw_sq", "ivf_hnsw_pq", "ivf_flat", "ivf_sq")
_STORE_HELP = f"a vector database: {STORE_SPECS}"


def _add_store_arguments(p) -> None:
    p.add_argument("--store", default=None, help=_STORE_HELP)
    p.add_argument("--collection", default="lorentz_rag", help="--store: the table / collection name")


def _add_store_edit_commands(index_sub) -> None:
    """``lorentz-rag index add`` and ``lorentz-rag index delete`` (vector stores only)."""
    a = index_sub.add_parser("add", help="embed a corpus and add its documents to a --store (no rebuild)")
    a.add_argument("--store", required=True, help=_STORE_HELP)
    a.add_argument("--corpus", required=True, help="JSONL rows {_id, title, text}, or a BEIR folder")
    a.add_argument("--model", default=None, help="model folder (default: the one recorded in the store)")
    a.add_argument("--batch-size", type=int, default=64)
    a.add_argument("--collection", default="lorentz_rag", help="the table / collection name")
    a.add_argument("--allow-model-mismatch", action="store_true", help="add with another model anyway")
    a.set_defaults(func=_run_index_add)
    d = index_sub.add_parser("delete", help="delete documents from a --store by id")
    d.add_argument("--store", required=True, help=_STORE_HELP)
    d.add_argument("--ids", nargs="+", required=True, help="document ids")
    d.add_argument("--collection", default="lorentz_rag", help="the table / collection name")
    d.set_defaults(func=_run_index_delete)


def _one_target(args: argparse.Namespace, folder: str) -> str:
    """``"store"`` or ``folder``: exactly one of ``--store`` and ``--<folder>`` must be given."""
    if (args.store is None) == (getattr(args, folder) is None):
        raise ValueError(f"give exactly one of --{folder} (a FAISS index folder) and --store ({_STORE_HELP})")
    return "store" if args.store is not None else folder


def _run_index_add(args: argparse.Namespace) -> int:
    _command("lorentz_rag.stores.commands:add_store_command")(
        args.store,
        args.corpus,
        model_path=args.model,
        batch_size=args.batch_size,
        allow_model_mismatch=args.allow_model_mismatch,
        name=args.collection,
    )
    return 0


def _run_index_delete(args: argparse.Namespace) -> int:
    _command("lorentz_rag.stores.commands:delete_store_command")(args.store, args.ids, name=args.collection)
    return 0


# --- quickstart -------------------------------------------------------------------------------------


def _add_quickstart_command(sub) -> None:
    """``lorentz-rag quickstart --out DIR [--seed N] [--seeds N] [--steps N] [--fast]``."""
    p = sub.add_parser(
        "quickstart",
        help="train HyTE-H, its Euclidean twins and a tiny HyTE-FH on the bundled data over seeds and compare "
        "them (CPU)",
        description="Train HyTE-H, its Euclidean-distance twin and its cosine twin (same pairs, WordNet edges, "
        "steps, batch, seeds) plus ablation rows over several seeds, and a tiny HyTE-FH (MLM then contrastive); "
        "evaluate them and zero-shot all-MiniLM-L6-v2 on the report halves of data/eval/wordnet-hier, "
        "data/eval/faq-dev and the WordNet hierarchy probe; report mean +- sd and paired bootstrap intervals; "
        "write results.json, report.md, plots and models.",
    )
    p.add_argument("--out", default="runs/quickstart", help="output folder (default: runs/quickstart)")
    p.add_argument("--seed", type=int, default=42, help="first seed (data sampling, initialisation, order)")
    p.add_argument(
        "--seeds", type=int, default=None, help="how many seeds: seed, seed+1, ... (default 5; --fast 2)"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="contrastive steps of every row (default 100); the HyTE-FH stages scale with it",
    )
    p.add_argument("--fast", action="store_true", help="a tiny smoke run (numbers mean nothing)")
    p.add_argument(
        "--rows",
        nargs="+",
        default=None,
        help="train only these rows besides HyTE-H and its two twins (default: every ablation except "
        "hyte_h_trainable_base; name it to add that slow one)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="the bundled data folder (default: $LORENTZ_RAG_DATA_DIR, else the source checkout's data/; "
        "an installed wheel has none)",
    )
    p.add_argument(
        "--config-dir",
        default=None,
        help="the quickstart configs (default: the source checkout's configs/quickstart; an installed wheel "
        "has none)",
    )

    def run(args: argparse.Namespace) -> int:
        return _command("lorentz_rag.quickstart:main_from_args")(args)

    p.set_defaults(func=run)


if __name__ == "__main__":
    sys.exit(main())
