"""Per-row RAG metrics: retrieval against the row's own documents, ragas metrics, answer overlap.

Every function returns ``(values, missing)``: ``values`` maps a metric name to a float, ``missing`` maps a
metric that could not be computed to the reason. A metric that could not be computed is never a 0.

Retrieval metrics use binary relevance with the row's documents as the gold set ``G`` and the ranked
list ``r_1..r_k``:

    recall@k = |{r_1..r_k} ∩ G| / |G|
    mrr@k    = 1 / (rank of the first r_i in G), 0 if none is
    ndcg@k   = sum_i [r_i in G] / log2(i + 1)  /  sum_{i <= min(|G|, k)} 1 / log2(i + 1)
"""

from __future__ import annotations

import json
import math
import os
import re
import string
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from lorentz_rag.eval.rag.llm import one_line

MetricValues = dict[str, float]
MissingMetrics = dict[str, str]

#: The paper's three LLM-judged ragas metrics (HypRAG, Table 3).
LLM_METRICS = ("faithfulness", "context_relevance", "answer_relevancy")
NON_LLM_CONTEXT_METRICS = ("non_llm_context_precision", "non_llm_context_recall")
ANSWER_OVERLAP_METRICS = ("rouge_l", "token_f1")


def retrieval_metric_names(k: int) -> tuple[str, str, str]:
    return (f"recall@{k}", f"mrr@{k}", f"ndcg@{k}")


def retrieval_metrics(retrieved: Sequence[str], gold: Sequence[str], k: int) -> MetricValues:
    """``recall@k``, ``mrr@k`` and ``ndcg@k`` of one ranked list ``retrieved`` (best first) against ``gold``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    relevant = set(gold)
    if not relevant:
        raise ValueError("gold set is empty: retrieval metrics are undefined")
    top = list(retrieved)[:k]
    hits = [doc in relevant for doc in top]
    first = next((i for i, hit in enumerate(hits) if hit), None)
    dcg = sum(1.0 / math.log2(i + 2) for i, hit in enumerate(hits) if hit)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    recall_name, mrr_name, ndcg_name = retrieval_metric_names(k)
    return {
        recall_name: len(relevant.intersection(top)) / len(relevant),
        mrr_name: 0.0 if first is None else 1.0 / (first + 1),
        ndcg_name: dcg / ideal,
    }


# --- answer overlap with the reference response -------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _normalize_tokens(text: str) -> list[str]:
    # SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces.
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return text.split()


def token_f1(answer: str, reference: str) -> float:
    """SQuAD-style token F1 between ``answer`` and ``reference`` (1.0 when both normalise to nothing)."""
    pred, gold = _normalize_tokens(answer), _normalize_tokens(reference)
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure (``rouge-score``, with Porter stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(scorer.score(reference, answer)["rougeL"].fmeasure)


def answer_overlap_metrics(
    answer: str | None, reference: str | None, why_no_answer: str
) -> tuple[MetricValues, MissingMetrics]:
    """ROUGE-L and token F1 of ``answer`` against the dataset's reference ``response``."""
    if answer is None:
        return {}, dict.fromkeys(ANSWER_OVERLAP_METRICS, why_no_answer)
    if not reference:
        return {}, dict.fromkeys(ANSWER_OVERLAP_METRICS, "the row has no reference response")
    values: MetricValues = {"token_f1": token_f1(answer, reference)}
    missing: MissingMetrics = {}
    try:
        values["rouge_l"] = rouge_l(answer, reference)
    except ImportError as error:
        missing["rouge_l"] = f"rouge-score is not installed ({error})"
    return values, missing


# --- ragas ------------------------------------------------------------------------------------------


def _quiet_ragas_import() -> None:
    # ragas posts usage telemetry to its authors' server unless told not to; an evaluation tool should not
    # phone home (and offline, each attempt would wait for a timeout). A user's explicit setting is kept.
    os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")


class NonLLMContextMetrics:
    """ragas' string-similarity context precision and recall of the retrieved contexts against the gold ones.

    ``NonLLMContextPrecisionWithReference``: average precision of the ranked contexts, a context counting as
    relevant when its string similarity to some gold document is >= 0.5; ``NonLLMContextRecall``: the
    fraction of gold documents matched by some retrieved context.
    """

    def __init__(self) -> None:
        _quiet_ragas_import()
        self.unavailable: str | None = None
        try:
            with warnings.catch_warnings():
                # ragas 0.4.3 marks these as moving to ragas.metrics.collections, which does not have them yet.
                warnings.simplefilter("ignore", DeprecationWarning)
                from ragas.metrics import NonLLMContextPrecisionWithReference, NonLLMContextRecall

            self.precision = NonLLMContextPrecisionWithReference()
            self.recall = NonLLMContextRecall()
        except ImportError as error:  # rapidfuzz is an optional dependency of ragas
            self.unavailable = f"ragas non-LLM context metrics unavailable ({error})"

    async def ascore(
        self, contexts: Sequence[str], gold_contexts: Sequence[str]
    ) -> tuple[MetricValues, MissingMetrics]:
        if self.unavailable:
            return {}, dict.fromkeys(NON_LLM_CONTEXT_METRICS, self.unavailable)
        if not contexts:
            return {}, dict.fromkeys(NON_LLM_CONTEXT_METRICS, "nothing was retrieved")
        from ragas.dataset_schema import SingleTurnSample

        sample = SingleTurnSample(retrieved_contexts=list(contexts), reference_contexts=list(gold_contexts))
        values: MetricValues = {}
        missing: MissingMetrics = {}
        for name, metric in (
            ("non_llm_context_precision", self.precision),
            ("non_llm_context_recall", self.recall),
        ):
            try:
                value = float(await metric.single_turn_ascore(sample))
            except Exception as error:  # ragas raises assorted types; the row records the reason
                missing[name] = f"{type(error).__name__}: {error}"
                continue
            if math.isnan(value):
                missing[name] = "ragas returned NaN"
            else:
                values[name] = value
        return values, missing


def _causes(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions behind it (``__cause__``, else ``__context__``), outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def describe_judge_error(error: BaseException, base_url: str) -> str:
    """One line with the judge's URL and the real cause of a failed judge call.

    openai says "Connection error." for a server that is down; the reason (connection refused, unknown
    host) is at the end of the exception chain. A reply that does not fit ragas' output schema arrives as a
    multi-line pydantic dump, kept here to one line.
    """
    import openai

    where = f"judge {base_url}"
    chain = _causes(error)
    api = next((e for e in chain if isinstance(e, openai.APIError)), None)
    if isinstance(api, openai.APITimeoutError):
        return f"{where}: no reply in time (request timeout)"
    if isinstance(api, openai.APIConnectionError):
        root = chain[-1]
        if isinstance(root, OSError) and root.errno:  # refused, unknown host, unreachable network
            return f"{where}: cannot reach the server ({os.strerror(root.errno).lower()})"
        return f"{where}: the connection failed ({one_line(root).rstrip('.')})"
    if isinstance(api, openai.APIStatusError):  # its message repeats the code: "Error code: 503 - {...}"
        body = api.body  # openai keeps the reply's "error" member when there is one
        detail = api.message if body is None else body if isinstance(body, str) else json.dumps(body)
        return f"{where}: HTTP {api.status_code}: {one_line(detail)}"
    if any(type(e).__name__ in ("ValidationError", "InstructorRetryException") for e in chain):
        return f"{where}: the reply did not fit ragas' output schema ({one_line(error)})"
    return f"{where}: {type(error).__name__}: {one_line(error)}"


class RagasJudge:
    """The paper's three LLM-judged ragas metrics through an OpenAI-compatible endpoint.

    ``Faithfulness`` and ``ContextRelevance`` use the judge LLM only; ``AnswerRelevancy`` also embeds the
    question and the judge's reconstructed questions with ``embeddings_path`` (a local sentence-transformers
    folder, e.g. the packaged all-MiniLM-L6-v2). The judge is reached through ``ragas.llms.llm_factory`` with
    an ``openai.AsyncOpenAI`` client (JSON mode); the client retries 5xx/timeouts ``max_retries`` times.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None,
        embeddings_path: str,
        timeout_s: float = 60.0,
        max_retries: int = 3,
    ) -> None:
        _quiet_ragas_import()
        from openai import AsyncOpenAI
        from ragas.embeddings import HuggingFaceEmbeddings
        from ragas.llms import llm_factory
        from ragas.metrics.collections import AnswerRelevancy, ContextRelevance, Faithfulness

        self.base_url = base_url.rstrip("/")
        self.model = model
        # Local servers accept any key, but the client refuses to start without one.
        self.client = AsyncOpenAI(
            base_url=self.base_url, api_key=api_key or "EMPTY", timeout=timeout_s, max_retries=max_retries
        )
        llm = llm_factory(model, provider="openai", client=self.client)
        # ContextRelevance turns every failed call into a NaN rating; recording the calls' errors lets a
        # NaN caused by a dead judge be reported as such, not as "no valid rating".
        self.call_errors: list[BaseException] = []
        llm.agenerate = self._recording(llm.agenerate)
        self.embeddings = HuggingFaceEmbeddings(model=str(embeddings_path), device="cpu")
        self.faithfulness = Faithfulness(llm=llm)
        self.context_relevance = ContextRelevance(llm=llm)
        self.answer_relevancy = AnswerRelevancy(llm=llm, embeddings=self.embeddings)
        self.description = f"{model} @ {self.base_url}"

    def _recording(self, agenerate: Callable[..., Any]) -> Callable[..., Any]:
        async def recorded(*args: Any, **kwargs: Any) -> Any:
            try:
                return await agenerate(*args, **kwargs)
            except Exception as error:
                self.call_errors.append(error)
                raise

        return recorded

    async def ascore(
        self, question: str, contexts: Sequence[str], answer: str
    ) -> tuple[MetricValues, MissingMetrics, list[str]]:
        """Score one row: ``(values, missing, failed)``.

        A metric whose judge call raised (after the client's retries), or came out NaN because its calls
        raised, is missing with the cause and the judge's URL (one line) and listed in ``failed``; one whose
        verdict was unusable (NaN from valid replies) is missing with that reason.
        """
        contexts = list(contexts)
        calls: dict[str, Any] = {
            "faithfulness": (
                self.faithfulness.ascore,
                {"user_input": question, "response": answer, "retrieved_contexts": contexts},
                "the judge extracted no statements from the answer",
            ),
            "context_relevance": (
                self.context_relevance.ascore,
                {"user_input": question, "retrieved_contexts": contexts},
                "the judge gave no valid 0/1/2 rating",
            ),
            "answer_relevancy": (
                self.answer_relevancy.ascore,
                {"user_input": question, "response": answer},
                "ragas returned NaN",
            ),
        }
        values: MetricValues = {}
        missing: MissingMetrics = {}
        failed: list[str] = []
        for name, (score, kwargs, nan_reason) in calls.items():
            self.call_errors.clear()
            try:
                value = float((await score(**kwargs)).value)
            except Exception as error:  # openai, instructor and ragas raise many types; keep the row going
                missing[name] = describe_judge_error(error, self.base_url)
                failed.append(name)
                continue
            if math.isnan(value) and self.call_errors:
                missing[name] = describe_judge_error(self.call_errors[-1], self.base_url)
                failed.append(name)
            elif math.isnan(value):
                missing[name] = nan_reason
            else:
                values[name] = value
        return values, missing, failed

    async def aclose(self) -> None:
        await self.client.close()
