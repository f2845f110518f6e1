"""The LLM path against real HTTP servers on 127.0.0.1: generation, ragas judging, retries, resume.

The servers are small OpenAI-compatible stand-ins (``http.server`` in a thread). The generator answers
with the first sentence of Document 1 plus one unsupported sentence; the judge answers ragas' JSON-mode
prompts by their output schema, with simple rules whose results the tests compute by hand:

- statements = the answer's sentences; NLI verdict 1 iff the statement occurs in the context;
- context relevance: judge 1 says 2, judge 2 says 1 -> (1 + 0.5) / 2 = 0.75;
- answer relevancy: the reconstructed question is the answer itself (not noncommittal).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lorentz_rag.eval.rag.llm import ChatEndpoint, EndpointError, read_api_key
from lorentz_rag.eval.rag.pipeline import RagEvalConfig, build_prompt, read_rows, run_rag_eval

# instructor 1.3 (used by ragas) compares against its own deprecated Mode.FUNCTIONS on every call.
pytestmark = pytest.mark.filterwarnings("ignore:FUNCTIONS is deprecated:DeprecationWarning")

UNSUPPORTED = "The moon is made of cheese."
ROWS = [
    {
        "id": "r1",
        "question": "Why does Python use indentation?",
        "documents": [
            "Python uses indentation to group statements. Braces are not needed.",
            "Debian uses apt.",
        ],
        "response": "Python uses indentation to group statements.",
    },
    {
        "id": "r2",
        "question": "How do I install a Debian package?",
        "documents": ["Debian uses apt. Run apt install.", "Snakes are reptiles."],
        "response": "Use apt install.",
    },
    {
        "id": "r3",
        "question": "What are snakes?",
        "documents": [
            "Snakes are reptiles. They have scales.",
            "Python uses indentation to group statements.",
        ],
    },
]


class StandIn:
    """A threaded OpenAI-compatible server; ``reply(body) -> (status, payload)`` decides each answer."""

    def __init__(self, reply: Callable[[dict[str, Any]], tuple[int, Any]]) -> None:
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.auth: list[str | None] = []
        self.reply = reply
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stand_in.requests.append(body)
                stand_in.paths.append(self.path)
                stand_in.auth.append(self.headers.get("Authorization"))
                status, payload = stand_in.reply(body)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def completion(content: str, model: str) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def first_sentence_of_document_1(prompt: str) -> str:
    match = re.search(r"Document 1: (.*?\.)", prompt)
    assert match, prompt
    return match.group(1)


def generator_reply(body: dict[str, Any]) -> tuple[int, Any]:
    prompt = body["messages"][-1]["content"]
    return 200, completion(f"{first_sentence_of_document_1(prompt)} {UNSUPPORTED}", body["model"])


def _prompt_input(text: str) -> dict[str, Any]:
    # ragas' prompt ends with "input: {json}\nOutput: "; the input JSON is the last one in the text.
    start = text.rindex("input: ") + len("input: ")
    return json.loads(text[start : text.rindex("Output:")])


def judge_reply(body: dict[str, Any]) -> tuple[int, Any]:
    assert body.get("response_format") == {"type": "json_object"}, "ragas/instructor JSON mode expected"
    system = " ".join(m["content"] for m in body["messages"] if m["role"] == "system")
    user = body["messages"][-1]["content"]
    data = _prompt_input(user)
    if '"title": "NLIStatementOutput"' in system:
        out = {
            "statements": [
                {"statement": s, "reason": "stand-in", "verdict": int(s in data["context"])}
                for s in data["statements"]
            ]
        }
    elif '"title": "StatementGeneratorOutput"' in system:
        out = {"statements": [s.strip() + "." for s in data["answer"].split(".") if s.strip()]}
    elif '"title": "ContextRelevanceOutput"' in system:
        out = {"rating": 2 if "world class expert" in user else 1}
    elif '"title": "AnswerRelevanceOutput"' in system:
        out = {"question": data["response"], "noncommittal": 0}
    else:
        return 400, {"error": f"stand-in judge: unknown schema in {system[:200]!r}"}
    return 200, completion(json.dumps(out), body["model"])


@pytest.fixture
def servers() -> Iterator[dict[str, StandIn]]:
    made = {"gen": StandIn(generator_reply), "judge": StandIn(judge_reply)}
    yield made
    for server in made.values():
        server.close()


class OrderRetriever:
    """Ranks every corpus document by shared lower-case words with the question (ties: corpus order)."""

    description = "word overlap"

    def __init__(self, corpus) -> None:
        self.corpus = corpus

    def search(self, query_texts, k):
        out = []
        for query in query_texts:
            words = set(re.findall(r"\w+", query.lower()))
            scored = [
                (len(words & set(re.findall(r"\w+", text.lower()))), -i, doc_id)
                for i, (doc_id, text) in enumerate(zip(self.corpus.doc_ids, self.corpus.doc_texts))
            ]
            scored.sort(reverse=True)
            out.append([(doc_id, float(score)) for score, _, doc_id in scored[:k]])
        return out


def write_rows(tmp_path: Path) -> Path:
    path = tmp_path / "mini-rag.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return path


def config_for(tmp_path: Path, servers: dict[str, StandIn], **overrides: Any) -> RagEvalConfig:
    settings: dict[str, Any] = dict(
        dataset=str(write_rows(tmp_path)),
        model_path="unused",
        base_model_type="fake",
        output=str(tmp_path / "runs"),
        top_k=2,
        llm_base_url=servers["gen"].base_url,
        llm_model="gen-model",
        judge_base_url=servers["judge"].base_url,
        judge_model="judge-model",
        max_retries=2,
        retry_backoff=0.01,
        request_timeout=5.0,
        max_new_tokens=32,
        seed=11,
    )
    settings.update(overrides)
    return RagEvalConfig(**settings)


def minilm_cosine(a: str, b: str) -> float:
    from sentence_transformers import SentenceTransformer

    from lorentz_rag.models import packaged_minilm_path

    model = SentenceTransformer(str(packaged_minilm_path()), device="cpu")
    x, y = model.encode([a, b], normalize_embeddings=True)
    return float(np.dot(x, y))


@pytest.mark.slow
def test_generation_and_ragas_judge_on_separate_endpoints(
    tmp_path: Path, servers: dict[str, StandIn]
) -> None:
    config = config_for(tmp_path, servers, limit=2)
    result = run_rag_eval(config, retriever_factory=OrderRetriever, echo=None)
    rows = read_rows(result.run_dir / "rows.jsonl")
    assert [r["id"] for r in rows] == ["r1", "r2"]

    # The generator got exactly the paper's prompt, top-k documents in rank order, and the sampling settings.
    gen = servers["gen"]
    assert len(gen.requests) == 2 and set(gen.paths) == {"/v1/chat/completions"}
    for row, request in zip(rows, gen.requests):
        ranked_texts = _texts(row)
        assert request["messages"] == [
            {"role": "user", "content": build_prompt(row["question"], ranked_texts)}
        ]
        assert request["model"] == "gen-model" and request["seed"] == 11 and request["max_tokens"] == 32
        assert row["prompt"] == request["messages"][0]["content"]
    assert rows[0]["retrieved"][0]["doc_id"] == "d0"  # "Python uses indentation ..." shares most words
    assert rows[0]["answer"] == f"Python uses indentation to group statements. {UNSUPPORTED}"

    # The judge calls went to the judge endpoint only, with the question, contexts and answer of each row.
    judge = servers["judge"]
    assert judge.requests and all(r["model"] == "judge-model" for r in judge.requests)
    assert all("response_format" not in r for r in gen.requests)
    inputs = [_prompt_input(r["messages"][-1]["content"]) for r in judge.requests]
    for row in rows:
        contexts = _texts(row)
        assert {"question": row["question"], "answer": row["answer"]} in inputs
        assert any(i.get("context") == "\n".join(contexts) and "statements" in i for i in inputs)
        assert {"user_input": row["question"], "context": "\n".join(contexts)} in inputs

    # Faithfulness: 2 statements, the first is in the context, the cheese is not -> 0.5.
    metrics = result.summary["metrics"]
    assert rows[0]["metrics"]["faithfulness"] == pytest.approx(0.5)
    assert metrics["faithfulness"] == {"mean": pytest.approx(0.5), "n": 2}
    assert metrics["context_relevance"] == {"mean": pytest.approx(0.75), "n": 2}
    expected = [minilm_cosine(row["question"], row["answer"]) for row in rows]
    assert [r["metrics"]["answer_relevancy"] for r in rows] == pytest.approx(expected, abs=1e-4)
    assert metrics["answer_relevancy"]["mean"] == pytest.approx(sum(expected) / 2, abs=1e-4)
    # Overlap with the reference response is computed, and nothing is missing.
    assert rows[0]["metrics"]["token_f1"] > 0.5 and "rouge_l" in metrics
    assert result.summary["missing"] == {} or set(result.summary["missing"]) <= {
        "non_llm_context_precision",
        "non_llm_context_recall",
    }
    assert "faithfulness" in result.table


def _texts(row: dict[str, Any]) -> list[str]:
    """The retrieved documents' texts of a written row, in rank order."""
    from lorentz_rag.eval.rag.datasets import build_corpus, rows_from_records

    corpus = build_corpus(rows_from_records(ROWS, where="rows"))
    return [corpus.text(r["doc_id"]) for r in row["retrieved"]]


def test_resume_skips_finished_rows(tmp_path: Path, servers: dict[str, StandIn]) -> None:
    config = config_for(tmp_path, servers, limit=2, no_judge=True)
    first = run_rag_eval(config, retriever_factory=OrderRetriever, echo=None)
    assert len(servers["gen"].requests) == 2
    before = (first.run_dir / "rows.jsonl").read_bytes()
    resumed = config_for(tmp_path, servers, limit=None, no_judge=True, resume="latest")
    again = run_rag_eval(resumed, retriever_factory=OrderRetriever, echo=None)
    assert again.run_dir == first.run_dir
    # Only the third question was generated; the two finished rows are untouched.
    assert len(servers["gen"].requests) == 3
    assert "What are snakes?" in servers["gen"].requests[-1]["messages"][0]["content"]
    after = (first.run_dir / "rows.jsonl").read_bytes()
    assert after.startswith(before) and len(read_rows(first.run_dir / "rows.jsonl")) == 3
    assert again.summary["n_rows"] == 3
    assert again.summary["missing"]["faithfulness"] == "judging disabled (--no_judge)"
    # r3 has no reference response: overlap metrics are missing for it, not zero.
    assert again.summary["metrics"]["token_f1"]["n"] == 2
    assert again.summary["partially_missing"]["token_f1"] == {"the row has no reference response": 1}


def test_failing_generator_is_retried_then_recorded_and_resumed(tmp_path: Path) -> None:
    state = {"broken": True}

    def flaky(body: dict[str, Any]) -> tuple[int, Any]:
        prompt = body["messages"][-1]["content"]
        if state["broken"] and "Debian package" in prompt:
            return 500, {"error": "model crashed"}
        if state["broken"] and "snakes" in prompt:
            time.sleep(0.6)  # longer than the client's timeout
        return generator_reply(body)

    server = StandIn(flaky)
    try:
        servers = {"gen": server, "judge": server}
        config = config_for(tmp_path, servers, no_judge=True, max_retries=2, request_timeout=0.3)
        result = run_rag_eval(config, retriever_factory=OrderRetriever, echo=None)
        rows = {r["id"]: r for r in read_rows(result.run_dir / "rows.jsonl")}
        assert list(rows) == ["r1", "r2", "r3"]  # every row written, the failing ones with their error
        assert rows["r1"]["errors"] == {} and rows["r1"]["answer"]
        assert (
            "HTTP 500" in rows["r2"]["errors"]["generation"]
            and "3 attempt(s)" in rows["r2"]["errors"]["generation"]
        )
        assert "timed out" in rows["r3"]["errors"]["generation"]
        prompts = [r["messages"][0]["content"] for r in server.requests]
        assert sum("Debian package" in p for p in prompts) == 3  # 1 try + 2 retries, then given up
        assert sum("snakes" in p for p in prompts) == 3
        assert rows["r2"]["answer"] is None
        assert result.summary["n_rows_with_errors"] == 2
        assert result.summary["metrics"]["token_f1"]["n"] == 1
        assert "generation failed" in next(iter(result.summary["partially_missing"]["token_f1"]))

        state["broken"] = False
        n_before = len(server.requests)
        again = run_rag_eval(
            config_for(tmp_path, servers, no_judge=True, resume="latest"), OrderRetriever, echo=None
        )
        assert len(server.requests) - n_before == 2  # only the two failed rows are redone
        assert again.summary["n_rows_with_errors"] == 0 and again.summary["n_rows"] == 3
    finally:
        server.close()


def test_non_retryable_status_fails_without_retries() -> None:
    server = StandIn(lambda body: (401, {"error": "bad key"}))
    try:
        client = ChatEndpoint(server.base_url, "m", api_key="secret", max_retries=3, backoff_s=0.01)
        with pytest.raises(EndpointError, match=r"HTTP 401.*not retried"):
            client.generate("hi")
        assert len(server.requests) == 1
    finally:
        server.close()


def test_api_key_comes_from_the_named_variable_or_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = StandIn(generator_reply)
    try:
        (tmp_path / ".env").write_text("LORENTZ_RAG_TEST_RAG_KEY=from-dotenv\n", encoding="utf-8")
        monkeypatch.chdir(tmp_path)
        key = read_api_key("LORENTZ_RAG_TEST_RAG_KEY")
        assert key == "from-dotenv"
        ChatEndpoint(server.base_url, "m", api_key=key).generate(build_prompt("q?", ["Document text."]))
        ChatEndpoint(server.base_url, "m", api_key=read_api_key("LORENTZ_RAG_TEST_RAG_UNSET_KEY")).generate(
            build_prompt("q?", ["Document text."])
        )
        assert server.auth == ["Bearer from-dotenv", None]
    finally:
        server.close()


def test_failing_judge_is_reported_missing_not_zero(tmp_path: Path, servers: dict[str, StandIn]) -> None:
    broken = StandIn(lambda body: (503, {"error": "overloaded"}))
    try:
        config = config_for(tmp_path, servers, limit=1, judge_base_url=broken.base_url, max_retries=0)
        result = run_rag_eval(config, retriever_factory=OrderRetriever, echo=None)
        row = read_rows(result.run_dir / "rows.jsonl")[0]
        assert row["answer"]  # generation worked
        for name in ("faithfulness", "answer_relevancy"):
            assert name not in row["metrics"] and f"judge:{name}" in row["errors"]
            assert name in result.summary["missing"]
        # ragas' ContextRelevance swallows judge errors into NaN: missing (never 0) with the real cause.
        assert "context_relevance" not in result.summary["metrics"]
        assert "judge:context_relevance" in row["errors"]
        cause = f"judge {broken.base_url}: HTTP 503: overloaded"
        assert result.summary["missing"]["context_relevance"] == f"{cause} (1 rows)"
        assert result.summary["failures"] == {cause: 1} and result.summary["status"] == "failed"
        assert broken.requests
    finally:
        broken.close()
