"""Saving and loading the cosine twin's sentence-transformers folder prints nothing misleading:
the base is saved and rebuilt without the BERT pooler it never uses, so transformers has no weights to
report as missing; a real missing weight is still reported (nothing is silenced)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer

from lorentz_rag.models import build_model, load_model, packaged_minilm_path

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["Lorentz model of hyperbolic space", "short", "a cosine twin loads quietly"]
MISLEADING = ("LOAD REPORT", "MISSING", "newly initialized", "newly initialised")


@contextlib.contextmanager
def _all_output(capfd: pytest.CaptureFixture[str]) -> Iterator[list[str]]:
    """Everything written to stdout/stderr, plus every log record (any logger, any level) in the block."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    # transformers' library logger does not propagate to the root logger: listen on both.
    loggers = [
        logging.getLogger(),
        logging.getLogger("transformers"),
        logging.getLogger("sentence_transformers"),
    ]
    for logger in loggers:
        logger.addHandler(handler)
    texts: list[str] = []
    capfd.readouterr()
    try:
        yield texts
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        out, err = capfd.readouterr()
        texts.extend([out, err, *(r.getMessage() for r in records)])


def _cosine_twin() -> torch.nn.Module:
    args = yaml.safe_load((ROOT / "configs/quickstart/euclidean.yaml").read_text())["model_args"]
    torch.manual_seed(0)
    return build_model({**args, "model_name": str(packaged_minilm_path())}).eval()


def test_cosine_twin_saves_and_loads_both_ways_without_a_load_report(tmp_path, capfd):
    model = _cosine_twin()
    with _all_output(capfd) as saved:
        model.save_pretrained(tmp_path)
    with _all_output(capfd) as ours:
        reloaded = load_model(tmp_path)
    with _all_output(capfd) as theirs:
        st = SentenceTransformer(str(tmp_path), device="cpu")
    for stage, texts in {"save": saved, "load_model": ours, "SentenceTransformer": theirs}.items():
        for word in MISLEADING:
            assert not any(word in t for t in texts), f"{stage} printed {word!r}: {texts}"
    with safe_open(str(tmp_path / "0_Transformer" / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "pooler" in k]  # noqa: SIM118 (safe_open is not a mapping)
    assert st[0].model.pooler is None
    want = reloaded.encode(TEXTS, "document")
    torch.testing.assert_close(model.encode(TEXTS, "document"), want, atol=0, rtol=0)
    got = st.encode_document(TEXTS, convert_to_tensor=True).cpu()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_a_weight_really_missing_from_the_folder_is_still_reported(tmp_path, capfd):
    _cosine_twin().save_pretrained(tmp_path)
    weights = tmp_path / "0_Transformer" / "model.safetensors"
    state = load_file(str(weights))
    dropped = next(k for k in state if k.endswith("encoder.layer.0.output.dense.bias"))
    del state[dropped]
    save_file(state, str(weights), metadata={"format": "pt"})
    with _all_output(capfd) as texts:
        SentenceTransformer(str(tmp_path), device="cpu")
    report = "\n".join(texts)
    assert "LOAD REPORT" in report and "MISSING" in report
    assert "encoder.layer.0.output.dense.bias" in report
    assert "pooler" not in report
