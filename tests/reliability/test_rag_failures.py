"""A RAG run that fails must not look done.

Endpoints are local servers on 127.0.0.1 (no internet): a closed port for a server that is down, a server
answering HTTP 500, one that drops every connection. The command runs in-process through its entry point
(``eval_ragas.py``'s ``main``), so exit status and stderr are what a user sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lorentz_rag import cli
from lorentz_rag.eval.rag import command as rag_command
from lorentz_rag.eval.rag import pipeline
from lorentz_rag.eval.rag.llm import ChatEndpoint, EndpointError, EndpointUnavailableError
from lorentz_rag.eval.rag.metrics import LLM_METRICS, RagasJudge
from lorentz_rag.eval.rag.pipeline import read_rows
from lorentz_rag.models import packaged_minilm_path

from .conftest import run_main

# instructor (used by ragas) compares against its own deprecated Mode.FUNCTIONS on every call.
pytestmark = pytest.mark.filterwarnings("ignore:FUNCTIONS is deprecated:DeprecationWarning")

QUESTIONS = {
    "q1": ("How are lists written in Python?", "Python lists are written with square brackets."),
    "q2": ("What does apt install?", "apt installs Debian packages."),
    "q3": ("What is a dog?", "A dog is a domesticated carnivore."),
}


def _dataset(tmp_path: Path) -> Path:
    path = tmp_path / "three.jsonl"
    records = [
        {"id": qid, "question": q, "documents": [doc, "Cats sleep a lot."], "response": doc}
        for qid, (q, doc) in QUESTIONS.items()
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _closed_port_url() -> str:
    """The URL of a port on which nothing listens (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class FakeServer:
    """A local OpenAI-style server: ``GET /v1/models`` lists ``models`` (or answers ``models_status``, 0: none),
    ``POST`` answers ``on_post(prompt) -> (status, content)``; ``on_post`` returning None drops the connection."""

    def __init__(
        self,
        on_post: Callable[[str], tuple[int, str] | None],
        models: tuple[str, ...] = ("gen-model",),
        models_status: int = 200,
        models_delay_s: float = 0.0,
    ) -> None:
        self.posts: list[str] = []
        self.gets: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.gets.append(self.path)
                time.sleep(models_delay_s)
                if models_status == 0:  # close without a reply
                    self.close_connection = True
                    return
                listing = {"object": "list", "data": [{"id": m, "object": "model"} for m in models]}
                self._send(models_status, listing if models_status == 200 else {"error": "no"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                fake.posts.append(prompt)
                answer = on_post(prompt)
                if answer is None:
                    self.close_connection = True
                    return
                status, content = answer
                message = {"role": "assistant", "content": content}
                payload = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
                self._send(status, payload if status == 200 else {"error": content})

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError):  # the client gave up waiting (the timeout test)
                    self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[..., FakeServer]]:
    started: list[FakeServer] = []

    def start(*args: Any, **kwargs: Any) -> FakeServer:
        started.append(FakeServer(*args, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.close()


def _rag(tmp_path: Path, *flags: str) -> list[str]:
    """eval_ragas.py arguments: the three-question set, the packaged MiniLM retriever, fast-failing requests."""
    return [
        "--dataset",
        str(_dataset(tmp_path)),
        "--hf",
        "--base_model_type",
        "minilm",
        "--top_k",
        "2",
        "--output",
        str(tmp_path / "runs"),
        "--max_retries",
        "0",
        "--request_timeout",
        "5",
        *flags,
    ]


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def _only_run_dir(tmp_path: Path) -> Path:
    (run_dir,) = (tmp_path / "runs").iterdir()
    return run_dir


@pytest.mark.parametrize("command", ["eval_ragas.py", "lorentz-rag eval rag"])
def test_unreachable_generator_ends_the_run_before_any_work(command: str, tmp_path: Path, capsys) -> None:
    url = _closed_port_url()
    argv = _rag(tmp_path, "--llm_base_url", url, "--llm_model", "gen-model", "--no_judge")
    if command == "eval_ragas.py":
        status, out, err = run_main(rag_command.main, argv, capsys)
    else:
        status, out, err = run_main(cli.main, ["eval", "rag", *argv], capsys)
    assert status == 2 and out == ""
    assert err == (
        f"error: generator endpoint (--llm_base_url) {url}: cannot reach the server (connection refused); "
        "start the server, fix --llm_base_url, or pass --no_generate for retrieval only\n"
    )
    assert not (tmp_path / "runs").exists()  # no run folder, no rows


def test_judge_down_while_the_generator_is_up_is_refused_before_generating(
    tmp_path: Path, capsys, serve
) -> None:
    generator = serve(lambda prompt: (200, "An answer."))
    judge_url = _closed_port_url()
    argv = _rag(
        tmp_path,
        *("--llm_base_url", generator.base_url, "--llm_model", "gen-model"),
        *("--judge_base_url", judge_url, "--judge_model", "judge-model"),
    )
    status, out, err = run_main(rag_command.main, argv, capsys)
    assert status == 2 and out == "" and "Traceback" not in err
    assert err == (
        f"error: judge endpoint (--judge_base_url) {judge_url}: cannot reach the server (connection refused); "
        "start the server, fix --judge_base_url, or pass --no_judge\n"
    )
    assert generator.gets == ["/v1/models"] and generator.posts == []  # asked once, nothing generated
    assert not (tmp_path / "runs").exists()


def test_a_server_failing_every_request_fails_the_run_and_records_why(tmp_path: Path, capsys, serve) -> None:
    server = serve(lambda prompt: (500, "model crashed"))
    argv = _rag(tmp_path, "--llm_base_url", server.base_url, "--llm_model", "gen-model", "--no_judge")
    status, _, err = run_main(rag_command.main, argv, capsys)
    assert status == 2 and "Traceback" not in err
    run_dir = _only_run_dir(tmp_path)
    cause = (
        f"generation: EndpointError: {server.base_url}/chat/completions: HTTP 500 Internal Server Error: "
        '{"error": "model crashed"}; gave up after 1 attempt(s)'
    )
    assert _error_lines(err) == [
        f"error: all 3 rows failed ({cause}); each error is in {run_dir}/rows.jsonl and summary.json; "
        f"fix the cause and rerun with --resume {run_dir} to redo the failed rows"
    ]
    assert len(server.posts) == 3
    rows = read_rows(run_dir / "rows.jsonl")
    assert [r["id"] for r in rows] == ["q1", "q2", "q3"]
    assert all(r["answer"] is None and f"generation: {r['errors']['generation']}" == cause for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["n_rows_with_errors"] == 3
    assert summary["failures"] == {cause: 3}
    assert "token_f1" not in summary["metrics"] and "generation failed" in summary["missing"]["token_f1"]


def test_a_run_whose_first_rows_all_fail_stops_and_resume_finishes_it(
    tmp_path: Path, capsys, serve, monkeypatch
) -> None:
    monkeypatch.setattr(pipeline, "STOP_AFTER_FAILED_ROWS", 2)  # 2 of the 3 rows, not 5 of 7
    state = {"up": False}
    server = serve(lambda prompt: (200, "An answer.") if state["up"] else (504, "gateway timeout"))
    argv = _rag(tmp_path, "--llm_base_url", server.base_url, "--llm_model", "gen-model", "--no_judge")
    status, out, err = run_main(rag_command.main, argv, capsys)
    assert status == 2 and "Traceback" not in err and len(server.posts) == 2  # the third row not tried
    run_dir = _only_run_dir(tmp_path)
    (line,) = _error_lines(err)
    assert line.startswith(
        "error: the first 2 rows attempted all failed, so the run stopped with 1 of 3 rows not attempted "
        f"(generation: EndpointError: {server.base_url}/chat/completions: HTTP 504 Gateway Timeout"
    )
    assert line.endswith(f"rerun with --resume {run_dir} to redo the failed rows and run the rest")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["stopped"] and "stopped: the first 2" in out
    assert (summary["n_rows"], summary["n_rows_planned"]) == (2, 3)

    state["up"] = True
    status, _, err = run_main(rag_command.main, [*argv, "--resume", str(run_dir)], capsys)
    assert status == 0 and err.count("warning:") == 0 and len(server.posts) == 5
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["stopped"] is None and summary["n_rows"] == 3
    assert summary["metrics"]["token_f1"]["n"] == 3


def test_some_rows_failing_is_a_warning_with_the_count(tmp_path: Path, capsys, serve) -> None:
    server = serve(lambda p: (500, "too long") if "Question: What does apt" in p else (200, "An answer."))
    argv = _rag(tmp_path, "--llm_base_url", server.base_url, "--llm_model", "gen-model", "--no_judge")
    status, out, err = run_main(rag_command.main, argv, capsys)
    assert status == 0 and "Traceback" not in err and _error_lines(err) == []
    run_dir = _only_run_dir(tmp_path)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: 1 of 3 rows failed (generation: ")
    assert f"--resume {run_dir}" in warnings[0] and "HTTP 500" in warnings[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "partial" and summary["n_rows_with_errors"] == 1
    assert summary["metrics"]["token_f1"]["n"] == 2
    assert "3 rows, 1 with errors" in out


def test_no_generate_warns_that_the_judge_and_generator_flags_are_ignored(tmp_path: Path, capsys) -> None:
    down = _closed_port_url()  # never asked: with --no_generate nothing is generated or judged
    argv = _rag(
        tmp_path,
        "--no_generate",
        *("--llm_base_url", down, "--llm_model", "gen-model"),
        *("--judge_base_url", down, "--judge_model", "judge-model"),
    )
    status, _, err = run_main(rag_command.main, argv, capsys)
    assert status == 0 and "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: --llm_base_url, --llm_model, --judge_base_url, --judge_model ignored: --no_generate "
        "evaluates retrieval only (no answers to judge)"
    ]
    summary = json.loads((_only_run_dir(tmp_path) / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["metrics"]["recall@2"]["n"] == 3
    assert summary["missing"]["faithfulness"] == "generation disabled (--no_generate)"


def test_no_judge_with_judge_flags_warns(tmp_path: Path, capsys, serve) -> None:
    server = serve(lambda prompt: (200, "An answer."))
    argv = _rag(
        tmp_path,
        *("--llm_base_url", server.base_url, "--llm_model", "gen-model", "--no_judge"),
        *("--judge_model", "judge-model"),
    )
    status, _, err = run_main(rag_command.main, argv, capsys)
    assert status == 0
    assert [line for line in err.splitlines() if line.startswith("warning:")] == [
        "warning: --judge_model ignored: --no_judge"
    ]


@pytest.mark.parametrize("failure", ["down", "drops connections", "HTTP 500", "not JSON"])
def test_a_failing_judge_is_reported_with_its_url_and_cause_on_one_line(failure: str, serve) -> None:
    replies: dict[str, Callable[[str], tuple[int, str] | None]] = {
        "drops connections": lambda prompt: None,
        "HTTP 500": lambda prompt: (500, "judge crashed"),
        "not JSON": lambda prompt: (200, "I would rate this a two.\nThanks!"),
    }
    url = _closed_port_url() if failure == "down" else serve(replies[failure]).base_url
    judge = RagasJudge(url, "judge-model", None, str(packaged_minilm_path()), timeout_s=5, max_retries=0)
    loop = asyncio.new_event_loop()
    try:
        values, missing, failed = loop.run_until_complete(
            judge.ascore("What does apt install?", ["apt installs Debian packages."], "Debian packages.")
        )
        loop.run_until_complete(judge.aclose())
    finally:
        loop.close()
    # Every metric failed, context_relevance too (ragas turns its failed calls into NaN: "no valid rating").
    assert values == {} and sorted(failed) == sorted(LLM_METRICS) and set(missing) == set(LLM_METRICS)
    expected = {
        "down": "cannot reach the server (connection refused)",
        "drops connections": "the connection failed (Server disconnected without sending a response)",
        "HTTP 500": "HTTP 500: judge crashed",
        "not JSON": "the reply did not fit ragas' output schema (",
    }[failure]
    for name, reason in missing.items():
        assert reason.startswith(f"judge {url}: {expected}"), (name, reason)
        assert "\n" not in reason and "no valid 0/1/2 rating" not in reason
        assert "errors.pydantic.dev" not in reason


def test_endpoint_check_refused_key_unlisted_model_and_no_reply(serve) -> None:
    refusing = serve(lambda prompt: (200, ""), models_status=401)
    endpoint = ChatEndpoint(refusing.base_url, "gen-model", api_key="wrong")
    with pytest.raises(EndpointUnavailableError) as caught:
        endpoint.check("generator endpoint (--llm_base_url)", "MY_KEY", "unused")
    assert str(caught.value) == (
        f"generator endpoint (--llm_base_url) {refusing.base_url}: the server refused the API key "
        f"(HTTP 401 Unauthorized for GET {refusing.base_url}/models); set the key in $MY_KEY or .env"
    )

    listing = serve(lambda prompt: (200, ""), models=("llama-8b", "qwen-7b"))
    warning = ChatEndpoint(listing.base_url, "gen-model").check("g", "K", "r")
    assert warning == (
        f"{listing.base_url}/models does not list model 'gen-model' (it serves llama-8b, qwen-7b); "
        "requests for it may fail"
    )
    assert ChatEndpoint(listing.base_url, "qwen-7b").check("g", "K", "r") is None
    # A server without the listing (404) is up: the run's own requests will tell the rest.
    assert (
        ChatEndpoint(serve(lambda p: (200, ""), models_status=404).base_url, "m").check("g", "K", "r") is None
    )

    # A connection closed without a reply (e.g. a proxy in front of a dead server) is retried, then named.
    dropping = serve(lambda prompt: None)
    with pytest.raises(EndpointError) as caught:
        ChatEndpoint(dropping.base_url, "m", max_retries=1, backoff_s=0.01).generate("hi")
    assert str(caught.value) == (
        f"{dropping.base_url}/chat/completions: connection failed (Remote end closed connection without "
        "response); gave up after 2 attempt(s)"
    )
    assert len(dropping.posts) == 2
    silent = serve(lambda prompt: None, models_status=0)
    with pytest.raises(EndpointUnavailableError) as caught:
        ChatEndpoint(silent.base_url, "m").check("judge endpoint (--judge_base_url)", "K", "or --no_judge")
    assert str(caught.value) == (
        f"judge endpoint (--judge_base_url) {silent.base_url}: no HTTP answer to GET {silent.base_url}/models "
        "(Remote end closed connection without response); or --no_judge"
    )

    slow = serve(lambda prompt: (200, ""), models_delay_s=2.0)
    with pytest.raises(
        EndpointUnavailableError,
        match=r"judge endpoint http://\S+: no reply to GET \S+/models within 0.3 s; fix it$",
    ):
        ChatEndpoint(slow.base_url, "m", timeout_s=0.3).check("judge endpoint", "K", "fix it")
