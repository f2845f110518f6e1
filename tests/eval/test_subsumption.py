"""HiT's subsumption protocol: the threshold is chosen on validation (exactly, over every distinct score)
and F1 is reported on test at that threshold; the pairs file reader."""

from __future__ import annotations

import gzip
import json
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch

from lorentz_rag.data.jsonl import DataFormatError
from lorentz_rag.data.taxonomy import Taxonomy, read_taxonomy
from lorentz_rag.data.taxonomy_sets import TaxonomySetOptions, build_taxonomy_sets
from lorentz_rag.eval.subsumption import (
    best_threshold,
    evaluate_subsumption,
    f1_at,
    read_subsumption_pairs,
    subsumption_f1,
    subsumption_scores,
)

ANIMALS = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "animals.jsonl"


def _brute_force(scores: np.ndarray, labels: np.ndarray) -> float:
    return max(f1_at(scores, labels, t)["f1"] for t in np.unique(scores))


def test_best_threshold_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        labels = rng.integers(0, 2, n)
        labels[0] = 1
        scores = np.round(rng.normal(size=n) + labels, 1)  # ties on purpose
        threshold, f1 = best_threshold(scores, labels)
        assert f1 == pytest.approx(_brute_force(scores, labels))
        assert f1_at(scores, labels, threshold)["f1"] == pytest.approx(f1)


def test_separable_scores_give_f1_one_and_the_threshold_transfers() -> None:
    result = subsumption_f1([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0], [0.85, 0.3, 0.81, 0.05], [1, 0, 1, 0])
    assert result["threshold"] == 0.8 and result["validation_f1"] == 1.0
    assert result["f1"] == 1.0 and result["precision"] == 1.0 and result["accuracy"] == 1.0
    # the test threshold is the validation one, not re-tuned: 0.79 is below it
    shifted = subsumption_f1([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0], [0.79, 0.1], [1, 0])
    assert shifted["f1"] == 0.0 and shifted["recall"] == 0.0


def test_hand_computed_f1() -> None:
    # at 0.5: predicted {0.9, 0.6, 0.5}; true positives 0.9 and 0.5; positives 0.9, 0.5, 0.1
    m = f1_at([0.9, 0.6, 0.5, 0.1], [1, 0, 1, 1], 0.5)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        ([1.0], [1, 0], "same number"),
        ([1.0], [2], "0 or 1"),
        ([np.nan], [1], "finite"),
        ([], [], "same number"),
    ],
)
def test_bad_inputs(scores: list, labels: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        best_threshold(scores, labels)


def test_read_pairs(tmp_path: Path) -> None:
    rows = [
        {"child": c, "candidate": p, "label": lab, "setting": s}
        for c, p, lab, s in product("a", "xy", (0, 1), ("random", "hard"))
    ]
    path = tmp_path / "p.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    assert len(read_subsumption_pairs(path)) == 8 and len(read_subsumption_pairs(path, "hard")) == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"child": "a", "candidate": "b", "label": 3, "setting": "hard"}) + "\n")
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:1: a pair needs"):
        read_subsumption_pairs(bad)


class _OracleModel:
    """Embeds a name as its index in a table; scores a pair by whether the taxonomy says "is-a" (plus
    a small deterministic noise), so the protocol's F1 must come out 1."""

    def __init__(self, taxonomy: Taxonomy) -> None:
        self.taxonomy = taxonomy
        self.by_name = {c.name: c.id for c in taxonomy}
        self.texts: list[str] = []
        self.calls: list[str] = []

    def encode(self, texts: list[str], prompt_type: str, batch_size: int = 32) -> torch.Tensor:
        assert prompt_type == "document" and len(set(texts)) == len(texts)  # each text once
        self.texts = list(texts)
        return torch.arange(len(texts), dtype=torch.float32).unsqueeze(1)

    def relation_scores(
        self, a: torch.Tensor, b: torch.Tensor, relation: str, radius_weight: float
    ) -> torch.Tensor:
        self.calls.append(relation)
        child = self.by_name[self.texts[int(a[0, 0])]]
        ancestors = self.taxonomy.ancestors(child)
        names = [self.texts[int(x)] for x in b[:, 0]]
        return torch.tensor([[float(self.by_name[n] in ancestors) + 0.01 * (len(n) % 7) for n in names]])


def test_evaluate_subsumption_on_built_pairs(tmp_path: Path) -> None:
    taxonomy = read_taxonomy(ANIMALS)
    build_taxonomy_sets(taxonomy, tmp_path, TaxonomySetOptions(held_out_fraction=0.3, negatives=2))
    model = _OracleModel(taxonomy)
    for setting in ("random", "hard"):
        result = evaluate_subsumption(model, tmp_path / "eval" / "subsumption", setting=setting)
        assert result["f1"] == 1.0 and result["validation_f1"] == 1.0 and result["setting"] == setting
    assert set(model.calls) == {"broader"}
    rows = read_subsumption_pairs(tmp_path / "eval" / "subsumption" / "test.jsonl.gz", "hard")
    scores = subsumption_scores(model, rows, relation="narrower")
    assert scores.shape == (len(rows),) and model.calls[-1] == "narrower"
    assert ((scores >= 1.0) == np.array([r["label"] == 1 for r in rows])).all()
    with pytest.raises(ValueError, match="field must be"):
        subsumption_scores(model, rows, field="definition")
