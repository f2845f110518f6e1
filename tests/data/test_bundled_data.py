"""The committed real data in ``data/``: manifest integrity, WordNet numbers, splits, and FAQ leakage."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from lorentz_rag.data import bundled
from lorentz_rag.data.beir import load_beir
from lorentz_rag.data.bundled import (
    DataFormatError,
    data_dir,
    faq_dev_path,
    load_wordnet_levels,
    mlm_text_path,
    pair_paths,
    read_jsonl,
    wordnet_nouns_path,
)

WORDNET_NOUN_SYNSETS = 82_115
#: distinct (ancestor, descendant) pairs, self pairs excluded, over hypernym + instance-hypernym edges
WORDNET_CLOSURE_PAIRS = 743_241
LEAK_PREFIX_CHARS = 200
DATA_BUDGET_BYTES = 30 * 1024 * 1024


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return json.loads((data_dir() / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def nouns() -> list[dict[str, Any]]:
    return list(read_jsonl(wordnet_nouns_path()))


def rows_in(path: Path) -> int:
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8")
    return text.count("\n") - (1 if path.suffix == ".tsv" else 0)


def test_every_manifest_file_matches_its_sha256_size_and_rows(manifest: dict[str, Any]) -> None:
    files = manifest["files"]
    assert len(files) >= 11
    for rel, info in files.items():
        payload = (data_dir() / rel).read_bytes()
        assert hashlib.sha256(payload).hexdigest() == info["sha256"], rel
        assert len(payload) == info["bytes"], rel
        assert rows_in(data_dir() / rel) == info["rows"], rel
        assert info["source"] and info["license"] and info["purpose"], rel


def test_every_data_file_is_in_the_manifest_and_the_readme(manifest: dict[str, Any]) -> None:
    root = data_dir()
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert on_disk - {"manifest.json", "README.md"} == set(manifest["files"])
    readme = (root / "README.md").read_text(encoding="utf-8")
    for rel, info in manifest["files"].items():
        assert f"`{rel}`" in readme and info["sha256"] in readme, rel
    for package, version in manifest["sources"].items():
        assert f"`{package}` | `{version}`" in readme


def test_data_folder_stays_under_budget() -> None:
    total = sum(p.stat().st_size for p in data_dir().rglob("*") if p.is_file())
    assert total < DATA_BUDGET_BYTES


def test_gzip_members_are_reproducible(manifest: dict[str, Any]) -> None:
    for rel in manifest["files"]:
        if rel.endswith(".gz"):
            header = (data_dir() / rel).read_bytes()[:10]
            assert header[:3] == b"\x1f\x8b\x08" and header[4:8] == b"\0\0\0\0", f"{rel}: mtime not 0"


def test_wordnet_synset_count_ids_and_depths(nouns: list[dict[str, Any]]) -> None:
    assert len(nouns) == WORDNET_NOUN_SYNSETS
    by_id = {row["id"]: row for row in nouns}
    assert len(by_id) == len(nouns)
    assert len({row["offset"] for row in nouns}) == len(nouns)
    entity = by_id["entity.n.01"]
    assert entity["offset"] == "00001740" and entity["depth"] == 0
    assert by_id["dog.n.01"]["hypernyms"] == ["canine.n.02", "domestic_animal.n.01"]
    for row in nouns:
        parents = row["hypernyms"] + row["instance_hypernyms"]
        if row["id"] != "entity.n.01":
            assert row["depth"] == 1 + min(by_id[p]["depth"] for p in parents), row["id"]


def test_wordnet_transitive_closure_has_743241_pairs(nouns: list[dict[str, Any]]) -> None:
    parents = {row["id"]: row["hypernyms"] + row["instance_hypernyms"] for row in nouns}
    ancestors: dict[str, frozenset[str]] = {}
    for row in sorted(nouns, key=lambda r: r["depth"]):
        # a parent can be deeper than its child through another path, so resolve on demand
        stack = [row["id"]]
        while stack:
            node = stack[-1]
            todo = [p for p in parents[node] if p not in ancestors]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            if node not in ancestors:
                found = set(parents[node])
                for parent in parents[node]:
                    found |= ancestors[parent]
                ancestors[node] = frozenset(found)
    assert all(node not in anc for node, anc in ancestors.items())
    assert sum(len(anc) for anc in ancestors.values()) == WORDNET_CLOSURE_PAIRS
    # Instance edges are part of the definition: hypernym (@) edges alone give 663,508 pairs.
    assert sum(1 for row in nouns if row["instance_hypernyms"]) == 7_730


def test_heldout_split_is_about_ten_percent_and_never_trained_on(nouns: list[dict[str, Any]]) -> None:
    splits = Counter(row["split"] for row in nouns)
    assert set(splits) == {"train", "heldout"}
    assert 0.08 < splits["heldout"] / len(nouns) < 0.12
    train_pairs = {
        (r["query"], r["document"]) for r in read_jsonl(data_dir() / "train/pairs_wordnet_gloss.jsonl.gz")
    }
    assert len(train_pairs) <= splits["train"]
    for row in nouns:
        if row["split"] == "heldout":
            for lemma in row["lemmas"]:
                assert (lemma.replace("_", " "), row["gloss"]) not in train_pairs, row["id"]


def test_wordnet_levels_are_heldout_and_ordered_by_depth(nouns: list[dict[str, Any]]) -> None:
    by_id = {row["id"]: row for row in nouns}
    items = load_wordnet_levels()
    per_level = Counter(item.level for item in items)
    assert sorted(per_level) == [1, 2, 3, 4, 5]
    assert all(50 <= count <= 200 for count in per_level.values())
    depth_ranges = {}
    for item in items:
        synset = by_id[item.id]
        assert synset["split"] == "heldout" and synset["gloss"] == item.text and synset["depth"] == item.depth
        low, high = depth_ranges.get(item.level, (item.depth, item.depth))
        depth_ranges[item.level] = (min(low, item.depth), max(high, item.depth))
    for level in range(1, 5):
        assert depth_ranges[level][1] < depth_ranges[level + 1][0]


def test_training_files_have_expected_columns() -> None:
    assert [p.name for p in pair_paths()] == ["pairs_python_docs.jsonl.gz", "pairs_wordnet_gloss.jsonl.gz"]
    for path in pair_paths():
        for row in read_jsonl(path):
            assert set(row) == {"query", "document"} and row["query"] and row["document"], path
    lengths = [len(row["text"]) for row in read_jsonl(mlm_text_path())]
    assert len(lengths) > 5_000 and min(lengths) >= 200 and max(lengths) <= 1_500


def test_no_training_row_contains_an_faq_answer() -> None:
    faq = load_beir(faq_dev_path())
    prefixes = {" ".join(doc["text"].split())[:LEAK_PREFIX_CHARS] for doc in faq.corpus.values()}
    texts: list[str] = [row["text"] for row in read_jsonl(mlm_text_path())]
    for path in pair_paths():
        texts.extend(f"{row['query']}\n{row['document']}" for row in read_jsonl(path))
    haystack = "\n\0\n".join(" ".join(text.split()) for text in texts)
    leaked = [prefix for prefix in prefixes if prefix in haystack]
    assert not leaked, f"{len(leaked)} FAQ answers appear in training data, e.g. {leaked[0][:80]!r}"
    # The check is live: a known training sentence is found by the same search.
    assert " ".join(texts[0].split())[:LEAK_PREFIX_CHARS] in haystack


def test_data_dir_honours_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(bundled.DATA_DIR_ENV, str(tmp_path))
    assert data_dir() == tmp_path
    assert faq_dev_path() == tmp_path / "eval" / "faq-dev"
    monkeypatch.setenv(bundled.DATA_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="LORENTZ_RAG_DATA_DIR"):
        data_dir()


def test_read_jsonl_reports_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b'{"text": "ok"}\n\n{"text": oops}\n')
    with pytest.raises(DataFormatError, match=r"rows\.jsonl\.gz:3: invalid JSON"):
        list(read_jsonl(path))
    path.write_bytes(gzip.compress(b'{"text": "\xe9"}\n'))
    with pytest.raises(DataFormatError, match=r"rows\.jsonl\.gz:1: not valid UTF-8"):
        list(read_jsonl(path))
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataFormatError, match="not a readable gzip file"):
        list(read_jsonl(path))


def test_load_wordnet_levels_rejects_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "levels.jsonl"
    path.write_text(
        '{"level": 1, "id": "a.n.01", "depth": 2, "text": "x"}\n{"level": 0, "id": "b", "text": "y"}\n'
    )
    with pytest.raises(DataFormatError, match=r"levels\.jsonl:2: 'level' must be an integer >= 1"):
        load_wordnet_levels(path)


# --- the hierarchical retrieval set and the tune / report parts ---------------------------------------


def test_wordnet_hier_queries_are_heldout_and_judge_train_ancestors_by_hops(
    nouns: list[dict[str, Any]],
) -> None:
    by_id = {r["id"]: r for r in nouns}
    data = load_beir(bundled.wordnet_hier_path(), "test")
    assert len(data.queries) == 1000 and len(data.corpus) == 5000
    synsets = {q.split("#")[0] for q in data.queries}
    assert len(synsets) == 500 and all(by_id[s]["split"] == "heldout" for s in synsets)
    assert all(by_id[d]["split"] == "train" for d in data.corpus)
    assert all(data.corpus[d]["text"] == by_id[d]["gloss"] for d in data.corpus)
    for qid, judged in data.qrels.items():
        synset, variant = qid.split("#")
        assert data.queries[qid] == (
            by_id[synset]["gloss"] if variant == "gloss" else by_id[synset]["lemmas"][0].replace("_", " ")
        )
        parents = by_id[synset]["hypernyms"] + by_id[synset]["instance_hypernyms"]
        # Every direct hypernym is judged 3; grandparents 2 (unless also a parent).
        assert all(judged[p] == 3 for p in parents)
        for p in parents:
            for g in by_id[p]["hypernyms"] + by_id[p]["instance_hypernyms"]:
                if g in judged and g not in parents:
                    assert judged[g] == 2
        assert set(judged.values()) <= {1, 2, 3}


@pytest.mark.parametrize("folder", ["faq-dev", "wordnet-hier"])
def test_tune_and_report_parts_partition_the_queries_by_the_library_rule(folder: str) -> None:
    path = data_dir() / "eval" / folder
    test, tune, report = (load_beir(path, split) for split in ("test", "tune", "report"))
    assert not set(tune.qrels) & set(report.qrels)
    assert set(tune.qrels) | set(report.qrels) == set(test.qrels)
    assert {**tune.qrels, **report.qrels} == dict(test.qrels)
    assert min(len(tune.qrels), len(report.qrels)) > 0.35 * len(test.qrels)
    for part, data in (("tune", tune), ("report", report)):
        assert all(bundled.part_of(q.split("#")[0]) == part for q in data.qrels)


def test_probe_items_split_by_the_same_rule() -> None:
    parts = Counter(bundled.part_of(item.id) for item in load_wordnet_levels())
    assert set(parts) == {"tune", "report"} and min(parts.values()) > 350
