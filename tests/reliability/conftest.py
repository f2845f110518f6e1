"""Shared pieces of the reliability tests: a tiny saved HyTE-FH, a tiny BEIR folder, and a way to run an entry
point in-process and read what it printed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorentz_rag.data.beir import write_beir
from lorentz_rag.models import build_model, packaged_minilm_path

REPO = Path(__file__).resolve().parents[2]
TINY_FH = {
    "model_type": "hyte_fh",
    "model_name": str(packaged_minilm_path()),
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "max_seq_length": 32,
}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_fh") / "model"
    build_model(TINY_FH).save_pretrained(path)
    return path


def copy_with_weights(src: Path, dst: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    """A copy of model folder ``src`` at ``dst`` whose tensors ``edit`` changed in place."""
    import shutil

    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def edit_config(folder: Path, edit: Callable[[dict], None]) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="session")
def nan_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with NaN in its final norm's weight: every embedding is NaN."""

    def poison(tensors: dict[str, torch.Tensor]) -> None:
        name = next(k for k in tensors if "final_norm" in k and k.endswith("weight"))
        tensors[name] = torch.full_like(tensors[name], float("nan"))

    return copy_with_weights(tiny_model_dir, tmp_path_factory.mktemp("nan_fh") / "model", poison)


@pytest.fixture(scope="session")
def beir_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("beir") / "tiny"
    corpus = {f"d{i}": {"title": "", "text": text} for i, text in enumerate(DOCS)}
    queries = {"q0": "what is a list", "q1": "a domesticated dog", "q2": "hyperbolic space"}
    qrels = {"q0": {"d0": 1}, "q1": {"d1": 1}, "q2": {"d2": 1}}
    write_beir(folder, corpus, queries, qrels)
    return folder


DOCS = [
    "Python lists are mutable sequences.",
    "A dog is a domesticated carnivore.",
    "Hyperbolic space has constant negative curvature.",
    "Tuples are immutable.",
    "Cats sleep a lot.",
]


def run_main(main: Callable, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``main(argv)`` -> (exit status, stdout, stderr)."""
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def hold_lock(lock_file: Path) -> subprocess.Popen:
    """Another process holding ``lock_file`` (as a running training or index build would) until killed."""
    code = (
        "import time; from lorentz_rag.folder_lock import exclusive_lock\n"
        f"with exclusive_lock({str(lock_file)!r}, 'x'):\n    print('locked', flush=True); time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder
