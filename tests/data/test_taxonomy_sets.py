"""``lorentz-rag taxonomy build``: held-out concepts never reach training data; the broader / narrower /
synonym BEIR sets, the depth probe and the subsumption pairs judge what the taxonomy says; tune and report
halves follow the split; the output is reproducible; the command's errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from _taxonomy_cases import random_taxonomy

from lorentz_rag.cli import main
from lorentz_rag.data.beir import load_beir
from lorentz_rag.data.taxonomy import Concept, Taxonomy, read_taxonomy
from lorentz_rag.data.taxonomy_sets import (
    TaxonomySetOptions,
    build_taxonomy_sets,
    contrastive_pairs,
    depth_levels,
)

FIXTURES = Path(__file__).parent / "fixtures"
OPTIONS = TaxonomySetOptions(seed=1, held_out_fraction=0.15, max_queries=40, corpus_size=120, negatives=3)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Taxonomy, Path, dict]:
    taxonomy = random_taxonomy(400)
    out = tmp_path_factory.mktemp("sets")
    return taxonomy, out, build_taxonomy_sets(taxonomy, out, OPTIONS)


def _split(out: Path) -> dict:
    return json.loads((out / "split.json").read_text())


def _gz_lines(path: Path) -> list[str]:
    return gzip.decompress(path.read_bytes()).decode().splitlines()


def test_held_out_concepts_never_reach_training_data(built: tuple[Taxonomy, Path, dict]) -> None:
    taxonomy, out, manifest = built
    held = set(_split(out)["held_out"])
    assert len(held) == manifest["held_out"] == 60
    train = read_taxonomy(out / "train.jsonl.gz")
    assert not held & set(train.concepts) and len(train) == len(taxonomy) - len(held)
    assert not any(p in held for c in train for p in c.parents)
    edge_ids = {x for line in _gz_lines(out / "edges.tsv.gz")[1:] for x in line.split("\t")[:2]}
    assert edge_ids and not edge_ids & held
    texts = {t.casefold() for i in held for c in [taxonomy[i]] for t in (c.name, c.definition, *c.synonyms)}
    pairs = [json.loads(line) for line in _gz_lines(out / "pairs.jsonl.gz")]
    assert len(pairs) == manifest["pairs"] == 2 * len(train) - 1  # name and synonym per concept; the root
    assert not any(p["query"].casefold() in texts or p["document"].casefold() in texts for p in pairs)
    # the edges file is the train closure the hierarchy objective samples
    assert len(_gz_lines(out / "edges.tsv.gz")) - 1 == sum(len(train.ancestors(i)) for i in train.concepts)


def test_relation_sets_judge_ancestors_descendants_and_synonyms(built: tuple[Taxonomy, Path, dict]) -> None:
    taxonomy, out, _ = built
    split = _split(out)
    held, validation = set(split["held_out"]), set(split["validation"])
    for relation, hops_of in (("broader", taxonomy.ancestors), ("narrower", taxonomy.descendants)):
        data = load_beir(out / "eval" / relation)
        assert data.queries and not held & set(data.corpus)  # answers are train concepts
        for qid, judged in data.qrels.items():
            concept, variant = qid.split("#")
            assert concept in held and variant in ("name", "definition")
            expected = {i: 4 - h for i, h in hops_of(concept).items() if h <= 3}
            assert judged == expected
            assert data.queries[qid] == getattr(taxonomy[concept], variant)
        tune, report = (
            load_beir(out / "eval" / relation, "tune"),
            load_beir(out / "eval" / relation, "report"),
        )
        assert {q.split("#")[0] for q in tune.qrels} <= validation
        assert not {q.split("#")[0] for q in report.qrels} & validation
        assert tune.qrels.keys() | report.qrels.keys() == data.qrels.keys()
    synonyms = load_beir(out / "eval" / "synonym")
    for qid, judged in synonyms.qrels.items():
        concept = qid.split("#")[0]
        assert judged == {concept: 1} and synonyms.queries[qid] in taxonomy[concept].synonyms
        assert synonyms.corpus[concept]["text"] == taxonomy[concept].text


def test_depth_probe_rows(built: tuple[Taxonomy, Path, dict]) -> None:
    taxonomy, out, _ = built
    split = _split(out)
    rows = [json.loads(line) for line in (out / "eval" / "levels.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rows} <= set(split["held_out"]) and rows
    for r in rows:
        assert r["depth"] == taxonomy.depth(r["id"]) and r["text"] == taxonomy[r["id"]].text
        assert r["part"] == ("tune" if r["id"] in split["validation"] else "report")
    by_level = sorted((r["level"], r["depth"]) for r in rows)
    assert [d for _, d in by_level] == sorted(d for _, d in by_level)  # levels ordered by depth


def test_subsumption_pairs(built: tuple[Taxonomy, Path, dict]) -> None:
    taxonomy, out, manifest = built
    split = _split(out)
    train = read_taxonomy(out / "train.jsonl.gz")
    for name, concepts in (("validation", split["validation"]), ("test", split["report"])):
        rows = [json.loads(line) for line in _gz_lines(out / "eval" / "subsumption" / f"{name}.jsonl.gz")]
        assert rows and {r["child"] for r in rows} <= set(concepts)
        for r in rows:
            ancestors = taxonomy.ancestors(r["child"])
            assert (r["candidate"] in ancestors) == bool(r["label"]) and r["candidate"] in train
            if r["label"]:
                assert r["hops"] == ancestors[r["candidate"]]
        for setting in ("random", "hard"):
            mine = [r for r in rows if r["setting"] == setting]
            assert sum(1 - r["label"] for r in mine) == OPTIONS.negatives * sum(r["label"] for r in mine)
        hard = [r for r in rows if r["setting"] == "hard" and not r["label"]]
        siblings = [
            r
            for r in hard
            if any(r["candidate"] in train.children(a) for a in taxonomy.ancestors(r["child"]))
        ]
        assert len(siblings) > 0.8 * len(hard)  # the ancestors' other children (topped up at random)
    assert manifest["subsumption"]["validation_positives"] > 0


def test_the_same_arguments_write_the_same_bytes(built: tuple[Taxonomy, Path, dict], tmp_path: Path) -> None:
    taxonomy, out, _ = built
    build_taxonomy_sets(taxonomy, tmp_path, OPTIONS)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert all((out / f).read_bytes() == (tmp_path / f).read_bytes() for f in files)


def test_pairs_without_a_definition_map_synonyms_to_the_name() -> None:
    t = Taxonomy([Concept("r", "root"), Concept("a", "angina", synonyms=("chest pain",), parents=("r",))])
    rows, dropped = contrastive_pairs(t, banned={"nothing"})
    assert rows == [{"query": "chest pain", "document": "angina"}] and dropped == 0
    assert contrastive_pairs(t, banned={"Chest Pain"}) == ([], 1)


def test_depth_levels() -> None:
    assert depth_levels({"a": 1, "b": 3, "c": 3}) == {"a": 1, "b": 2, "c": 2}
    many = {f"x{d}-{k}": d for d in range(1, 11) for k in range(10)}
    levels = depth_levels(many)
    assert set(levels.values()) == {1, 2, 3, 4, 5}
    assert all(levels[a] <= levels[b] for a in many for b in many if many[a] <= many[b])
    assert [sum(v == lvl for v in levels.values()) for lvl in range(1, 6)] == [20] * 5


def test_command_writes_a_folder_and_refuses_a_full_one(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    argv = [
        "taxonomy",
        "build",
        str(FIXTURES / "animals.obo"),
        "--out",
        str(out),
        "--held-out-fraction",
        "0.3",
    ]
    assert main(argv) == 0
    assert "10 concepts, 3 held out" in capsys.readouterr().out
    assert (out / "eval" / "broader" / "qrels" / "report.tsv").is_file()
    assert main(argv) == 2
    assert "is not empty (pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert main(["taxonomy", "build", "no-such-taxonomy", "--out", str(tmp_path / "x")]) == 2
    assert "not a bundled taxonomy (wordnet, icd10cm)" in capsys.readouterr().err


def test_a_wordnet_nouns_file_holds_out_only_its_own_held_out_synsets(tmp_path: Path) -> None:
    rows = [{"id": "s0", "gloss": "root gloss", "hypernyms": [], "split": "train"}]
    rows += [
        {
            "id": f"s{k}",
            "gloss": f"gloss {k}",
            "hypernyms": [f"s{k // 2}"],
            "split": "heldout" if k % 3 else "train",
        }
        for k in range(1, 60)
    ]
    nouns = tmp_path / "nouns.jsonl"
    nouns.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert (
        main(["taxonomy", "build", str(nouns), "--out", str(tmp_path / "out"), "--held-out-fraction", "0.2"])
        == 0
    )
    held = _split(tmp_path / "out")["held_out"]
    assert held and all(int(i[1:]) % 3 for i in held)
