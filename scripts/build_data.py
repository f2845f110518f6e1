#!/usr/bin/env python3
"""Build the bundled real data in ``data/`` from Debian packages.

Sources (fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x``):

* ``wordnet-base``   -- WordNet 3.0 noun database (``data.noun``, ``index.noun``).
* ``python3.11-doc`` -- reST sources of the Python 3.11 documentation.
* ``debian-faq``     -- the Debian GNU/Linux FAQ as plain text.

Outputs (all paths relative to ``--out``, default ``<repo>/data``):

* ``wordnet/nouns.jsonl.gz``            every noun synset with hypernyms, depth and train/heldout split.
* ``train/mlm_python_docs.jsonl.gz``    ``{"text"}`` chunks of the Python docs (no FAQ material).
* ``train/pairs_wordnet_gloss.jsonl.gz`` ``{"query", "document"}``: lemma -> gloss of TRAIN synsets.
* ``train/pairs_python_docs.jsonl.gz``  ``{"query", "document"}``: section title -> section body.
* ``eval/faq-dev/``                     BEIR folder: Python FAQ + Debian FAQ question -> answer.
* ``eval/wordnet-levels.jsonl``         glosses of HELD-OUT synsets grouped into depth levels 1..5.
* ``eval/wordnet-hier/``                BEIR folder: HELD-OUT synset (name or gloss) -> its ancestors among
                                        several thousand TRAIN glosses, graded by hops (parent highest).
* ``eval/*/qrels/{tune,report}.tsv``    every BEIR set split into a tuning part and a reporting part.
* ``taxonomies/icd10cm.jsonl.gz``       ICD-10-CM chapters, blocks, categories and subcategories as a taxonomy
                                        (our format; from the ``simple-icd-10-cm`` Python package, not Debian).
* ``LICENSES/*``                        the license texts shipped with the source packages.
* ``manifest.json`` and ``README.md``   sha256, byte size and row count of every file above.

The build is deterministic: gzip members carry ``mtime=0`` and a fixed name, rows are written in a
stable order, and the held-out split and samples are derived from sha256 hashes, so running the
script twice yields byte-identical files.

Usage::

    python scripts/build_data.py                 # fetch pinned package versions, write data/
    python scripts/build_data.py --latest        # fetch whatever version apt offers now
    python scripts/build_data.py --root /tmp/x   # reuse a tree already unpacked with dpkg-deb -x
    python scripts/build_data.py --derived-only  # rebuild only what derives from data/ (hierarchy set, splits)
                                                 # and the ICD-10-CM taxonomy (needs only the Python package)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Package versions the committed data was built from (Debian 12 "bookworm").
PINNED_PACKAGES: dict[str, str] = {
    "wordnet-base": "1:3.0-37",
    "python3.11-doc": "3.11.2-6+deb12u9",
    "debian-faq": "11.1",
}

WORDNET_DIR = "usr/share/wordnet"
PYDOC_SOURCES = "usr/share/doc/python3.11/html/_sources"
DEBIAN_FAQ_TXT = "usr/share/doc/debian/FAQ/debian-faq.en.txt.gz"
LICENSE_SOURCES: dict[str, str] = {
    "LICENSES/WordNet-3.0.txt": "usr/share/doc/wordnet-base/copyright",
    "LICENSES/Python-docs-PSF.txt": "usr/share/doc/python3.11-doc/copyright",
    "LICENSES/Debian-FAQ.txt": "usr/share/doc/debian-faq/copyright",
}

ROOT_SYNSET_OFFSET = "00001740"  # entity.n.01
HELDOUT_MODULUS = 10  # one synset in ten (by hash of its offset) is held out of training
#: Depth bins of the hierarchy probe: level -> inclusive (min_depth, max_depth).
LEVEL_DEPTHS: dict[int, tuple[int, int]] = {1: (2, 4), 2: (5, 6), 3: (7, 8), 4: (9, 10), 5: (11, 99)}
LEVEL_CAP = 200
LEVEL_MIN = 50
#: Hierarchical retrieval set: held-out query synsets (depth >= HIER_MIN_DEPTH, every direct hypernym in the
#: train split), ancestors judged up to HIER_MAX_HOPS hops with grade HIER_MAX_HOPS + 1 - hops, and a corpus
#: of their train-split ancestors plus hash-sampled train glosses up to HIER_CORPUS_SIZE.
HIER_QUERY_SYNSETS = 500
HIER_MIN_DEPTH = 4
HIER_MAX_HOPS = 3
HIER_CORPUS_SIZE = 5000
#: Tune/report parts: sha256("part:<key>") even -> tune, odd -> report (lorentz_rag.data.bundled.part_of).
PARTS = ("tune", "report")

CHUNK_MIN_CHARS = 200
CHUNK_MAX_CHARS = 1500
PAIR_MIN_BODY_CHARS = 100
LEAK_PREFIX_CHARS = 200
#: Section titles that mark question-and-answer collections inside the Python docs.
QA_TITLE_RE = re.compile(r"\bFAQ\b|frequently asked|^how do i\b", re.IGNORECASE)


class BuildError(RuntimeError):
    """A source file did not have the format this script expects."""


def fail(path: Path | str, line: int, message: str) -> BuildError:
    """Return a :class:`BuildError` naming ``path:line``."""
    return BuildError(f"{path}:{line}: {message}")


# ---------------------------------------------------------------------------------------------------------
# Fetching
# ---------------------------------------------------------------------------------------------------------


def fetch_packages(workdir: Path, latest: bool) -> tuple[Path, dict[str, str]]:
    """Download the source packages into ``workdir`` and unpack them into ``workdir/root``.

    Returns the unpack root and ``{package: version}`` as recorded in each ``.deb``.
    """
    root = workdir / "root"
    root.mkdir(parents=True, exist_ok=True)
    versions: dict[str, str] = {}
    for package, version in sorted(PINNED_PACKAGES.items()):
        spec = package if latest else f"{package}={version}"
        result = subprocess.run(
            ["apt-get", "download", spec], cwd=workdir, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise BuildError(
                f"apt-get download {spec} failed (exit {result.returncode}): {result.stderr.strip()}\n"
                "Run `apt-get update` first; if the pinned version left the archive, pass --latest "
                "and commit the rebuilt data together with its new manifest."
            )
        debs = sorted(workdir.glob(f"{package}_*.deb"))
        if len(debs) != 1:
            raise BuildError(f"expected one {package}_*.deb in {workdir}, found {[d.name for d in debs]}")
        fields = subprocess.run(
            ["dpkg-deb", "-f", str(debs[0]), "Version"], capture_output=True, text=True, check=True
        )
        versions[package] = fields.stdout.strip()
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(root)], check=True)
    return root, versions


def installed_versions(root: Path) -> dict[str, str]:
    """Versions for ``--root`` builds: read from ``root/versions.json`` if present, else the pins."""
    path = root / "versions.json"
    if path.exists():
        return dict(json.loads(path.read_text(encoding="utf-8")))
    return dict(PINNED_PACKAGES)


# ---------------------------------------------------------------------------------------------------------
# Deterministic writers
# ---------------------------------------------------------------------------------------------------------


def json_line(row: dict[str, object]) -> str:
    """One JSONL line, keys in insertion order, UTF-8 kept as is."""
    return json.dumps(row, ensure_ascii=False) + "\n"


def write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path``; a ``.gz`` path gets a reproducible gzip member (mtime 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        buffer = io.BytesIO()
        # filename and mtime are stored in the gzip header; fix both so rebuilds are byte-identical.
        with gzip.GzipFile(filename=path.stem, mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as gz:
            gz.write(payload)
        payload = buffer.getvalue()
    path.write_bytes(payload)


def write_jsonl(path: Path, rows: Iterable[dict[str, object]]) -> int:
    """Write ``rows`` as JSONL (gzipped if the name ends in ``.gz``); return the row count."""
    lines = [json_line(row) for row in rows]
    write_bytes(path, "".join(lines).encode("utf-8"))
    return len(lines)


def stable_hash(text: str) -> int:
    """A platform-independent integer hash of ``text`` (sha256)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def normalize_space(text: str) -> str:
    """Collapse every run of whitespace to one space (used for leakage checks)."""
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------------------
# WordNet
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Synset:
    """One noun synset as read from ``data.noun``."""

    offset: str
    lex_filenum: int
    lemmas: list[str]
    hypernyms: list[str]  # offsets, pointer symbol "@"
    instance_hypernyms: list[str]  # offsets, pointer symbol "@i"
    gloss: str
    name: str = ""
    depth: int = -1
    split: str = "train"
    line: int = 0


def parse_data_noun(path: Path) -> dict[str, Synset]:
    """Parse WordNet's ``data.noun`` (format: wndb(5WN)); returns synsets keyed by offset, file order."""
    synsets: dict[str, Synset] = {}
    with path.open(encoding="utf-8") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if raw.startswith("  "):  # license header
                continue
            head, bar, gloss = raw.rstrip("\n").partition(" | ")
            if not bar:
                raise fail(path, lineno, "no ' | ' separating the synset fields from the gloss")
            fields = head.split()
            try:
                offset, lex_filenum, ss_type = fields[0], int(fields[1]), fields[2]
                w_cnt = int(fields[3], 16)
                pos = 4
                lemmas = [fields[pos + 2 * i] for i in range(w_cnt)]
                pos += 2 * w_cnt
                p_cnt = int(fields[pos])
                pos += 1
                hypernyms: list[str] = []
                instances: list[str] = []
                for _ in range(p_cnt):
                    symbol, target, target_pos, _source_target = fields[pos : pos + 4]
                    pos += 4
                    if target_pos != "n" and symbol in ("@", "@i"):
                        raise fail(path, lineno, f"hypernym pointer to non-noun {target}")
                    if symbol == "@":
                        hypernyms.append(target)
                    elif symbol == "@i":
                        instances.append(target)
            except (IndexError, ValueError) as error:
                raise fail(path, lineno, f"malformed synset line ({error})") from error
            if pos != len(fields):
                raise fail(path, lineno, f"{len(fields) - pos} unexpected trailing fields before the gloss")
            if ss_type != "n" or len(offset) != 8 or not offset.isdigit():
                raise fail(
                    path, lineno, f"expected a noun synset with an 8-digit offset, got {offset} {ss_type}"
                )
            if w_cnt == 0:
                raise fail(path, lineno, "synset without lemmas")
            synsets[offset] = Synset(
                offset=offset,
                lex_filenum=lex_filenum,
                lemmas=lemmas,
                hypernyms=hypernyms,
                instance_hypernyms=instances,
                gloss=gloss.strip(),
                line=lineno,
            )
    return synsets


def parse_index_noun(path: Path) -> dict[tuple[str, str], int]:
    """Parse ``index.noun``; return ``{(lemma, offset): sense_number}`` (1-based, index order)."""
    senses: dict[tuple[str, str], int] = {}
    with path.open(encoding="utf-8") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if raw.startswith("  "):
                continue
            fields = raw.split()
            try:
                lemma, synset_cnt, p_cnt = fields[0], int(fields[2]), int(fields[3])
                offsets = fields[4 + p_cnt + 2 :]
            except (IndexError, ValueError) as error:
                raise fail(path, lineno, f"malformed index line ({error})") from error
            if len(offsets) != synset_cnt:
                raise fail(path, lineno, f"synset_cnt {synset_cnt} but {len(offsets)} offsets")
            for sense, offset in enumerate(offsets, start=1):
                senses[(lemma, offset)] = sense
    return senses


def name_synsets(synsets: dict[str, Synset], senses: dict[tuple[str, str], int], index_path: Path) -> None:
    """Give every synset its ``lemma.n.NN`` name (first lemma, lower case, sense number from the index)."""
    seen: dict[str, str] = {}
    for synset in synsets.values():
        lemma = synset.lemmas[0].lower()
        sense = senses.get((lemma, synset.offset))
        if sense is None:
            raise fail(index_path, 0, f"no index entry for lemma {lemma!r} of synset {synset.offset}")
        name = f"{lemma}.n.{sense:02d}"
        if name in seen:
            raise BuildError(f"synset name {name} given to both {seen[name]} and {synset.offset}")
        seen[name] = synset.offset
        synset.name = name


def assign_depths(synsets: dict[str, Synset], data_path: Path) -> None:
    """Set ``depth`` = shortest path length to entity.n.01 over hypernym and instance-hypernym edges."""
    children: dict[str, list[str]] = {offset: [] for offset in synsets}
    for synset in synsets.values():
        for parent in synset.hypernyms + synset.instance_hypernyms:
            if parent not in synsets:
                raise fail(data_path, synset.line, f"hypernym {parent} is not a noun synset")
            children[parent].append(synset.offset)
    synsets[ROOT_SYNSET_OFFSET].depth = 0
    queue = deque([ROOT_SYNSET_OFFSET])
    while queue:
        offset = queue.popleft()
        for child in children[offset]:
            if synsets[child].depth < 0:
                synsets[child].depth = synsets[offset].depth + 1
                queue.append(child)
    orphans = [s for s in synsets.values() if s.depth < 0]
    if orphans:
        raise fail(data_path, orphans[0].line, f"{len(orphans)} synsets do not reach entity.n.01")


def transitive_closure_size(synsets: dict[str, Synset]) -> int:
    """Count distinct (ancestor, descendant) pairs, self pairs excluded, over ``@`` and ``@i`` edges."""
    ancestors: dict[str, frozenset[str]] = {}
    for start in synsets:
        stack = [start]
        while stack:
            offset = stack[-1]
            if offset in ancestors:
                stack.pop()
                continue
            parents = synsets[offset].hypernyms + synsets[offset].instance_hypernyms
            pending = [p for p in parents if p not in ancestors]
            if pending:
                stack.extend(pending)
                continue
            found: set[str] = set()
            for parent in parents:
                found.add(parent)
                found |= ancestors[parent]
            ancestors[offset] = frozenset(found)
            stack.pop()
    return sum(len(a) for a in ancestors.values())


def split_of(offset: str) -> str:
    """Deterministic ~10% held-out split by hash of the synset offset."""
    return "heldout" if stable_hash(f"wordnet-noun:{offset}") % HELDOUT_MODULUS == 0 else "train"


def build_wordnet(root: Path) -> tuple[dict[str, Synset], dict[str, int]]:
    """Read, name, date and split the noun synsets; return them with summary statistics."""
    data_path = root / WORDNET_DIR / "data.noun"
    index_path = root / WORDNET_DIR / "index.noun"
    synsets = parse_data_noun(data_path)
    name_synsets(synsets, parse_index_noun(index_path), index_path)
    assign_depths(synsets, data_path)
    for synset in synsets.values():
        synset.split = split_of(synset.offset)
    stats = {
        "synsets": len(synsets),
        "hypernym_edges": sum(len(s.hypernyms) for s in synsets.values()),
        "instance_hypernym_edges": sum(len(s.instance_hypernyms) for s in synsets.values()),
        "closure_pairs": transitive_closure_size(synsets),
        "heldout_synsets": sum(s.split == "heldout" for s in synsets.values()),
        "max_depth": max(s.depth for s in synsets.values()),
    }
    return synsets, stats


def wordnet_rows(synsets: dict[str, Synset]) -> Iterator[dict[str, object]]:
    """Rows of ``wordnet/nouns.jsonl.gz`` in ``data.noun`` order."""
    for s in synsets.values():
        yield {
            "id": s.name,
            "offset": s.offset,
            "lemmas": s.lemmas,
            "gloss": s.gloss,
            "hypernyms": [synsets[o].name for o in s.hypernyms],
            "instance_hypernyms": [synsets[o].name for o in s.instance_hypernyms],
            "depth": s.depth,
            "split": s.split,
        }


def level_of(depth: int) -> int | None:
    """Probe level (1 general .. 5 specific) of a synset depth, or None below level 1."""
    for level, (low, high) in LEVEL_DEPTHS.items():
        if low <= depth <= high:
            return level
    return None


def wordnet_level_rows(synsets: dict[str, Synset]) -> list[dict[str, object]]:
    """Held-out glosses by depth level; a hash-ordered sample of at most ``LEVEL_CAP`` per level."""
    by_level: dict[int, list[Synset]] = {level: [] for level in LEVEL_DEPTHS}
    for synset in synsets.values():
        level = level_of(synset.depth)
        if synset.split == "heldout" and level is not None:
            by_level[level].append(synset)
    rows: list[dict[str, object]] = []
    for level, members in by_level.items():
        if len(members) < LEVEL_MIN:
            raise BuildError(f"level {level} has only {len(members)} held-out synsets (< {LEVEL_MIN})")
        sample = sorted(members, key=lambda s: (stable_hash(f"level:{s.offset}"), s.offset))[:LEVEL_CAP]
        for synset in sorted(sample, key=lambda s: s.offset):
            rows.append({"level": level, "id": synset.name, "depth": synset.depth, "text": synset.gloss})
    return rows


def wordnet_pair_rows(synsets: dict[str, Synset]) -> list[dict[str, object]]:
    """Lemma -> gloss pairs of TRAIN synsets: one pair per synset, its first lemma as the query."""
    return [
        {"query": s.lemmas[0].replace("_", " "), "document": s.gloss}
        for s in synsets.values()
        if s.split == "train"
    ]


def part_of(key: str) -> str:
    """``tune`` or ``report``: the half of an evaluation set a query (or probe item) belongs to."""
    return PARTS[stable_hash(f"part:{key}") % 2]


def _ancestor_hops(start: str, parents: dict[str, list[str]], limit: int) -> dict[str, int]:
    """``{ancestor id: shortest is-a hop count}`` of ``start``, at most ``limit`` hops (itself excluded)."""
    hops: dict[str, int] = {}
    frontier = [start]
    for h in range(1, limit + 1):
        nxt = []
        for node in frontier:
            for p in parents[node]:
                if p not in hops and p != start:
                    hops[p] = h
                    nxt.append(p)
        frontier = nxt
    return hops


def wordnet_hier_beir(
    nouns: list[dict[str, object]],
) -> tuple[list[dict[str, object]], list[dict[str, object]], dict[str, list[str]]]:
    """The hierarchical retrieval set from the rows of ``wordnet/nouns.jsonl.gz``.

    Queries: ``HIER_QUERY_SYNSETS`` held-out synsets (hash-ordered sample), each twice: its name (first
    lemma) and its gloss, ids ``<synset>#name`` / ``<synset>#gloss``. Corpus: train-split glosses, ids the
    synset ids. Qrels: train ancestors within ``HIER_MAX_HOPS`` hops, grade ``HIER_MAX_HOPS + 1 - hops``.
    Returns (corpus, queries, {split: qrels lines with header}) for splits test / tune / report; both
    variants of one synset fall into the same part.
    """
    by_id = {str(r["id"]): r for r in nouns}
    parents = {i: [*r["hypernyms"], *r["instance_hypernyms"]] for i, r in by_id.items()}  # type: ignore[misc]
    train = {i for i, r in by_id.items() if r["split"] == "train"}
    candidates = [
        i
        for i, r in by_id.items()
        if r["split"] == "heldout"
        and int(r["depth"]) >= HIER_MIN_DEPTH  # type: ignore[arg-type]
        and parents[i]
        and all(p in train for p in parents[i])
    ]
    chosen = sorted(candidates, key=lambda i: (stable_hash(f"hier:{by_id[i]['offset']}"), i))[
        :HIER_QUERY_SYNSETS
    ]
    judged: dict[str, dict[str, int]] = {}
    for synset in chosen:
        hops = _ancestor_hops(synset, parents, HIER_MAX_HOPS)
        judged[synset] = {a: HIER_MAX_HOPS + 1 - h for a, h in hops.items() if a in train}
    corpus_ids = {a for rel in judged.values() for a in rel}
    if len(corpus_ids) > HIER_CORPUS_SIZE:
        raise BuildError(f"the hierarchy set's ancestors alone ({len(corpus_ids)}) exceed {HIER_CORPUS_SIZE}")
    others = sorted(
        (i for i in train if i not in corpus_ids), key=lambda i: (stable_hash(f"hier-doc:{i}"), i)
    )
    corpus_ids.update(others[: HIER_CORPUS_SIZE - len(corpus_ids)])
    corpus = [{"_id": i, "title": "", "text": by_id[i]["gloss"]} for i in by_id if i in corpus_ids]
    queries: list[dict[str, object]] = []
    qrels: dict[str, list[str]] = {split: ["query-id\tcorpus-id\tscore"] for split in ("test", *PARTS)}
    for synset in sorted(chosen):
        row = by_id[synset]
        lemma = str(row["lemmas"][0]).replace("_", " ")  # type: ignore[index]
        for variant, text in (("name", lemma), ("gloss", row["gloss"])):
            qid = f"{synset}#{variant}"
            queries.append({"_id": qid, "text": text})
            for doc, grade in sorted(judged[synset].items(), key=lambda kv: (-kv[1], kv[0])):
                line = f"{qid}\t{doc}\t{grade}"
                qrels["test"].append(line)
                qrels[part_of(synset)].append(line)
    return corpus, queries, qrels


def beir_part_qrels(test_tsv: Path) -> dict[str, list[str]]:
    """``qrels/test.tsv`` of a BEIR folder split by query into tune / report (``part_of(query id)``)."""
    lines = test_tsv.read_text(encoding="utf-8").splitlines()
    out = {part: [lines[0]] for part in PARTS}
    for line in lines[1:]:
        out[part_of(line.split("\t", 1)[0])].append(line)
    return out


def build_derived(out: Path) -> dict[str, object]:
    """Write what derives from the bundled data itself: the hierarchical retrieval set and the tune/report
    qrels of every BEIR set. Reads ``out/wordnet/nouns.jsonl.gz`` and ``out/eval/faq-dev``; returns stats."""
    nouns = [
        json.loads(line)
        for line in gzip.decompress((out / "wordnet/nouns.jsonl.gz").read_bytes()).splitlines()
    ]
    corpus, queries, qrels = wordnet_hier_beir(nouns)
    write_jsonl(out / "eval/wordnet-hier/corpus.jsonl", corpus)
    write_jsonl(out / "eval/wordnet-hier/queries.jsonl", queries)
    for split, lines in qrels.items():
        write_bytes(out / f"eval/wordnet-hier/qrels/{split}.tsv", ("\n".join(lines) + "\n").encode("utf-8"))
    for part, lines in beir_part_qrels(out / "eval/faq-dev/qrels/test.tsv").items():
        write_bytes(out / f"eval/faq-dev/qrels/{part}.tsv", ("\n".join(lines) + "\n").encode("utf-8"))
    return {
        "wordnet_hier_queries": len(queries),
        "wordnet_hier_corpus": len(corpus),
        "wordnet_hier_judgments": len(qrels["test"]) - 1,
        "wordnet_hier_queries_per_part": {p: len({ln.split("\t")[0] for ln in qrels[p][1:]}) for p in PARTS},
    }


# ---------------------------------------------------------------------------------------------------------
# ICD-10-CM (the second development taxonomy)
# ---------------------------------------------------------------------------------------------------------

ICD_PACKAGE = "simple-icd-10-cm"
#: " (A00-B99)" at the end of chapter and block titles: a code range, not part of the name.
ICD_RANGE_RE = re.compile(r"\s*\([A-Z0-9.]+-[A-Z0-9.]+\)$")
ICD_LICENSE = """ICD-10-CM (International Classification of Diseases, Tenth Revision, Clinical Modification)

taxonomies/icd10cm.jsonl.gz is derived from the ICD-10-CM code list ({code_list}) as shipped in the
Python package simple-icd-10-cm {version} (https://github.com/StefanoTrv/simple_icd_10_CM).

ICD-10-CM is maintained by the National Center for Health Statistics (NCHS), Centers for Disease
Control and Prevention, U.S. Department of Health and Human Services, and is a work of the United
States Government: it is in the public domain in the United States (17 U.S.C. 105) and is distributed
by CDC and CMS without restriction. ICD-10 itself is (c) World Health Organization; the WHO permits the
U.S. clinical modification to be used in the United States.

The simple-icd-10-cm package (code, not data) is distributed under the MIT License,
Copyright (c) Stefano Travasci.
"""


def icd10cm_taxonomy() -> tuple[list[dict[str, object]], dict[str, object], str, str]:
    """ICD-10-CM as taxonomy rows ``{"id", "name", "synonyms"?, "parents"}`` (our JSONL format), with stats,
    the package version and the code list file name.

    Kept: chapters (ids ``chapter-<n>``), blocks, categories and subcategories, each under its parent in the
    classification; left out: the 7th-character extensions (``S52.521A``: the same condition per
    encounter), which would add 51k near-duplicate names. A code that is a block and a category at once is
    one concept under its chapter. Names are the descriptions (the code range at
    the end of chapter and block titles removed); synonyms are the inclusion terms; ICD-10-CM has no
    definitions.
    """
    try:
        from importlib.metadata import version

        import simple_icd_10_cm as icd
    except ImportError as error:
        raise BuildError(
            f"the ICD-10-CM step needs the {ICD_PACKAGE} package (pip install {ICD_PACKAGE})"
        ) from error
    data_dir = Path(icd.__file__).parent / "data"
    code_lists = sorted(p.name for p in data_dir.glob("code-list-*.txt"))
    # 39 codes are a block and its only category at once (B10, B20, ...) and are listed twice: kept once.
    codes = list(dict.fromkeys(c for c in icd.get_all_codes(True) if not icd.is_extended_subcategory(c)))

    def ident(code: str) -> str:
        return f"chapter-{code}" if icd.is_chapter(code) else code

    rows: list[dict[str, object]] = []
    for code in codes:
        name = normalize_space(ICD_RANGE_RE.sub("", icd.get_description(code)))
        if not name:
            raise BuildError(f"ICD-10-CM code {code}: empty description")
        row: dict[str, object] = {"id": ident(code), "name": name}
        synonyms = [normalize_space(t) for t in icd.get_inclusion_term(code)]
        synonyms = list(dict.fromkeys(t for t in synonyms if t and t.casefold() != name.casefold()))
        if synonyms:
            row["synonyms"] = synonyms
        parent = icd.get_parent(code)
        if parent == code:  # a block that is its own category: its parent is the block's, the chapter
            parent = next(a for a in icd.get_ancestors(code) if a != code)
        row["parents"] = [ident(parent)] if parent else []
        rows.append(row)
    kinds = {
        "chapters": sum(icd.is_chapter(c) for c in codes),
        "blocks": sum(icd.is_block(c) for c in codes),
        "categories": sum(icd.is_category(c) for c in codes),
        "subcategories": sum(icd.is_subcategory(c) for c in codes),
    }
    stats: dict[str, object] = {
        "icd10cm_concepts": len(rows),
        "icd10cm_kinds": kinds,
        "icd10cm_with_synonyms": sum("synonyms" in r for r in rows),
        "icd10cm_synonyms": sum(len(r.get("synonyms", [])) for r in rows),  # type: ignore[arg-type]
        "icd10cm_extensions_left_out": sum(icd.is_extended_subcategory(c) for c in icd.get_all_codes(True)),
        "icd10cm_block_categories_listed_twice": sum(icd.is_block(c) and icd.is_category(c) for c in codes),
    }
    return rows, stats, version(ICD_PACKAGE), code_lists[-1] if code_lists else "unknown code list"


def build_icd10cm(out: Path) -> tuple[dict[str, object], str]:
    """Write ``taxonomies/icd10cm.jsonl.gz`` and ``LICENSES/ICD-10-CM.txt``; return stats and the version."""
    rows, stats, version, code_list = icd10cm_taxonomy()
    write_jsonl(out / "taxonomies/icd10cm.jsonl.gz", rows)
    notice = ICD_LICENSE.format(code_list=code_list, version=version)
    write_bytes(out / "LICENSES/ICD-10-CM.txt", notice.encode("utf-8"))
    return stats, version


# ---------------------------------------------------------------------------------------------------------
# reST (Python docs)
# ---------------------------------------------------------------------------------------------------------

ADORNMENT_RE = re.compile(r"^([=\-`:'\"~^_*+#<>.])\1{2,}\s*$")
DIRECTIVE_RE = re.compile(r"^(\s*)\.\.\s+([\w:.-]+)::\s*(.*)$")
COMMENT_RE = re.compile(r"^(\s*)\.\.(\s|$)")
OPTION_RE = re.compile(r"^\s+:[\w -]+:( .*)?$")
ROLE_RE = re.compile(r":[\w.+-]+(?::[\w.+-]+)?:`([^`]*)`")
LINK_RE = re.compile(r"`([^`<]*?)\s*<[^>`]*>`__?")
REF_RE = re.compile(r"`([^`]+)`__?")
LITERAL_RE = re.compile(r"``(.+?)``")
STRONG_RE = re.compile(r"\*\*(\S(?:.*?\S)?)\*\*")
EMPHASIS_RE = re.compile(r"(?<![\w*])\*(\S(?:.*?\S)?)\*(?![\w*])")
TABLE_RULE_RE = re.compile(r"^\s*[+=\-| ]*[+=][+=\-| ]*$")
#: Directives whose whole block (line and indented body) carries no prose.
DROP_DIRECTIVES = {
    "index", "toctree", "contents", "highlight", "sectionauthor", "moduleauthor", "testsetup",
    "testcleanup", "raw", "include", "literalinclude", "image", "figure", "tabularcolumns",
    "audit-event", "audit-event-table", "limited-api-list", "productionlist", "csv-table", "graphviz",
    "only", "miscnews", "currentmodule", "module", "program", "default-role", "role",
}  # fmt: skip
#: Directives whose body is code: the body stays indented (a literal block), the argument is a language.
LITERAL_DIRECTIVES = {
    "code-block",
    "sourcecode",
    "code",
    "testcode",
    "testoutput",
    "doctest",
    "parsed-literal",
}
#: Directives rendered as a label in front of their body, as Sphinx does.
LABEL_DIRECTIVES = {
    "versionadded": "New in version {}",
    "versionchanged": "Changed in version {}",
    "deprecated": "Deprecated since version {}",
    "deprecated-removed": "Deprecated since version {}, removed in version {}",
    "availability": "Availability: {}",
}


def role_text(match: re.Match[str]) -> str:
    """Visible text of an inline role: ``:func:`label <target>``` -> label, ``~a.b`` -> a.b."""
    inner = match.group(1)
    labelled = re.match(r"^(.*?)\s*<[^>]*>$", inner, re.DOTALL)
    if labelled and labelled.group(1):
        inner = labelled.group(1)
    return inner.lstrip("~!")


def clean_inline(text: str) -> str:
    """Strip inline reST markup, keeping the visible text."""
    text = ROLE_RE.sub(role_text, text)
    text = LINK_RE.sub(lambda m: m.group(1), text)
    text = LITERAL_RE.sub(lambda m: m.group(1), text)
    text = REF_RE.sub(lambda m: m.group(1), text)
    text = STRONG_RE.sub(lambda m: m.group(1), text)
    text = EMPHASIS_RE.sub(lambda m: m.group(1), text)
    return text.replace("\\ ", "").replace("|version|", "3.11").replace("|release|", "3.11")


@dataclass
class Section:
    """A reST section: title, nesting level (0 = document title), body lines, child sections."""

    title: str
    level: int
    line: int
    body: list[str] = field(default_factory=list)
    children: list[Section] = field(default_factory=list)


def is_adornment(line: str, title: str) -> bool:
    """Whether ``line`` underlines (or overlines) ``title``."""
    return bool(ADORNMENT_RE.match(line)) and len(line.rstrip()) >= len(title.rstrip()) > 0


def parse_rst_sections(text: str) -> Section:
    """Split a reST document into nested sections (heading levels in order of first appearance)."""
    lines = text.splitlines()
    styles: list[tuple[str, bool]] = []
    root = Section(title="", level=-1, line=0)
    stack = [root]
    i = 0
    while i < len(lines):
        line = lines[i]
        heading: tuple[str, str, bool, int] | None = None  # title, char, overlined, lines used
        if (
            i + 2 < len(lines)
            and ADORNMENT_RE.match(line)
            and lines[i + 1].strip()
            and is_adornment(lines[i + 2], lines[i + 1].strip())
            and lines[i + 2].strip() == line.strip()
        ):
            heading = (lines[i + 1].strip(), line.strip()[0], True, 3)
        elif (
            i + 1 < len(lines)
            and line.strip()
            and not line.startswith((" ", "\t"))
            and not ADORNMENT_RE.match(line)
            and is_adornment(lines[i + 1], line)
            and (i == 0 or not lines[i - 1].strip())
        ):
            heading = (line.strip(), lines[i + 1].strip()[0], False, 2)
        if heading is None:
            stack[-1].body.append(line)
            i += 1
            continue
        title, char, overlined, used = heading
        style = (char, overlined)
        if style not in styles:
            styles.append(style)
        level = styles.index(style)
        while stack[-1].level >= level:
            stack.pop()
        section = Section(title=clean_inline(title), level=level, line=i + 1)
        stack[-1].children.append(section)
        stack.append(section)
        i += used
    return root


def walk_sections(section: Section) -> Iterator[Section]:
    """Pre-order walk over ``section`` and its descendants."""
    yield section
    for child in section.children:
        yield from walk_sections(child)


def indent_of(line: str) -> int:
    """Number of leading blanks of ``line``."""
    return len(line) - len(line.lstrip())


def block_end(lines: list[str], start: int, indent: int) -> int:
    """Index after the indented block that starts at ``lines[start]`` (deeper than ``indent``)."""
    i = start
    while i < len(lines):
        if lines[i].strip():
            if indent_of(lines[i]) <= indent:
                break
            i += 1
            continue
        j = i  # blank lines belong to the block only if indented text follows them
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j >= len(lines) or indent_of(lines[j]) <= indent:
            break
        i = j
    return i


def strip_directives(lines: list[str]) -> list[str]:
    """Remove comments, targets and non-prose directives; render the rest as plain text lines.

    Prose directive bodies (``.. note::``, ``.. function:: f(x)``) are dedented to the directive's own
    indentation so they read as ordinary paragraphs; code directive bodies stay indented (literal).
    """
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = DIRECTIVE_RE.match(line)
        if not directive and not COMMENT_RE.match(line):
            out.append(line)
            i += 1
            continue
        indent = indent_of(line)
        argument = directive.group(3).strip() if directive else ""
        i += 1
        while argument.endswith("\\") and i < len(lines) and lines[i].strip():  # continued signature
            argument = argument[:-1].rstrip() + " " + lines[i].strip()
            i += 1
        while i < len(lines) and OPTION_RE.match(lines[i]) and indent_of(lines[i]) > indent:
            i += 1
        end = block_end(lines, i, indent)
        block = lines[i:end]
        i = end
        name = directive.group(2) if directive else ""
        if directive is None or name in DROP_DIRECTIVES:
            continue
        if name in LITERAL_DIRECTIVES:
            out.extend(["", "::", "", *block, ""])  # a bare "::" marks the body as a literal block
            continue
        body_lines = [b for b in block if b.strip()]
        if body_lines:
            shift = min(indent_of(b) for b in body_lines)
            block = [b[shift:] if b.strip() else "" for b in block]
        while block and not block[0].strip():
            block.pop(0)
        out.append("")
        if name in LABEL_DIRECTIVES:
            template = LABEL_DIRECTIVES[name]
            values = [argument] if name == "availability" else argument.split(None, 1)
            values += ["?"] * (template.count("{}") - len(values))
            out.append(template.format(*values[: template.count("{}")]) + (":" if block else "."))
        elif argument:
            out.extend([argument, ""])
        out.extend([*strip_directives(block), ""])
    return out


def rst_paragraphs(lines: list[str]) -> list[str]:
    """Clean reST body lines into paragraphs.

    Prose paragraphs (block quotes and list items included) are joined to one line and stripped of
    inline markup; literal blocks (after ``::`` or from code directives) and doctest blocks keep their
    lines, dedented by the indentation of the literal block they belong to.
    """
    paragraphs: list[str] = []
    block: list[str] = []
    literal_indent: int | None = None  # indentation of the literal block being read, if any
    expect_literal = False  # the previous prose paragraph ended in "::"

    def flush() -> None:
        nonlocal literal_indent, expect_literal
        kept = [b for b in block if not TABLE_RULE_RE.match(b)]
        block.clear()
        if not kept:
            return
        first_indent = indent_of(kept[0])
        own_indent = min(indent_of(k) for k in kept)
        if expect_literal and first_indent > 0:
            literal_indent = own_indent
        elif literal_indent is not None and own_indent >= literal_indent > 0:
            pass  # more of the same literal block, after a blank line inside it
        elif kept[0].lstrip().startswith(">>>"):
            literal_indent = None
            paragraphs.append("\n".join(k[own_indent:] for k in kept))
            return
        else:
            literal_indent = None
        expect_literal = False
        if literal_indent is not None:
            paragraphs.append("\n".join(k[literal_indent:] for k in kept))
            return
        expect_literal = kept[-1].rstrip().endswith("::")
        text = clean_inline(" ".join(k.strip() for k in kept))
        text = re.sub(r"(\S)::$", r"\1:", text)
        text = re.sub(r"\s*::$", "", text)
        if text:
            paragraphs.append(text)

    for line in strip_directives(lines):
        if line.strip():
            block.append(line.rstrip())
        else:
            flush()
    flush()
    return paragraphs


def split_long(paragraph: str, limit: int) -> list[str]:
    """Split a paragraph longer than ``limit`` at line, sentence or word boundaries."""
    if len(paragraph) <= limit:
        return [paragraph]
    pieces: list[str] = []
    rest = paragraph
    while len(rest) > limit:
        window = rest[:limit]
        cut = max(window.rfind("\n"), window.rfind(". ") + 1, window.rfind(" "))
        if cut <= limit // 3:
            cut = limit
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        pieces.append(rest)
    return pieces


def pack_chunks(paragraphs: Iterable[tuple[bool, str]]) -> list[str]:
    """Pack ``(starts_section, paragraph)`` items into ``CHUNK_MIN_CHARS``..``CHUNK_MAX_CHARS`` chunks."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for starts_section, paragraph in paragraphs:
        for piece in split_long(paragraph, CHUNK_MAX_CHARS):
            boundary = starts_section and size >= CHUNK_MIN_CHARS
            if current and (boundary or size + 2 + len(piece) > CHUNK_MAX_CHARS):
                chunks.append("\n\n".join(current))
                current, size = [], 0
            current.append(piece)
            size += len(piece) + (2 if size else 0)
            starts_section = False
    if current:
        tail = "\n\n".join(current)
        if chunks and len(tail) < CHUNK_MIN_CHARS and len(chunks[-1]) + 2 + len(tail) <= CHUNK_MAX_CHARS:
            chunks[-1] = chunks[-1] + "\n\n" + tail
        else:
            chunks.append(tail)
    return [c for c in chunks if len(c) >= CHUNK_MIN_CHARS]


def is_qa_section(section: Section) -> bool:
    """Whether a docs section is a question-and-answer collection (kept out of training)."""
    return bool(QA_TITLE_RE.search(section.title))


def training_sections(doc: Section) -> Iterator[Section]:
    """Pre-order walk that skips question-and-answer sections together with their subsections."""
    if is_qa_section(doc):
        return
    yield doc
    for child in doc.children:
        yield from training_sections(child)


def python_doc_files(root: Path) -> list[Path]:
    """All reST sources of the Python docs except the ``faq/`` folder, in sorted order."""
    sources = root / PYDOC_SOURCES
    files = sorted(p for p in sources.rglob("*.rst.txt") if p.relative_to(sources).parts[0] != "faq")
    if not files:
        raise BuildError(f"no *.rst.txt files under {sources}")
    return files


def python_doc_training(root: Path) -> tuple[list[str], list[dict[str, object]]]:
    """MLM chunks and title -> body pairs from the Python docs (no faq/, no FAQ-like sections)."""
    chunks: list[str] = []
    pairs: list[dict[str, object]] = []
    seen_pairs: set[tuple[str, str]] = set()
    for path in python_doc_files(root):
        doc = parse_rst_sections(path.read_text(encoding="utf-8"))
        items: list[tuple[bool, str]] = []
        for section in training_sections(doc):
            paragraphs = rst_paragraphs(section.body)
            if section.title:
                items.append((True, section.title))
            items.extend((not section.title and n == 0, p) for n, p in enumerate(paragraphs))
            body = pair_document(paragraphs)
            key = (section.title, body)
            if section.title and len(body) >= PAIR_MIN_BODY_CHARS and key not in seen_pairs:
                seen_pairs.add(key)
                pairs.append({"query": section.title, "document": body})
        chunks.extend(pack_chunks(items))
    return chunks, pairs


def pair_document(paragraphs: list[str]) -> str:
    """The body of a section as a pair document: whole paragraphs up to ``CHUNK_MAX_CHARS``."""
    kept: list[str] = []
    size = 0
    for paragraph in paragraphs:
        if kept and size + 2 + len(paragraph) > CHUNK_MAX_CHARS:
            break
        kept.append(paragraph[:CHUNK_MAX_CHARS])
        size += len(kept[-1]) + 2
    return "\n\n".join(kept)


# ---------------------------------------------------------------------------------------------------------
# FAQ evaluation set
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaqItem:
    """One question with its answer."""

    doc_id: str
    question: str
    answer: str


def python_faq_items(root: Path) -> list[FaqItem]:
    """Question -> answer pairs of the Python FAQ: every leaf section below the document title.

    A few questions are phrased as statements ("My class defines __del__ but it is not called ..."),
    so the title is not required to contain a question mark.
    """
    items: list[FaqItem] = []
    faq_dir = root / PYDOC_SOURCES / "faq"
    for path in sorted(faq_dir.glob("*.rst.txt")):
        stem = path.name.removesuffix(".rst.txt")
        doc = parse_rst_sections(path.read_text(encoding="utf-8"))
        number = 0
        for section in walk_sections(doc):
            if section.children or section.level < 1:
                continue
            answer = "\n\n".join(rst_paragraphs(section.body))
            if not answer:
                continue  # an empty group heading such as "General GUI Questions"
            number += 1
            items.append(FaqItem(f"pyfaq-{stem}-{number:03d}", section.title, answer))
    return items


DEBIAN_HEADING_RE = re.compile(r"^(\d+(?:\.\d+)+)\.\s+(\S.*)$")


def debian_faq_items(root: Path) -> list[FaqItem]:
    """Question -> answer pairs of the Debian FAQ (plain-text rendering).

    Kept: numbered sections whose title contains '?' and that have a body. The other numbered sections
    are tool descriptions ("dpkg"), support channels ("Wiki") or notes about the FAQ ("Authors").
    """
    path = root / DEBIAN_FAQ_TXT
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        # DocBook's text rendering puts no-break spaces after section numbers and in many phrases.
        lines = handle.read().replace("\u00a0", " ").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Chapter 1.")), None)
    if start is None:
        raise fail(path, 0, "no 'Chapter 1.' line starting the FAQ body")
    sections: list[tuple[str, str, int, list[str]]] = []
    i = start
    while i < len(lines):
        line = lines[i]
        heading = DEBIAN_HEADING_RE.match(line)
        if heading:
            title = [heading.group(2).strip()]
            lineno = i + 1
            i += 1
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(" "):
                title.append(lines[i].strip())  # a long title wraps at column 0
                i += 1
            sections.append((heading.group(1), " ".join(title), lineno, []))
            continue
        if line.startswith("Chapter "):
            sections.append(("", line, i + 1, []))
        elif sections:
            sections[-1][3].append(line)
        i += 1
    items: list[FaqItem] = []
    for number, title, _lineno, body in sections:
        answer = "\n\n".join(plain_paragraphs(body))
        if number and answer and "?" in title:
            items.append(FaqItem(f"debfaq-{number}", title, answer))
    return items


def plain_paragraphs(lines: list[str]) -> list[str]:
    """Blank-line separated paragraphs of an indented plain-text body, each joined to one line."""
    paragraphs: list[str] = []
    block: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            block.append(line.strip())
        elif block:
            paragraphs.append(" ".join(block))
            block = []
    return paragraphs


def faq_beir(items: list[FaqItem]) -> tuple[list[dict[str, object]], list[dict[str, object]], list[str]]:
    """Corpus rows, query rows and qrels lines (with header) for the FAQ items."""
    ids = [item.doc_id for item in items]
    if len(set(ids)) != len(ids):
        raise BuildError("duplicate FAQ ids")
    corpus = [{"_id": item.doc_id, "title": "", "text": item.answer} for item in items]
    queries = [{"_id": f"{item.doc_id}-q", "text": item.question} for item in items]
    qrels = ["query-id\tcorpus-id\tscore"] + [f"{item.doc_id}-q\t{item.doc_id}\t1" for item in items]
    return corpus, queries, qrels


def leak_prefixes(items: list[FaqItem]) -> list[str]:
    """The normalized first ``LEAK_PREFIX_CHARS`` characters of every FAQ answer."""
    return sorted({normalize_space(item.answer)[:LEAK_PREFIX_CHARS] for item in items})


def contains_leak(text: str, prefixes: list[str]) -> bool:
    """Whether ``text`` contains any FAQ answer prefix (whitespace-normalized)."""
    flat = normalize_space(text)
    return any(prefix in flat for prefix in prefixes)


# ---------------------------------------------------------------------------------------------------------
# Manifest and README
# ---------------------------------------------------------------------------------------------------------

FILE_INFO: dict[str, tuple[str, str, str]] = {
    # path: (source package, license, purpose)
    "wordnet/nouns.jsonl.gz": (
        "wordnet-base",
        "WordNet 3.0 license",
        "all 82,115 noun synsets: id, offset, lemmas, gloss, hypernyms, instance_hypernyms, depth, split",
    ),
    "train/mlm_python_docs.jsonl.gz": (
        "python3.11-doc",
        "PSF License Agreement (docs)",
        "MLM pretraining text {text}: Python docs chunks, faq/ and FAQ-like sections excluded",
    ),
    "train/pairs_wordnet_gloss.jsonl.gz": (
        "wordnet-base",
        "WordNet 3.0 license",
        "contrastive pairs {query, document}: first lemma -> gloss, train-split synsets only",
    ),
    "train/pairs_python_docs.jsonl.gz": (
        "python3.11-doc",
        "PSF License Agreement (docs)",
        "contrastive pairs {query, document}: section title -> section body, faq/ excluded",
    ),
    "eval/faq-dev/corpus.jsonl": (
        "python3.11-doc, debian-faq",
        "PSF License Agreement; Debian FAQ permission notice",
        "BEIR corpus: every FAQ answer (_id, title, text)",
    ),
    "eval/faq-dev/queries.jsonl": (
        "python3.11-doc, debian-faq",
        "PSF License Agreement; Debian FAQ permission notice",
        "BEIR queries: every FAQ question (_id, text)",
    ),
    "eval/faq-dev/qrels/test.tsv": (
        "python3.11-doc, debian-faq",
        "PSF License Agreement; Debian FAQ permission notice",
        "BEIR qrels: each question -> its one answer (score 1)",
    ),
    "eval/faq-dev-ragbench.jsonl": (
        "python3.11-doc, debian-faq",
        "PSF License Agreement; Debian FAQ permission notice",
        "RAGBench-schema rows {id, question, documents, response} for eval_ragas.py offline: gold answer plus "
        "3 BM25 distractors (scripts/build_rag_faq.py)",
    ),
    "eval/wordnet-levels.jsonl": (
        "wordnet-base",
        "WordNet 3.0 license",
        "hierarchy probe {level, id, depth, text}: held-out glosses, level 1 general .. 5 specific",
    ),
    "eval/faq-dev/qrels/tune.tsv": (
        "python3.11-doc, debian-faq",
        "PSF License Agreement; Debian FAQ permission notice",
        "faq-dev qrels, tuning part (about half the questions, by hash of the query id)",
    ),
    "eval/faq-dev/qrels/report.tsv": (
        "python3.11-doc, debian-faq",
        "PSF License Agreement; Debian FAQ permission notice",
        "faq-dev qrels, reporting part (the other half)",
    ),
    "eval/wordnet-hier/corpus.jsonl": (
        "wordnet-base",
        "WordNet 3.0 license",
        "BEIR corpus: train-split glosses (the queries' ancestors plus hash-sampled others)",
    ),
    "eval/wordnet-hier/queries.jsonl": (
        "wordnet-base",
        "WordNet 3.0 license",
        "BEIR queries: held-out synsets, each as its name and as its gloss",
    ),
    "eval/wordnet-hier/qrels/test.tsv": (
        "wordnet-base",
        "WordNet 3.0 license",
        "BEIR qrels: train ancestors within 3 hops, graded 3 (parent) / 2 / 1",
    ),
    "eval/wordnet-hier/qrels/tune.tsv": (
        "wordnet-base",
        "WordNet 3.0 license",
        "hierarchy qrels, tuning part (by hash of the query synset)",
    ),
    "eval/wordnet-hier/qrels/report.tsv": (
        "wordnet-base",
        "WordNet 3.0 license",
        "hierarchy qrels, reporting part (the other half)",
    ),
    "taxonomies/icd10cm.jsonl.gz": (
        ICD_PACKAGE,
        "public domain (U.S. Government work)",
        "ICD-10-CM taxonomy in our JSONL format: chapters, blocks, categories, subcategories; "
        "name = description, synonyms = inclusion terms, parents = the classification",
    ),
    "LICENSES/ICD-10-CM.txt": (
        ICD_PACKAGE,
        "public domain (U.S. Government work)",
        "license notice (written by build_data.py)",
    ),
    "LICENSES/WordNet-3.0.txt": (
        "wordnet-base",
        "WordNet 3.0 license",
        "license text (Debian copyright file)",
    ),
    "LICENSES/Python-docs-PSF.txt": (
        "python3.11-doc",
        "PSF License Agreement",
        "license text (Debian copyright file)",
    ),
    "LICENSES/Debian-FAQ.txt": (
        "debian-faq",
        "Debian FAQ permission notice",
        "license text (Debian copyright file)",
    ),
}


def rag_faq_bytes(beir_folder: Path) -> bytes:
    """The offline RAGBench-schema file, derived from the FAQ BEIR folder by ``scripts/build_rag_faq.py``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import build_rag_faq

    return build_rag_faq.build(beir_folder)


def count_rows(path: Path) -> int:
    """Rows of a data file: JSONL lines, TSV lines minus header, or text lines."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    lines = raw.decode("utf-8").count("\n")
    return lines - 1 if path.suffix == ".tsv" else lines


def build_manifest(out: Path, versions: dict[str, str], stats: dict[str, object]) -> dict[str, object]:
    """sha256, size and rows of every output file, plus source versions and statistics."""
    files: dict[str, object] = {}
    for rel, (source, license_name, purpose) in FILE_INFO.items():
        path = out / rel
        payload = path.read_bytes()
        files[rel] = {
            "sha256": hashlib.sha256(payload).hexdigest(),
            "bytes": len(payload),
            "rows": count_rows(path),
            "source": source,
            "license": license_name,
            "purpose": purpose,
        }
    return {
        "generator": "scripts/build_data.py",
        "sources": {package: versions[package] for package in sorted(versions)},
        "stats": stats,
        "files": files,
    }


def render_readme(manifest: dict[str, object]) -> str:
    """``data/README.md`` rendered from the manifest (no timestamps, so it is reproducible)."""
    sources: dict[str, str] = manifest["sources"]  # type: ignore[assignment]
    stats: dict[str, object] = manifest["stats"]  # type: ignore[assignment]
    files: dict[str, dict[str, object]] = manifest["files"]  # type: ignore[assignment]
    total = sum(int(info["bytes"]) for info in files.values())  # type: ignore[arg-type]
    out = [
        "# Bundled data",
        "",
        "Generated by `scripts/build_data.py` from Debian 12 packages (ICD-10-CM: from the `simple-icd-10-cm`",
        "Python package); do not edit by hand.",
        "Rebuild with `python scripts/build_data.py` (needs `apt-get` and `dpkg-deb`); the output is",
        "byte-identical to what is committed. `manifest.json` holds the same table in machine-readable form",
        "and the tests in `tests/data/` check every file against it.",
        "",
        "## Source packages",
        "",
        "| package | version | license |",
        "|---|---|---|",
    ]
    licenses = {
        "wordnet-base": "WordNet 3.0 license (Princeton; BSD-like, keep the notice) -> `LICENSES/WordNet-3.0.txt`",
        "python3.11-doc": "PSF License Agreement for Python 3.11 and its docs -> `LICENSES/Python-docs-PSF.txt`",
        "debian-faq": "SPI permission notice (verbatim/modified copies keep the notice) -> `LICENSES/Debian-FAQ.txt`",
        ICD_PACKAGE: "ICD-10-CM: public domain (U.S. Government work, NCHS/CDC); the package's code is MIT "
        "-> `LICENSES/ICD-10-CM.txt`",
    }
    out += [f"| `{p}` | `{v}` | {licenses.get(p, '')} |" for p, v in sources.items()]
    out += [
        "",
        "## Files",
        "",
        f"Total size: {total:,} bytes.",
        "",
        "| file | rows | bytes | sha256 | source | license | purpose |",
        "|---|---:|---:|---|---|---|---|",
    ]
    for rel, info in files.items():
        out.append(
            f"| `{rel}` | {info['rows']:,} | {info['bytes']:,} | `{info['sha256']}` | {info['source']} "
            f"| {info['license']} | {info['purpose']} |"
        )
    out += ["", "## Statistics", ""]
    out += [f"- `{key}`: {value}" for key, value in stats.items()]
    out += [
        "",
        "## Definitions",
        "",
        "- WordNet closure: distinct (ancestor, descendant) pairs of noun synsets, self pairs excluded, over",
        "  hypernym (`@`) and instance-hypernym (`@i`) pointers together.",
        "- `depth`: shortest path to `entity.n.01` over the same edges; `id` is the first lemma (lower case)",
        "  + `.n.` + its sense number in `index.noun`.",
        f"- Held-out split: synsets with sha256(`wordnet-noun:<offset>`) mod {HELDOUT_MODULUS} == 0; they never",
        "  appear in training pairs. `eval/wordnet-levels.jsonl` uses held-out synsets only, levels by depth: "
        + ", ".join(f"{lvl}: {lo}-{hi}" for lvl, (lo, hi) in LEVEL_DEPTHS.items())
        + f" (at most {LEVEL_CAP} per level, hash-ordered sample).",
        "- FAQ material (Python `faq/`, Python docs sections titled FAQ / How do I, the Debian FAQ) is",
        "  evaluation only: no training row contains the first 200 characters (whitespace-normalized) of",
        "  any FAQ answer.",
        f"- `eval/wordnet-hier`: {HIER_QUERY_SYNSETS} held-out synsets of depth >= {HIER_MIN_DEPTH} whose direct "
        "hypernyms are all train synsets,",
        f"  each queried by name and by gloss; relevant: train ancestors within {HIER_MAX_HOPS} hops, grade "
        f"{HIER_MAX_HOPS} for a parent down to 1; corpus padded to {HIER_CORPUS_SIZE:,} train glosses.",
        "- Tune / report parts (`qrels/tune.tsv`, `qrels/report.tsv`; the probe by its `id`): sha256(`part:<key>`)",
        "  even -> tune, odd -> report, keyed by query id (faq-dev), query synset (wordnet-hier) or synset id",
        "  (probe). Settings are chosen on tune parts; results are reported on report parts.",
        "- `taxonomies/icd10cm.jsonl.gz`: ICD-10-CM without its 7th-character extensions; chapter ids are",
        "  `chapter-<n>`, other ids the codes; the code range is removed from chapter and block names; no",
        "  definitions (ICD-10-CM has none). Split and derived sets: `lorentz-rag taxonomy build icd10cm`.",
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------


def build(root: Path, out: Path, versions: dict[str, str]) -> dict[str, object]:
    """Write every output under ``out`` from the unpacked package tree ``root``; return the manifest."""
    synsets, wn_stats = build_wordnet(root)
    write_jsonl(out / "wordnet/nouns.jsonl.gz", wordnet_rows(synsets))
    levels = wordnet_level_rows(synsets)
    write_jsonl(out / "eval/wordnet-levels.jsonl", levels)

    faq_items = python_faq_items(root) + debian_faq_items(root)
    prefixes = leak_prefixes(faq_items)
    corpus, queries, qrels = faq_beir(faq_items)
    write_jsonl(out / "eval/faq-dev/corpus.jsonl", corpus)
    write_jsonl(out / "eval/faq-dev/queries.jsonl", queries)
    write_bytes(out / "eval/faq-dev/qrels/test.tsv", ("\n".join(qrels) + "\n").encode("utf-8"))
    write_bytes(out / "eval/faq-dev-ragbench.jsonl", rag_faq_bytes(out / "eval/faq-dev"))

    chunks, doc_pairs = python_doc_training(root)
    wn_pairs = wordnet_pair_rows(synsets)
    leaked = {"mlm": 0, "pairs_python_docs": 0, "pairs_wordnet_gloss": 0}
    kept_chunks = [c for c in chunks if not contains_leak(c, prefixes)]
    leaked["mlm"] = len(chunks) - len(kept_chunks)
    kept_doc_pairs = [p for p in doc_pairs if not contains_leak(f"{p['query']}\n{p['document']}", prefixes)]
    leaked["pairs_python_docs"] = len(doc_pairs) - len(kept_doc_pairs)
    kept_wn_pairs = [p for p in wn_pairs if not contains_leak(f"{p['query']}\n{p['document']}", prefixes)]
    leaked["pairs_wordnet_gloss"] = len(wn_pairs) - len(kept_wn_pairs)
    write_jsonl(out / "train/mlm_python_docs.jsonl.gz", ({"text": c} for c in kept_chunks))
    write_jsonl(out / "train/pairs_python_docs.jsonl.gz", kept_doc_pairs)
    write_jsonl(out / "train/pairs_wordnet_gloss.jsonl.gz", kept_wn_pairs)

    for rel, source in LICENSE_SOURCES.items():
        write_bytes(out / rel, (root / source).read_bytes())
    derived_stats = build_derived(out)
    icd_stats, versions[ICD_PACKAGE] = build_icd10cm(out)

    level_counts = {str(lvl): sum(r["level"] == lvl for r in levels) for lvl in LEVEL_DEPTHS}
    stats: dict[str, object] = {
        **{f"wordnet_{k}": v for k, v in wn_stats.items()},
        "wordnet_levels_per_level": level_counts,
        "faq_python": sum(i.doc_id.startswith("pyfaq-") for i in faq_items),
        "faq_debian": sum(i.doc_id.startswith("debfaq-") for i in faq_items),
        "training_rows_dropped_for_faq_overlap": leaked,
        **derived_stats,
        **icd_stats,
    }
    return write_manifest(out, versions, stats)


def write_manifest(out: Path, versions: dict[str, str], stats: dict[str, object]) -> dict[str, object]:
    """Write ``manifest.json`` and ``README.md`` for the files under ``out``; return the manifest."""
    manifest = build_manifest(out, versions, stats)
    write_bytes(out / "manifest.json", (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
    write_bytes(out / "README.md", render_readme(manifest).encode("utf-8"))
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "data", help="output folder (default: data/)")
    parser.add_argument("--root", type=Path, help="use this already unpacked package tree, fetch nothing")
    parser.add_argument("--latest", action="store_true", help="fetch the current versions, not the pins")
    parser.add_argument(
        "--derived-only",
        action="store_true",
        help="rebuild only the files derived from data/ itself (hierarchy set, tune/report qrels) and the manifest",
    )
    args = parser.parse_args(argv)
    try:
        if args.derived_only:
            previous = json.loads((args.out / "manifest.json").read_text(encoding="utf-8"))
            icd_stats, icd_version = build_icd10cm(args.out)
            stats = {**previous["stats"], **build_derived(args.out), **icd_stats}
            manifest = write_manifest(args.out, {**previous["sources"], ICD_PACKAGE: icd_version}, stats)
        elif args.root is not None:
            manifest = build(args.root, args.out, installed_versions(args.root))
        else:
            with tempfile.TemporaryDirectory(prefix="lorentz_rag-data-") as tmp:
                root, versions = fetch_packages(Path(tmp), args.latest)
                manifest = build(root, args.out, versions)
    except BuildError as error:
        print(f"build_data: {error}", file=sys.stderr)
        return 1
    files: dict[str, dict[str, object]] = manifest["files"]  # type: ignore[assignment]
    total = sum(int(info["bytes"]) for info in files.values())  # type: ignore[arg-type]
    for rel, info in files.items():
        print(f"{info['rows']:>9,} rows {info['bytes']:>11,} B  {rel}")
    print(f"total {total:,} bytes in {args.out}")
    print(json.dumps(manifest["stats"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
