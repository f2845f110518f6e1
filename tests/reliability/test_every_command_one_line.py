"""Every command, with a fault a user can cause injected (a missing or corrupt file, bad
JSON or YAML, an empty corpus, a file where a folder belongs), exits with status 2, one ``error:`` line
naming what is wrong, and no ``Traceback``. In-process calls of the entry functions (fast) for every
``lorentz-rag`` command and the three scripts' mains, and real subprocesses for the scripts and the
installed ``lorentz-rag`` command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lorentz_rag import cli
from lorentz_rag.data.beir import write_beir
from lorentz_rag.eval import mteb_adapter
from lorentz_rag.eval.rag import command as rag_command
from lorentz_rag.models.hyte_fh import HyteFHConfig
from lorentz_rag.training import trainer

from .conftest import DOCS, REPO, run_main


@pytest.fixture(scope="module")
def faults(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """One broken input of each kind, beside good ones."""
    root = tmp_path_factory.mktemp("faults")
    paths = {"root": root, "model": tiny_model_dir}
    corrupt = root / "corrupt_model"
    shutil.copytree(tiny_model_dir, corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    paths["corrupt_model"] = corrupt
    paths["bad_yaml"] = _write(root / "bad.yaml", "model_args:\n  model_type: hyte_fh\n   hidden_size: [\n")
    paths["bad_jsonl"] = _write(
        root / "rows.jsonl", '{"level": 1, "text": "a thing"}\n{"level": 2, "text": \n'
    )
    paths["empty_corpus"] = _write(root / "empty.jsonl", "")
    paths["file"] = _write(root / "a_file", "not a folder")
    beir = root / "beir"
    write_beir(
        beir, {f"d{i}": {"title": "", "text": t} for i, t in enumerate(DOCS)}, {"q0": "q"}, {"q0": {"d0": 1}}
    )
    paths["beir"] = beir
    bad_beir = root / "bad_beir"
    shutil.copytree(beir, bad_beir)
    _write(bad_beir / "corpus.jsonl", '{"_id": "d0", "text": "a"}\n{"_id": "d1" "text": "b"}\n')
    paths["bad_beir"] = bad_beir
    index = root / "index"
    assert (
        cli.main(
            ["index", "build", "--model", str(tiny_model_dir), "--corpus", str(beir), "--out", str(index)]
        )
        == 0
    )
    _write(index / "index.json", (index / "index.json").read_text()[:40])  # truncated
    paths["bad_index"] = index
    return paths


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# (name, entry point, argv, what the error line must contain); argv's "{key}" are paths of the fixture.
CASES = [
    ("info", cli.main, ["info", "--bogus"], "unrecognized arguments: --bogus"),
    ("train", cli.main, ["train", "--config={bad_yaml}"], "{bad_yaml}: not valid YAML"),
    (
        "eval beir",
        cli.main,
        ["eval", "beir", "--model", "{corrupt_model}", "--data", "{beir}"],
        "{corrupt_model}/model.safetensors is not a readable safetensors file",
    ),
    (
        "eval mteb",
        cli.main,
        ["eval", "mteb", "--model", "{model}", "--output_dir", "{root}/mteb", "--beir", "{bad_beir}"],
        "{bad_beir}/corpus.jsonl:2: invalid JSON",
    ),
    (
        "eval hierarchy",
        cli.main,
        ["eval", "hierarchy", "--model", "{model}", "--data", "{bad_jsonl}", "--output", "{root}/hier"],
        "{bad_jsonl}:2: invalid JSON",
    ),
    (
        "eval rag",
        cli.main,
        ["eval", "rag", "--model_path", "{model}", "--dataset", "{bad_jsonl}", "--no_generate"],
        "{bad_jsonl}:2: invalid JSON",
    ),
    (
        "index build",
        cli.main,
        ["index", "build", "--model", "{model}", "--corpus", "{empty_corpus}", "--out", "{root}/ix"],
        "corpus {empty_corpus} has no documents",
    ),
    (
        "search",
        cli.main,
        ["search", "--index", "{bad_index}", "a query"],
        "{bad_index}/index.json: not valid JSON",
    ),
    (
        "data to-mds",
        cli.main,
        ["data", "to-mds", "--input", "{bad_jsonl}", "--out", "{root}/mds", "--kind", "mlm"],
        "{bad_jsonl}:2: invalid JSON",
    ),
    ("quickstart", cli.main, ["quickstart", "--out", "{file}", "--fast"], "--out {file} is a file"),
    ("train.py", trainer.main, ["--config={bad_yaml}"], "{bad_yaml}: not valid YAML"),
    (
        "eval_mteb_hyperbolic.py",
        mteb_adapter.main,
        ["--model", "{corrupt_model}", "--output_dir", "{root}/m2", "--beir", "{beir}"],
        "{corrupt_model}/model.safetensors is not a readable safetensors file",
    ),
    (
        "eval_ragas.py",
        rag_command.main,
        ["--model_path", "{corrupt_model}", "--dataset", "data/eval/faq-dev-ragbench.jsonl", "--no_generate"],
        "{corrupt_model}/model.safetensors is not a readable safetensors file",
    ),
]


def _fill(text: str, faults: dict[str, Path]) -> str:
    return text.format(**{k: str(v) for k, v in faults.items()})


def _assert_one_error_line(status: int, err: str, expected: str) -> None:
    assert status == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1, err[-3000:]
    assert expected in error_lines[0], err[-3000:]


@pytest.mark.parametrize(("name", "main", "argv", "expected"), CASES, ids=[c[0] for c in CASES])
def test_each_command_with_a_fault_prints_one_error_line(
    name, main, argv, expected, faults, capsys, monkeypatch
):
    monkeypatch.chdir(REPO)
    argv = [_fill(a, faults) for a in argv]
    try:
        status, _, err = run_main(main, argv, capsys)
    except SystemExit as stop:  # argparse's own usage errors: exit 2, "PROG: error: ..."
        status, err = stop.code, capsys.readouterr().err
    _assert_one_error_line(status, err, _fill(expected, faults))
    root = faults["root"]  # a failed command leaves no output behind
    assert not (root / "hier" / "hierarchy.json").exists() and not (root / "ix").exists()
    assert not (root / "mds").exists()


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


SUBPROCESS_CASES = {
    "train.py": ([sys.executable, "train.py", "--config={bad_yaml}"], "{bad_yaml}: not valid YAML"),
    "eval_mteb_hyperbolic.py": (
        [
            sys.executable,
            "eval_mteb_hyperbolic.py",
            "--model",
            "{corrupt_model}",
            "--output_dir",
            "{root}/m3",
            "--beir",
            "{beir}",
        ],
        "{corrupt_model}/model.safetensors is not a readable safetensors file",
    ),
    "eval_ragas.py": (
        [
            sys.executable,
            "eval_ragas.py",
            "--model_path",
            "{model}",
            "--dataset",
            "{bad_jsonl}",
            "--no_generate",
        ],
        "{bad_jsonl}:2: invalid JSON",
    ),
    "lorentz-rag index build": (
        [
            str(Path(sys.executable).with_name("lorentz-rag")),
            "index",
            "build",
            "--model",
            "{model}",
            "--corpus",
            "{empty_corpus}",
            "--out",
            "{root}/ix2",
        ],
        "corpus {empty_corpus} has no documents",
    ),
    "lorentz-rag info": (
        [sys.executable, "-m", "lorentz_rag.cli", "info", "--bogus"],
        "unrecognized arguments",
    ),
}


@pytest.mark.parametrize("name", list(SUBPROCESS_CASES))
def test_the_real_processes_print_one_error_line(name, faults):
    argv, expected = SUBPROCESS_CASES[name]
    if name == "lorentz-rag index build" and not Path(argv[0]).exists():
        pytest.skip("the lorentz-rag console script is not installed beside this Python")
    result = _run([_fill(a, faults) for a in argv])
    _assert_one_error_line(result.returncode, result.stderr, _fill(expected, faults))


def test_a_modernbert_config_that_is_not_json_names_its_file(tmp_path):
    folder = tmp_path / "modernbert"
    folder.mkdir()
    _write(folder / "config.json", json.dumps({"hidden_size": 8})[:-1])
    with pytest.raises(ValueError, match=rf"^{folder / 'config.json'}:1: not valid JSON \("):
        HyteFHConfig.from_modernbert(folder)
