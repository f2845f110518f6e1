"""The RAG evaluation run: retrieve from the RAGBench corpus, generate, score, write, resume.

One run writes ``{output}/{base_model_type}_{dataset}_{timestamp}/``:

- ``run_config.json``: the settings (a resumed run must match them);
- ``rows.jsonl``: one record per finished row, appended and flushed as each row finishes;
- ``summary.json``: per-metric means and counts, timings, and every metric that could not be computed with
  the reason (never reported as 0); ``status`` (complete / partial / failed) with the rows' error causes.

Every endpoint the run uses is asked once before any work (:meth:`ChatEndpoint.check`): an endpoint that is
down ends the run with its URL before a folder is written. Rows whose generation or judge calls failed are
recorded with the cause; a warning says how many, and :func:`failed_rows_message` is what the command
reports (an error when every row failed).

The corpus is built from *all* rows of the split; ``limit`` only limits the questions asked, so a short
run retrieves from the same corpus as a full one.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from lorentz_rag.eval.index import VectorIndex
from lorentz_rag.eval.rag.datasets import (
    DEFAULT_HF_DATASET,
    RagCorpus,
    RagRow,
    build_corpus,
    load_rag_rows,
    resolve_dataset,
)
from lorentz_rag.eval.rag.llm import (
    DEFAULT_API_KEY_ENV,
    ChatEndpoint,
    Generator,
    LocalCausalLM,
    SamplingSettings,
    one_line,
    read_api_key,
)
from lorentz_rag.eval.rag.metrics import (
    ANSWER_OVERLAP_METRICS,
    LLM_METRICS,
    NON_LLM_CONTEXT_METRICS,
    NonLLMContextMetrics,
    RagasJudge,
    answer_overlap_metrics,
    retrieval_metric_names,
    retrieval_metrics,
)
from lorentz_rag.models import load_model, packaged_minilm_path
from lorentz_rag.models.euclidean import SentenceTransformerModel
from lorentz_rag.models.hf_base import hub_offline, resolve_model_name
from lorentz_rag.models.hub import is_hub_id, resolve_model_folder

PROMPT_INSTRUCTION = "Based on the following context, answer the question."
ROWS_FILE, CONFIG_FILE, SUMMARY_FILE = "rows.jsonl", "run_config.json", "summary.json"
#: Settings that must be equal for ``--resume`` to continue a run (``limit`` may grow).
RESUME_KEYS = (
    "model_path",
    "hf",
    "dataset_location",
    "split",
    "top_k",
    "llm_base_url",
    "llm_model",
    "temperature",
    "max_new_tokens",
    "seed",
    "judge_base_url",
    "judge_model",
    "no_generate",
    "no_judge",
)
#: A run stops when its first this-many rows all fail (a server that is up but fails every request, a judge
#: gone): the rest would fail the same way, each after its retries. ``--resume`` redoes them and goes on.
STOP_AFTER_FAILED_ROWS = 5


class RagEvalError(ValueError):
    """A RAG evaluation setting is unusable; the message says which and what would be right."""


class Retriever(Protocol):
    """Ranks corpus documents for queries: ``search(texts, k)`` -> per query ``[(doc_id, score)]``, best first."""

    description: str

    def search(self, query_texts: Sequence[str], k: int) -> list[list[tuple[str, float]]]: ...


@dataclass
class RagEvalConfig:
    """Every setting of a run (the ``eval_ragas.py`` / ``lorentz-rag eval rag`` flags)."""

    dataset: str
    model_path: str | None = None
    output: str = "./results/ragas"
    base_model_type: str | None = None
    hf: bool = False
    hyperbolic: bool = False  # accepted for command lines written for the paper's research code; the model type comes from the saved config
    hf_dataset: str = DEFAULT_HF_DATASET
    split: str = "test"
    limit: int | None = None
    top_k: int = 10
    batch_size: int = 64
    device: str = "cpu"
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key_env: str = DEFAULT_API_KEY_ENV
    temperature: float = 0.0
    max_new_tokens: int = 256
    seed: int = 0
    request_timeout: float = 60.0
    max_retries: int = 3
    retry_backoff: float = 1.0
    judge_base_url: str | None = None
    judge_model: str | None = None
    judge_api_key_env: str | None = None
    judge_embeddings: str | None = None
    no_generate: bool = False
    no_judge: bool = False
    resume: str | None = None  # a run folder, or "latest" for the newest matching one in ``output``

    def judge_endpoint(self) -> tuple[str | None, str | None]:
        """``(base_url, model)`` of the judge: its own flags, else the generator's endpoint (as in the paper)."""
        base = self.judge_base_url or self.llm_base_url
        model = self.judge_model or (self.llm_model if base == self.llm_base_url else None)
        return base, model


@dataclass
class RagRunResult:
    run_dir: Path
    summary: dict[str, Any]
    table: str


@dataclass
class _Plan:
    """What this run can compute, and for what it cannot, why."""

    generate: bool
    judge: bool
    missing: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # warnings: flags given that this run does not use


def build_prompt(question: str, contexts: Sequence[str]) -> str:
    """The paper's generation prompt: the instruction, the numbered documents in rank order, the question."""
    documents = "\n\n".join(f"Document {i}: {text}" for i, text in enumerate(contexts, start=1))
    return f"{PROMPT_INSTRUCTION}\n\nContext:\n{documents}\n\nQuestion: {question}\nAnswer:"


def _plan(config: RagEvalConfig) -> _Plan:
    """Check the generator/judge flags before any loading and decide what will be computed."""
    if config.top_k < 1:
        raise RagEvalError(f"--top_k must be >= 1, got {config.top_k}")
    if config.limit is not None and config.limit < 1:
        raise RagEvalError(f"--limit must be >= 1, got {config.limit}")
    if config.llm_base_url and not config.llm_model:
        raise RagEvalError("--llm_base_url needs --llm_model (the model name the endpoint serves)")
    if config.judge_base_url and not config.judge_model:
        raise RagEvalError("--judge_base_url needs --judge_model")
    plan = _Plan(generate=False, judge=False)
    judge_flags = _given(config, "judge_base_url", "judge_model", "judge_api_key_env", "judge_embeddings")
    if config.no_generate:
        reason = "generation disabled (--no_generate)"
        plan.missing.update(dict.fromkeys((*ANSWER_OVERLAP_METRICS, *LLM_METRICS), reason))
        ignored = _given(config, "llm_base_url", "llm_model") + judge_flags
        if ignored:
            plan.ignored.append(
                f"{', '.join(ignored)} ignored: --no_generate evaluates retrieval only (no answers to judge)"
            )
        return plan
    if not config.llm_model:
        reason = "no generator configured (give --llm_base_url and --llm_model, or --llm_model smollm2 / a local path)"
        plan.missing.update(dict.fromkeys((*ANSWER_OVERLAP_METRICS, *LLM_METRICS), reason))
        if judge_flags:
            plan.ignored.append(
                f"{', '.join(judge_flags)} ignored: no generator (--llm_model), no answers to judge"
            )
        return plan
    plan.generate = True
    judge_base, judge_model = config.judge_endpoint()
    if config.no_judge:
        plan.missing.update(dict.fromkeys(LLM_METRICS, "judging disabled (--no_judge)"))
        if judge_flags:
            plan.ignored.append(f"{', '.join(judge_flags)} ignored: --no_judge")
    elif not judge_base or not judge_model:
        plan.missing.update(
            dict.fromkeys(
                LLM_METRICS,
                "no judge endpoint: the LLM-judged ragas metrics need an OpenAI-compatible endpoint "
                "(--judge_base_url/--judge_model, or a generator given by --llm_base_url); a local "
                "generator is not used as a judge",
            )
        )
    else:
        plan.judge = True
        _check_judge_embeddings(config.judge_embeddings)
    return plan


#: A name sentence-transformers may fetch from the Hub: ``name`` or ``org/name`` (no path syntax).
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _check_judge_embeddings(name: str | None) -> None:
    """``--judge_embeddings`` must be a local sentence-transformers folder, or a Hugging Face Hub id (when
    offline, one in the local cache). Checked with the other flags, before any loading and before the run
    folder is created: a mistyped path is one line naming the flag, not a Hub error after the run started."""
    if not name:
        return
    flag = f"--judge_embeddings={name}"
    default = "or leave the flag out for the packaged all-MiniLM-L6-v2"
    path = Path(name).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise RagEvalError(
            f"{flag}: a file, not a model folder; give a sentence-transformers model folder, {default}"
        )
    resolved = resolve_model_name(name)
    if resolved != name and Path(resolved).is_dir():  # all-MiniLM-L6-v2 offline: the packaged copy
        return
    if not _HUB_NAME.match(name) or ".." in name:
        raise RagEvalError(
            f"{flag}: no such folder; give an existing sentence-transformers model folder, a Hugging Face Hub "
            f"model id (org/name), {default}"
        )
    if hub_offline():
        try:
            if not is_hub_id(name):
                raise FileNotFoundError(name)
            resolve_model_folder(name)
        except (FileNotFoundError, ValueError):
            raise RagEvalError(
                f"{flag}: no such folder, and no Hub model {name!r} in the Hugging Face cache "
                f"(HF_HUB_OFFLINE=1 forbids downloading it); give an existing folder, download the model once "
                f"online, {default}"
            ) from None


def _given(config: RagEvalConfig, *names: str) -> list[str]:
    """The ``--flags`` among ``names`` that were set."""
    return [f"--{name}" for name in names if getattr(config, name)]


def _check_endpoints(config: RagEvalConfig, plan: _Plan) -> list[str]:
    """Ask the generator's and the judge's endpoints once, before any work; returns warnings.

    Raises :class:`~lorentz_rag.eval.rag.llm.EndpointUnavailableError` (one line with the URL) for an
    endpoint that is down or refuses the key. The judge is asked separately only when it is another
    server or model than the generator.
    """
    checks: dict[tuple[str, str], tuple[str, str, str]] = {}
    if plan.generate and config.llm_base_url:
        checks[(config.llm_base_url, str(config.llm_model))] = (
            "generator endpoint (--llm_base_url)",
            config.llm_api_key_env,
            "start the server, fix --llm_base_url, or pass --no_generate for retrieval only",
        )
    if plan.judge:
        base, model = config.judge_endpoint()
        key_env = config.judge_api_key_env or config.llm_api_key_env
        checks.setdefault(
            (str(base), str(model)),
            (
                "judge endpoint (--judge_base_url)",
                key_env,
                "start the server, fix --judge_base_url, or pass --no_judge",
            ),
        )
    warnings = []
    for (base, model), (role, key_env, remedy) in checks.items():
        endpoint = ChatEndpoint(base, model, api_key=read_api_key(key_env), timeout_s=config.request_timeout)
        warning = endpoint.check(role, key_env, remedy)
        if warning:
            warnings.append(warning)
    return warnings


def _print_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


# --- retrieval -----------------------------------------------------------------------------------------


class IndexRetriever:
    """An :class:`~lorentz_rag.models.EmbeddingModel` over an exact (flat) :class:`~lorentz_rag.eval.index.VectorIndex`."""

    def __init__(self, model: Any, corpus: RagCorpus, batch_size: int = 64, description: str = "") -> None:
        self.model = model
        self.index = VectorIndex.from_model(
            model, list(corpus.doc_ids), list(corpus.doc_texts), batch_size=batch_size, kind="flat"
        )
        self.description = description or type(model).__name__

    def search(self, query_texts: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        return self.index.search(self.model, list(query_texts), k)


def load_retriever(config: RagEvalConfig, corpus: RagCorpus) -> Retriever:
    """Load the retrieval model of ``config`` and index ``corpus`` exactly.

    ``--hf``: a sentence-transformers folder (default: the packaged all-MiniLM-L6-v2), the paper's
    Euclidean baselines; otherwise a lorentz-rag model folder (``lorentz_rag.load_model``).
    """
    if config.hf:
        path = config.model_path or str(packaged_minilm_path())
        model = SentenceTransformerModel.from_folder(path, device=config.device)
        description = f"sentence-transformers:{path}"
    else:
        if not config.model_path:
            raise RagEvalError("--model_path is required (or --hf for a sentence-transformers baseline)")
        model = load_model(config.model_path).to(config.device)
        description = f"{model.settings.model_type}:{config.model_path}"
    model.eval()
    return IndexRetriever(model, corpus, batch_size=config.batch_size, description=description)


# --- run folder, rows and resume -----------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def _new_run_dir(config: RagEvalConfig, dataset_name: str) -> Path:
    base = config.base_model_type or Path(config.model_path or "sentence-transformers").name
    stem = f"{_slug(base)}_{_slug(dataset_name)}_{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    root = Path(config.output)
    run_dir, n = root / stem, 1
    while run_dir.exists():  # two runs started within the same second
        n += 1
        run_dir = root / f"{stem}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir


def _resume_dir(config: RagEvalConfig, dataset_name: str) -> Path:
    if config.resume and config.resume != "latest":
        run_dir = Path(config.resume)
        if not (run_dir / CONFIG_FILE).is_file():
            raise RagEvalError(f"--resume {run_dir}: not a run folder (no {CONFIG_FILE})")
        return run_dir
    base = _slug(config.base_model_type or Path(config.model_path or "sentence-transformers").name)
    pattern = f"{base}_{_slug(dataset_name)}_*"
    candidates = sorted(p for p in Path(config.output).glob(pattern) if (p / CONFIG_FILE).is_file())
    if not candidates:
        raise RagEvalError(f"--resume: no run folder matching {pattern} in {config.output}")
    return candidates[-1]  # names end in a sortable timestamp


def _check_resumable(run_dir: Path, saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    changed = [
        f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
        for key in RESUME_KEYS
        if saved.get(key) != current.get(key)
    ]
    if changed:
        raise RagEvalError(
            f"--resume {run_dir}: settings differ from the run's {CONFIG_FILE} ({'; '.join(changed)}); "
            f"start a new run instead"
        )


def read_rows(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """The records of ``rows.jsonl``. A torn last line (a run killed mid-write) is dropped, and with
    ``repair`` cut from the file so that appending continues on a clean line; a bad line elsewhere raises."""
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records: list[dict[str, Any]] = []
    offset = 0  # byte offset of the current line
    for i, line in enumerate(lines):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                if i != last:
                    raise RagEvalError(f"{path}:{i + 1}: invalid JSON ({error.msg})") from error
                if repair:
                    with path.open("r+b") as handle:
                        handle.truncate(offset)
                break
        offset += len(line) + 1
    return records


def _append_row(path: Path, record: Mapping[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _is_finished(record: Mapping[str, Any]) -> bool:
    # A row whose generation or judge call failed is redone on resume; one that merely lacks a
    # metric for a permanent reason (no reference, generation disabled) is finished.
    return not record.get("errors")


# --- the run ------------------------------------------------------------------------------------------


def _config_record(config: RagEvalConfig, dataset_location: str, dataset_name: str) -> dict[str, Any]:
    record = asdict(config)
    record.update(dataset_location=dataset_location, dataset_name=dataset_name)
    record["judge_base_url"], record["judge_model"] = config.judge_endpoint()
    return record


def _build_generator(config: RagEvalConfig) -> Generator:
    sampling = SamplingSettings(config.temperature, config.max_new_tokens, config.seed)
    if config.llm_base_url:
        return ChatEndpoint(
            config.llm_base_url,
            str(config.llm_model),
            api_key=read_api_key(config.llm_api_key_env),
            sampling=sampling,
            timeout_s=config.request_timeout,
            max_retries=config.max_retries,
            backoff_s=config.retry_backoff,
        )
    return LocalCausalLM(str(config.llm_model), sampling=sampling, device=config.device)


def _build_judge(config: RagEvalConfig) -> RagasJudge:
    base_url, model = config.judge_endpoint()
    if config.judge_embeddings:
        # ~ expanded as the check did; all-MiniLM-L6-v2 offline: the packaged copy
        local = Path(config.judge_embeddings).expanduser()
        embeddings = str(local) if local.is_dir() else resolve_model_name(config.judge_embeddings)
    else:
        embeddings = str(packaged_minilm_path())
    return RagasJudge(
        str(base_url),
        str(model),
        api_key=read_api_key(config.judge_api_key_env or config.llm_api_key_env),
        embeddings_path=embeddings,
        timeout_s=config.request_timeout,
        max_retries=config.max_retries,
    )


def run_rag_eval(
    config: RagEvalConfig,
    retriever_factory: Callable[[RagCorpus], Retriever] | None = None,
    echo: Callable[[str], None] | None = print,
    generator_factory: Callable[[RagEvalConfig], Generator] | None = None,
    warn: Callable[[str], None] | None = _print_warning,
) -> RagRunResult:
    """Run (or resume) one RAG evaluation and return its folder, summary and printed table.

    ``retriever_factory(corpus)`` replaces :func:`load_retriever` (tests use a small fake);
    ``generator_factory(config)`` replaces building the generator from ``config`` (e.g. to reuse a
    loaded local model). ``warn`` gets each warning (ignored flags, an endpoint not listing the model,
    rows that failed); by default one ``warning: ...`` line on stderr. A run whose rows all failed returns
    normally with ``summary["status"] == "failed"``; the command turns that into an error.
    """
    warn = warn or (lambda message: None)
    wall_start = time.perf_counter()
    source = resolve_dataset(config.dataset, config.hf_dataset)  # fails at once on an unknown name
    plan = _plan(config)
    for message in plan.ignored:
        warn(message)
    for message in _check_endpoints(config, plan):  # before any loading, and before a folder is written
        warn(message)
    rows = load_rag_rows(source, config.split)
    corpus = build_corpus(rows)
    eval_rows = rows[: config.limit] if config.limit else rows

    current = _config_record(config, source.location, source.name)
    if config.resume:
        run_dir = _resume_dir(config, source.name)
        _check_resumable(run_dir, json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8")), current)
    else:
        run_dir = _new_run_dir(config, source.name)
        (run_dir / CONFIG_FILE).write_text(json.dumps(current, indent=2) + "\n", encoding="utf-8")
    rows_path = run_dir / ROWS_FILE
    finished = {r["id"] for r in read_rows(rows_path, repair=True) if _is_finished(r)}
    pending = [row for row in eval_rows if row.id not in finished]
    if echo:
        echo(
            f"{run_dir}: {len(eval_rows)} rows ({len(eval_rows) - len(pending)} already done), "
            f"corpus of {len(corpus.doc_ids)} documents"
        )

    timings: dict[str, float] = {}
    stopped: str | None = None
    if pending:
        start = time.perf_counter()
        retriever = (retriever_factory or (lambda c: load_retriever(config, c)))(corpus)
        timings["index_build_s"] = time.perf_counter() - start
        start = time.perf_counter()
        rankings = retriever.search([row.question for row in pending], config.top_k)
        timings["retrieval_s"] = time.perf_counter() - start
        if len(rankings) != len(pending):
            raise RagEvalError(f"retriever returned {len(rankings)} rankings for {len(pending)} queries")
        generator = (generator_factory or _build_generator)(config) if plan.generate else None
        judge = _build_judge(config) if plan.judge else None
        context_metrics = NonLLMContextMetrics()
        loop = asyncio.new_event_loop()  # one loop for the run: the judge's HTTP client is bound to it
        try:
            succeeded = False
            for done, (row, ranking) in enumerate(zip(pending, rankings), start=1):
                record = _evaluate_row(
                    row, ranking, corpus, config, plan, generator, judge, context_metrics, loop
                )
                _append_row(rows_path, record)
                succeeded = succeeded or not record["errors"]
                if echo and record["errors"]:
                    echo(f"row {row.id}: {_join_errors(record['errors'])}")
                if not succeeded and done == STOP_AFTER_FAILED_ROWS and done < len(pending):
                    stopped = (
                        f"the first {done} rows attempted all failed, so the run stopped with "
                        f"{len(pending) - done} of {len(eval_rows)} rows not attempted"
                    )
                    break
        finally:
            if judge is not None:
                loop.run_until_complete(judge.aclose())
            loop.close()
    timings["wall_s"] = time.perf_counter() - wall_start

    records = {r["id"]: r for r in read_rows(rows_path)}  # the last record of an id wins
    ordered = [records[row.id] for row in eval_rows if row.id in records]
    summary = summarize(ordered, config.top_k, plan.missing, timings)
    summary.update(
        run_dir=str(run_dir),
        dataset=source.name,
        split=config.split,
        corpus_size=len(corpus.doc_ids),
        n_rows_planned=len(eval_rows),
        stopped=stopped,
    )
    if stopped:
        summary["status"] = "failed"
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    table = format_summary(summary)
    if echo:
        echo(table)
    if summary["status"] == "partial":
        warn(str(failed_rows_message(summary)))
    return RagRunResult(run_dir=run_dir, summary=summary, table=table)


def _join_errors(errors: Mapping[str, str]) -> str:
    return "; ".join(f"{kind}: {message}" for kind, message in errors.items())


def failed_rows_message(summary: Mapping[str, Any]) -> str | None:
    """One line saying how many rows failed and why (the commonest cause), whether the run stopped early,
    where the errors are written and how to redo the rows; ``None`` when no row failed."""
    n, failed = summary["n_rows"], summary["n_rows_with_errors"]
    if not failed:
        return None
    head = f"all {n} rows failed" if failed == n else f"{failed} of {n} rows failed"
    cause, count = next(iter(summary["failures"].items()))
    share = "" if count == failed else f", {count} of them"
    run_dir = summary.get("run_dir", "the run folder")
    stopped = summary.get("stopped")
    return (
        f"{stopped or head} ({cause}{share}); each error is in {run_dir}/{ROWS_FILE} and {SUMMARY_FILE}; "
        f"fix the cause and rerun with --resume {run_dir} to redo the failed rows"
        + (" and run the rest" if stopped else "")
    )


def _evaluate_row(
    row: RagRow,
    ranking: Sequence[tuple[str, float]],
    corpus: RagCorpus,
    config: RagEvalConfig,
    plan: _Plan,
    generator: Generator | None,
    judge: RagasJudge | None,
    context_metrics: NonLLMContextMetrics,
    loop: asyncio.AbstractEventLoop,
) -> dict[str, Any]:
    retrieved_ids = [doc_id for doc_id, _ in ranking]
    contexts = [corpus.text(doc_id) for doc_id in retrieved_ids]
    gold = corpus.gold[row.id]
    metrics: dict[str, float] = retrieval_metrics(retrieved_ids, gold, config.top_k)
    missing: dict[str, str] = {}
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}

    values, why = loop.run_until_complete(context_metrics.ascore(contexts, [corpus.text(d) for d in gold]))
    metrics.update(values)
    missing.update(why)

    prompt = build_prompt(row.question, contexts)
    answer: str | None = None
    if generator is not None:
        start = time.perf_counter()
        try:
            answer = generator.generate(prompt)
        except Exception as error:  # endpoint, tokenizer or model failure: recorded for this row
            errors["generation"] = f"{type(error).__name__}: {one_line(error, limit=500)}"
        timings["generation_s"] = time.perf_counter() - start

    why_no_answer = plan.missing.get("token_f1") or f"generation failed ({errors.get('generation', '')})"
    values, why = answer_overlap_metrics(answer, row.response, why_no_answer)
    metrics.update(values)
    missing.update(why)

    if plan.judge and judge is not None:
        if answer is None or not answer.strip():
            missing.update(
                dict.fromkeys(LLM_METRICS, "no answer to judge" if answer is None else "empty answer")
            )
        else:
            start = time.perf_counter()
            values, why, failed = loop.run_until_complete(judge.ascore(row.question, contexts, answer))
            timings["judge_s"] = time.perf_counter() - start
            metrics.update(values)
            missing.update(why)
            # A failed call is worth redoing on resume; a NaN verdict is a result.
            errors.update({f"judge:{name}": why[name] for name in failed})
    else:
        missing.update({k: plan.missing[k] for k in LLM_METRICS if k in plan.missing})

    return {
        "id": row.id,
        "question": row.question,
        "retrieved": [{"doc_id": d, "score": float(s)} for d, s in ranking],
        "gold_doc_ids": list(gold),
        "prompt": prompt,
        "answer": answer,
        "reference": row.response,
        "metrics": metrics,
        "missing": missing,
        "errors": errors,
        "timings": timings,
    }


# --- summary -------------------------------------------------------------------------------------------


def summarize(
    records: Sequence[Mapping[str, Any]],
    top_k: int,
    run_missing: Mapping[str, str],
    timings: Mapping[str, float],
) -> dict[str, Any]:
    """Means and counts per metric over ``records``; metrics no row has are listed as missing with reasons."""
    expected = (
        *retrieval_metric_names(top_k),
        *NON_LLM_CONTEXT_METRICS,
        *ANSWER_OVERLAP_METRICS,
        *LLM_METRICS,
    )
    metrics: dict[str, dict[str, float | int]] = {}
    missing: dict[str, str] = {}
    partially_missing: dict[str, dict[str, int]] = {}
    for name in expected:
        values = [r["metrics"][name] for r in records if name in r.get("metrics", {})]
        values = [v for v in values if v is not None and not math.isnan(v)]
        reasons = Counter(
            r.get("missing", {}).get(name, "not recorded")
            for r in records
            if name not in r.get("metrics", {})
        )
        if values:
            metrics[name] = {"mean": sum(values) / len(values), "n": len(values)}
            if reasons:
                partially_missing[name] = dict(reasons)
        elif name in run_missing:
            missing[name] = run_missing[name]
        elif reasons:
            missing[name] = "; ".join(f"{reason} ({count} rows)" for reason, count in reasons.most_common())
        else:
            missing[name] = "no rows were evaluated"
    row_timings: dict[str, float] = {}
    for key in ("generation_s", "judge_s"):
        row_timings[key] = sum(r.get("timings", {}).get(key, 0.0) for r in records)
    failed = sum(1 for r in records if r.get("errors"))
    # Each failed row once per distinct cause, commonest first (a dead judge fails three metrics per row).
    causes = Counter(
        cause
        for r in records
        for cause in dict.fromkeys(_cause(k, v) for k, v in r.get("errors", {}).items())
    )
    return {
        "n_rows": len(records),
        "n_rows_with_errors": failed,
        "status": "complete" if not failed else ("failed" if failed == len(records) else "partial"),
        "failures": dict(causes.most_common(5)),
        "metrics": metrics,
        "missing": missing,
        "partially_missing": partially_missing,
        "timings": {**row_timings, **timings},
    }


def _cause(kind: str, message: str) -> str:
    """A row error as a cause: ``generation: <message>``, or the judge's message (``judge <url>: ...``, the
    same for each of its metrics)."""
    return message if kind.startswith("judge:") else f"{kind}: {message}"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The printed table: one line per computed metric, then the missing ones with their reasons."""
    lines = [
        f"RAG evaluation: {summary.get('dataset', '?')} [{summary.get('split', '?')}], "
        f"{summary['n_rows']} rows, {summary['n_rows_with_errors']} with errors",
        f"{'metric':<28}{'mean':>10}{'n':>8}",
    ]
    for name, stat in summary["metrics"].items():
        lines.append(f"{name:<28}{stat['mean']:>10.4f}{stat['n']:>8d}")
    for name, reason in summary["missing"].items():
        lines.append(f"{name:<28}{'missing':>10}{0:>8d}  ({reason})")
    if summary.get("stopped"):
        lines.append(f"stopped: {summary['stopped']}")
    return "\n".join(lines)
