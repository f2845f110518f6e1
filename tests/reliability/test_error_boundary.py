"""The one error boundary: every entry point turns user errors into one ``error: ...`` line and exit
status 2; ``--debug`` or ``LORENTZ_RAG_DEBUG=1`` shows the traceback; bugs keep theirs."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from lorentz_rag import cli
from lorentz_rag.errors import describe_error, run_entry_point
from lorentz_rag.eval import mteb_adapter
from lorentz_rag.eval.rag import command as rag_command
from lorentz_rag.training import trainer

from .conftest import REPO, run_main


def _script(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("argv", "start"),
    [
        (
            ["train.py", "--config=configs/train/no-such.yaml"],
            "error: --config=configs/train/no-such.yaml: file not found",
        ),
        (
            ["eval_mteb_hyperbolic.py", "--model", "no/such/model", "--output_dir", "x", "--beir", "y"],
            "error: model folder no/such/model does not exist",
        ),
        (
            [
                "eval_ragas.py",
                "--model_path",
                "no/such/model",
                "--dataset",
                "data/eval/faq-dev-ragbench.jsonl",
                "--no_generate",
            ],
            "error: model folder no/such/model does not exist",
        ),
        (
            ["-m", "lorentz_rag.cli", "search", "--index", "no/such/index", "a query"],
            "error: no/such/index/index.json: missing",
        ),
    ],
)
def test_every_script_prints_one_error_line_and_exits_2(argv, start, tmp_path):
    argv = [a if a != "x" else str(tmp_path / "x") for a in argv]
    result = _script(*argv)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith(start), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_debug_flag_and_environment_variable_show_the_traceback(capsys, monkeypatch):
    argv = ["eval", "beir", "--model", "no/such/model", "--data", "x"]
    status, _, err = run_main(cli.main, argv, capsys)
    assert status == 2 and "Traceback" not in err
    status, _, err = run_main(cli.main, ["--debug", *argv], capsys)
    assert status == 2 and "Traceback (most recent call last)" in err
    assert err.rstrip().endswith("error: model folder no/such/model does not exist")
    monkeypatch.setenv("LORENTZ_RAG_DEBUG", "1")
    status, _, err = run_main(cli.main, argv, capsys)
    assert status == 2 and "Traceback (most recent call last)" in err


def test_each_in_process_entry_point_uses_the_boundary(capsys):
    status, _, err = run_main(trainer.main, ["--config=nope.yaml"], capsys)
    assert (status, err) == (2, "error: --config=nope.yaml: file not found\n")
    status, _, err = run_main(
        mteb_adapter.main, ["--model", "nope", "--output_dir", "o", "--beir", "b"], capsys
    )
    assert (status, err) == (2, "error: model folder nope does not exist\n")
    status, _, err = run_main(rag_command.main, ["--dataset", "covid", "--model_path", "x"], capsys)
    assert status == 2 and err.startswith("error: unknown dataset 'covid'")


def test_os_errors_name_the_file_and_a_full_disk_says_so():
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/run/ckpt-3.tmp/training_state.pt")
    assert describe_error(full) == "/data/run/ckpt-3.tmp/training_state.pt: no space left on device"
    denied = PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/etc/x")
    assert describe_error(denied) == "/etc/x: Permission denied"
    assert (
        describe_error(FileNotFoundError("corpus.jsonl: corpus not found"))
        == "corpus.jsonl: corpus not found"
    )


def test_bugs_keep_their_traceback():
    def buggy(argv):
        raise KeyError("a programming error")

    with pytest.raises(KeyError):
        run_entry_point(buggy, [])
