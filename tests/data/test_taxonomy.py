"""Taxonomies: the JSONL format and its errors, OBO and SKOS converting to the same taxonomy, the graph
queries, restrict, the WordNet nouns file, and the seeded concept-level split."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from _taxonomy_cases import random_taxonomy

from lorentz_rag.data.bundled import data_dir, taxonomy_path, wordnet_nouns_path
from lorentz_rag.data.jsonl import DataFormatError
from lorentz_rag.data.taxonomy import (
    Concept,
    Taxonomy,
    TaxonomyError,
    read_taxonomy,
    read_training_taxonomy,
    split_taxonomy,
    wordnet_held_out_ids,
    write_taxonomy,
)

FIXTURES = Path(__file__).parent / "fixtures"
ANIMALS = FIXTURES / "animals.jsonl"


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


@pytest.fixture
def animals() -> Taxonomy:
    return read_taxonomy(ANIMALS)


@pytest.mark.parametrize("name", ["animals.obo", "animals.ttl"])
def test_obo_and_skos_fixtures_convert_to_the_jsonl_taxonomy(animals: Taxonomy, name: str) -> None:
    other = read_taxonomy(FIXTURES / name)
    assert set(other.concepts) == set(animals.concepts)
    for concept_id, concept in animals.concepts.items():
        assert other[concept_id] == concept, concept_id
    assert other == animals


def test_obo_keeps_exact_synonyms_and_is_a_only_and_skips_obsolete_terms() -> None:
    obo = read_taxonomy(FIXTURES / "animals.obo")
    assert "EX:0011" not in obo  # is_obsolete: true
    assert obo["EX:0003"].synonyms == ("mammalian",)  # the BROAD "beast" is left out
    assert obo["EX:0004"].synonyms == ()  # the NARROW "songbird" too
    assert obo["EX:0005"].parents == ("EX:0003", "EX:0008")  # part_of is not is-a
    assert obo.where("EX:0003").endswith("animals.obo:17")


def test_skos_reads_narrower_notation_and_language(animals: Taxonomy) -> None:
    skos = read_taxonomy(FIXTURES / "animals.ttl")
    assert skos["EX:0006"].parents == ("EX:0003", "EX:0008")  # broader mammal + pet's narrower
    assert skos["EX:0002"].synonyms == ("craniate",)  # the @fr altLabel is another language
    assert skos["EX:0003"].synonyms == ("mammalian",)  # hiddenLabel is left out
    assert "EX:0011" not in skos  # owl:deprecated


def test_graph_queries(animals: Taxonomy) -> None:
    assert len(animals) == 10 and "EX:0005" in animals and "nope" not in animals
    assert animals.roots() == ["EX:0001"]
    assert animals.children("EX:0003") == ["EX:0005", "EX:0006"]
    assert animals.ancestors("EX:0005") == {"EX:0003": 1, "EX:0008": 1, "EX:0002": 2, "EX:0001": 2}
    assert animals.descendants("EX:0002") == {
        "EX:0003": 1,
        "EX:0004": 1,
        "EX:0005": 2,
        "EX:0006": 2,
        "EX:0007": 2,
    }
    assert [animals.depth(i) for i in ("EX:0001", "EX:0005", "EX:0007")] == [0, 2, 3]
    assert ("EX:0005", "EX:0008") in animals.edges() and len(animals.edges()) == 11
    assert animals["EX:0007"].text == "sparrow" and animals["EX:0008"].text.startswith("an animal kept")
    with pytest.raises(KeyError, match="no concept 'nope'"):
        animals["nope"]


def test_restrict_reattaches_or_drops(animals: Taxonomy) -> None:
    keep = [i for i in animals.concepts if i not in {"EX:0003", "EX:0002"}]
    attached = animals.restrict(keep)
    # dog's parents mammal (dropped) -> vertebrate (dropped) -> animal, but animal is already above pet
    assert attached["EX:0005"].parents == ("EX:0008",)
    assert attached["EX:0004"].parents == ("EX:0001",)
    assert attached.ancestors("EX:0005") == {"EX:0008": 1, "EX:0001": 2}
    dropped = animals.restrict(keep, reattach=False)
    assert dropped["EX:0004"].parents == () and dropped["EX:0005"].parents == ("EX:0008",)
    with pytest.raises(KeyError, match="not concepts"):
        animals.restrict(["EX:0001", "zzz"])


def test_write_and_read_back(animals: Taxonomy, tmp_path: Path) -> None:
    for name in ("t.jsonl", "t.jsonl.gz"):
        assert read_taxonomy(write_taxonomy(animals, tmp_path / name)) == animals
    gz = tmp_path / "t.jsonl.gz"
    assert (
        gz.read_bytes() == write_taxonomy(animals, tmp_path / "again.jsonl.gz").read_bytes()
    )  # reproducible


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"id": "a", "name": "A"}, {"id": "a", "name": "B"}],
            r"t\.jsonl:2: duplicate concept id 'a' \(first at .*t\.jsonl:1\)",
        ),
        (
            [{"id": "a", "name": "A"}, {"id": "b", "name": "  "}],
            r"t\.jsonl:2: concept 'b' has an empty 'name'",
        ),
        (
            [{"id": "a", "name": "A"}, {"id": "b", "name": "B", "parents": ["c"]}],
            r"t\.jsonl:2: .*unknown parent 'c'",
        ),
        ([{"id": "a", "name": "A", "parents": ["a"]}], r"t\.jsonl:1: concept 'a' is its own parent"),
        ([{"id": "a", "name": "A"}, "{not json"], r"t\.jsonl:2: invalid JSON"),
        (
            [{"id": "a", "name": "A", "parent": ["x"]}],
            r"t\.jsonl:1: unknown key 'parent' \(did you mean 'parents'\?\)",
        ),
        ([{"id": "a", "name": "A", "synonyms": "x"}], r"t\.jsonl:1: 'synonyms' must be a list of strings"),
        ([{"name": "A"}], r"t\.jsonl:1: field 'id' is missing"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path: Path, rows: list[object], message: str) -> None:
    with pytest.raises(DataFormatError, match=message):  # TaxonomyError derives from it
        read_taxonomy(_write(tmp_path / "t.jsonl", rows))


def test_cycle_is_named(tmp_path: Path) -> None:
    rows = [
        {"id": "r", "name": "R"},
        {"id": "a", "name": "A", "parents": ["c"]},
        {"id": "b", "name": "B", "parents": ["a"]},
        {"id": "c", "name": "C", "parents": ["b"]},
    ]
    with pytest.raises(TaxonomyError) as caught:
        read_taxonomy(_write(tmp_path / "t.jsonl", rows))
    message = str(caught.value)
    assert "is-a cycle" in message and "t.jsonl:" in message
    cycle = message.split("is-a cycle ")[1].split(" -> ")
    assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown taxonomy format"):
        read_taxonomy(_write(tmp_path / "t.csv", ["x"]))
    with pytest.raises(FileNotFoundError, match="taxonomy file not found"):
        read_taxonomy(tmp_path / "missing.obo")


def test_wordnet_nouns_file_loads_as_a_taxonomy(tmp_path: Path) -> None:
    rows = [
        {
            "id": "entity.n.01",
            "lemmas": ["entity"],
            "gloss": "what exists",
            "hypernyms": [],
            "instance_hypernyms": [],
            "split": "train",
        },
        {
            "id": "dog.n.01",
            "lemmas": ["dog", "domestic_dog"],
            "gloss": "a canine",
            "hypernyms": ["entity.n.01"],
            "instance_hypernyms": [],
            "split": "heldout",
        },
        {
            "id": "rex.n.01",
            "lemmas": ["Rex"],
            "gloss": "a dog",
            "hypernyms": [],
            "instance_hypernyms": ["dog.n.01"],
            "split": "train",
        },
    ]
    path = tmp_path / "nouns.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    full = read_taxonomy(path)
    assert full["dog.n.01"] == Concept("dog.n.01", "dog", "a canine", ("domestic dog",), ("entity.n.01",))
    assert full["rex.n.01"].parents == ("dog.n.01",) and full.depth("rex.n.01") == 2
    train = read_training_taxonomy(path)
    assert list(train.concepts) == ["entity.n.01", "rex.n.01"] and train["rex.n.01"].parents == ()
    assert read_training_taxonomy(ANIMALS) == read_taxonomy(ANIMALS)  # any other file: whole


def test_bundled_wordnet_converts() -> None:
    wordnet = read_taxonomy(wordnet_nouns_path())
    assert len(wordnet) == 82115 and wordnet.roots() == ["entity.n.01"]
    assert wordnet["physical_entity.n.01"].parents == ("entity.n.01",)
    assert all(c.definition for c in wordnet)


def test_split_is_seeded_and_keeps_held_out_concepts_out_of_train(animals: Taxonomy) -> None:
    t = random_taxonomy()
    split = split_taxonomy(t, held_out_fraction=0.1, seed=3)
    assert split == split_taxonomy(t, held_out_fraction=0.1, seed=3)
    assert split.held_out != split_taxonomy(t, held_out_fraction=0.1, seed=4).held_out
    held = set(split.held_out)
    assert len(held) == 40 and set(split.validation) <= held and len(split.validation) == 20
    assert set(split.report) == held - set(split.validation)
    assert not held & set(split.train.concepts) and len(split.train) == len(t) - len(held)
    assert not any(p in held for c in split.train for p in c.parents)
    for concept_id in held:
        # every ancestor and descendant of a held-out concept is in train
        assert set(t.ancestors(concept_id)) <= set(split.train.concepts)
        assert set(t.descendants(concept_id)) <= set(split.train.concepts)
        # a train descendant keeps its train ancestors
        for d in t.descendants(concept_id):
            assert {a for a in t.ancestors(d) if a not in held} == set(split.train.ancestors(d))
    assert {split.part(i) for i in split.validation} == {"tune"}
    assert {split.part(i) for i in split.report} == {"report"}
    with pytest.raises(KeyError, match="not a held-out concept"):
        split.part("c0")


def test_split_removes_train_synonyms_equal_to_held_out_names() -> None:
    concepts = [
        Concept("r", "root"),
        Concept("a", "alpha", parents=("r",), synonyms=("Beta", "gamma")),
        Concept("b", "beta", parents=("r",)),
    ]
    t = Taxonomy(concepts)
    for seed in range(20):
        split = split_taxonomy(t, held_out_fraction=0.34, seed=seed)
        if split.held_out == ("b",):
            assert split.train["a"].synonyms == ("gamma",)
            break
    else:
        pytest.fail("no seed held out 'b'")


def test_split_arguments_are_checked(animals: Taxonomy) -> None:
    with pytest.raises(ValueError, match="held_out_fraction"):
        split_taxonomy(animals, held_out_fraction=0.0)
    with pytest.raises(ValueError, match="validation_fraction"):
        split_taxonomy(animals, validation_fraction=1.5)
    with pytest.raises(ValueError, match="no concept with a parent"):
        split_taxonomy(Taxonomy([Concept("a", "A")]))


def test_split_candidates_limit_what_is_held_out() -> None:
    t = random_taxonomy()
    allowed = [f"c{k}" for k in range(200, 400)]
    split = split_taxonomy(t, held_out_fraction=0.1, seed=0, candidates=allowed)
    assert set(split.held_out) <= set(allowed) and len(split.held_out) == 40


def test_wordnet_held_out_ids(tmp_path: Path) -> None:
    rows = [
        {"id": "e", "gloss": "g", "hypernyms": [], "split": "train"},
        {"id": "d", "gloss": "g", "hypernyms": ["e"], "split": "heldout"},
    ]
    path = tmp_path / "nouns.jsonl"
    _write(path, rows)
    assert wordnet_held_out_ids(path) == ["d"]
    assert wordnet_held_out_ids(ANIMALS) is None and wordnet_held_out_ids(FIXTURES / "animals.obo") is None


def test_bundled_icd10cm_is_a_taxonomy() -> None:
    icd = read_taxonomy(taxonomy_path("icd10cm"))
    stats = json.loads((data_dir() / "manifest.json").read_text())["stats"]
    assert len(icd) == stats["icd10cm_concepts"] > 40000
    assert icd.roots() == [f"chapter-{n}" for n in range(1, 23)]
    assert icd["A00-A09"].name == "Intestinal infectious diseases" and icd["A00-A09"].parents == (
        "chapter-1",
    )
    assert icd["I20.0"].parents == ("I20",) and "Crescendo angina" in icd["I20.0"].synonyms
    assert icd["B10"].parents == ("chapter-1",)  # a block that is its own category: one concept
    assert not any(c.definition for c in icd) and max(icd.depth(i) for i in icd.concepts) <= 6
    assert "S52.521A" not in icd  # 7th-character extensions are left out
    with pytest.raises(ValueError, match="no bundled taxonomy 'umls'"):
        taxonomy_path("umls")
