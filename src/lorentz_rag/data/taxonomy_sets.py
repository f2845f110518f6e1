"""Everything derived from one taxonomy (``lorentz-rag taxonomy build T --out DIR``).

:func:`build_taxonomy_sets` splits the taxonomy (:func:`~lorentz_rag.data.taxonomy.split_taxonomy`) and
writes into ``DIR``:

- ``split.json``: the arguments, the held-out ids, the ``validation`` (tune) and ``report`` ids;
- ``train.jsonl.gz``: the train taxonomy (pass it as ``hierarchy_args.taxonomy_path``);
- ``edges.tsv.gz``: the hierarchy objective's edges, the train closure ``child, ancestor, hops``;
- ``pairs.jsonl.gz``: contrastive rows ``{"query", "document"}`` of train concepts only: name -> text and
  synonym -> text, where a concept's text is its definition, else its name (so a concept without a
  definition gives synonym -> name rows only); a row whose text equals (case-folded) a held-out concept's
  name, synonym or definition is dropped;
- ``eval/broader``, ``eval/narrower``, ``eval/synonym``: BEIR folders on held-out concepts, each with
  ``qrels/test.tsv`` and its halves ``tune.tsv`` (validation concepts) and ``report.tsv`` (the others):

  - broader: a held-out concept by name (``<id>#name``) and by definition (``<id>#definition``) -> its
    ancestors within ``max_hops`` hops, graded ``max_hops + 1 - hops`` (3 = parent), over a corpus of train
    concepts' texts (every judged one plus seeded others up to ``corpus_size``);
  - narrower: the same queries -> the concept's descendants within ``max_hops``, graded the same way (only
    concepts that have descendants; the split keeps every descendant in train);
  - synonym: each synonym of a held-out concept (``<id>#synonym<k>``) -> that concept, over a corpus of the
    held-out concepts' texts plus train distractors up to ``corpus_size``;

- ``eval/levels.jsonl``: the depth probe (``lorentz-rag eval hierarchy``): ``{"level", "id", "depth",
  "text", "part"}`` for held-out concepts, levels 1 (shallow) .. at most 5 (deep) by depth;
- ``eval/subsumption/{validation,test}.jsonl.gz``: HiT's mixed-hop protocol on held-out concepts: every
  train ancestor of the concept is a positive ``(child, candidate)``, each with ``negatives`` negatives
  of two kinds written as two settings (a row's ``setting``; positives appear in both): ``random`` (any
  train concept that is not an ancestor) and ``hard`` (another child of one of its ancestors, "the
  ancestors' other children", not an ancestor itself). Validation concepts give ``validation``, the rest
  ``test``; :func:`lorentz_rag.eval.subsumption.subsumption_f1` picks the threshold on the first and reports
  F1 on the second;
- ``manifest.json``: what was written, with counts; written last, so a ``DIR`` that has one holds a
  complete set (the files are written into a hidden sibling folder and moved into ``DIR`` at the end; an
  error or Ctrl-C on the way leaves ``DIR`` as it was).

However small the taxonomy, the build ends: a sample draws at most what exists (a concept whose train
concepts are all its ancestors gets fewer subsumption negatives than asked for, or none), and a taxonomy with
nothing to hold out is a one-line error naming it.

Every sample is seeded; the same taxonomy and arguments write the same bytes. For the WordNet nouns file
(``taxonomy build wordnet``) only the synsets that file marks held out can be held out, so the bundled
``pairs_wordnet_gloss`` (its train split) can be mixed into training without leaking held-out concepts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorentz_rag.data.beir import QRELS_HEADER, write_beir
from lorentz_rag.data.bundled import BUNDLED_TAXONOMIES, taxonomy_path
from lorentz_rag.data.jsonl import gzip_bytes
from lorentz_rag.data.taxonomy import (
    Taxonomy,
    TaxonomySplit,
    read_taxonomy,
    split_taxonomy,
    wordnet_held_out_ids,
    write_taxonomy,
)
from lorentz_rag.errors import names_path, on_interrupt

__all__ = [
    "TaxonomySetOptions",
    "broader_pairs",
    "build_taxonomy_sets",
    "contrastive_pairs",
    "depth_levels",
    "resolve_taxonomy",
    "taxonomy_build_command",
]

MAX_LEVELS = 5
#: Rejected draws per pool member before a random negative is drawn from the explicit list of eligible ones.
_MAX_REJECTIONS = 64


@dataclass(frozen=True)
class TaxonomySetOptions:
    """Sizes of the derived sets (``taxonomy build`` flags of the same names)."""

    seed: int = 0
    held_out_fraction: float = 0.1
    validation_fraction: float = 0.5
    max_queries: int = 500  # held-out concepts per retrieval set (seeded sample)
    corpus_size: int = 5000  # documents per retrieval corpus (more when the judged ones alone exceed it)
    max_hops: int = 3
    probe_per_level: int = 200
    subsumption_concepts: int = 500
    negatives: int = 10  # per positive and setting

    def __post_init__(self) -> None:
        for field in (
            "max_queries",
            "corpus_size",
            "max_hops",
            "probe_per_level",
            "subsumption_concepts",
            "negatives",
        ):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"taxonomy set option {field} (--{field.replace('_', '-')}) must be a whole number >= 0, "
                    f"got {value!r}"
                )


def _write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> int:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    data = ("\n".join(lines) + "\n" if lines else "").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip_bytes(data) if path.suffix == ".gz" else data)
    return len(lines)


def contrastive_pairs(train: Taxonomy, banned: Iterable[str] = ()) -> tuple[list[dict[str, str]], int]:
    """``({"query", "document"}`` rows of ``train``, rows dropped)``: name -> text and synonym -> text (a
    query equal to its document is skipped); rows with a query or document in ``banned`` (case-folded) are
    dropped and counted."""
    banned_folded = {b.casefold() for b in banned}
    rows: list[dict[str, str]] = []
    dropped = 0
    for concept in train:
        for query in (concept.name, *concept.synonyms):
            if query == concept.text:
                continue
            if query.casefold() in banned_folded or concept.text.casefold() in banned_folded:
                dropped += 1
                continue
            rows.append({"query": query, "document": concept.text})
    return rows, dropped


def broader_pairs(
    train: Taxonomy, n: int, max_hops: int, seed: int, banned: Iterable[str] = ()
) -> list[dict[str, str]]:
    """``n`` seeded ``{"query", "document"}`` rows ``child -> ancestor`` of ``train`` (fewer when it has
    fewer): the query a concept's name or its text, the document the text of an ancestor at most ``max_hops``
    is-a hops above it. Rows with a text in ``banned`` (case-folded) are left out."""
    if n == 0:
        return []
    banned_folded = {b.casefold() for b in banned}
    candidates: list[tuple[str, str]] = []
    for concept in train:
        for ancestor_id, hops in train.ancestors(concept.id).items():
            if hops <= max_hops:
                candidates.append((concept.id, ancestor_id))
    rng = random.Random(f"taxonomy-broader-pairs-{seed}")
    rows: list[dict[str, str]] = []
    for child_id, ancestor_id in rng.sample(candidates, min(n, len(candidates))):
        child, document = train[child_id], train[ancestor_id].text
        query = child.name if rng.random() < 0.5 else child.text
        if query.casefold() in banned_folded or document.casefold() in banned_folded or query == document:
            continue
        rows.append({"query": query, "document": document})
    return rows


def depth_levels(depths: Mapping[str, int], max_levels: int = MAX_LEVELS) -> dict[str, int]:
    """``{id: level}``, levels 1 (shallowest) .. ``<= max_levels``: one level per depth when there are
    few, else contiguous depth ranges holding about equal numbers of concepts."""
    distinct = sorted(set(depths.values()))
    if len(distinct) <= max_levels:
        rank = {d: k + 1 for k, d in enumerate(distinct)}
        return {i: rank[d] for i, d in depths.items()}
    ordered = sorted(depths.values())
    n = len(ordered)
    # the upper depth bound of each level: the k/max_levels quantiles of the depth distribution
    bounds = sorted({ordered[-(-k * n // max_levels) - 1] for k in range(1, max_levels + 1)})
    return {i: 1 + next(k for k, b in enumerate(bounds) if d <= b) for i, d in depths.items()}


def _sample(ids: Iterable[str], n: int, tag: str, seed: int) -> list[str]:
    """A seeded sample of at most ``n`` ids, returned in their given order."""
    ids = list(ids)
    if len(ids) <= n:
        return ids
    chosen = set(random.Random(f"{tag}-{seed}").sample(ids, n))
    return [i for i in ids if i in chosen]


def _graded(hops: Mapping[str, int], max_hops: int, allowed: set[str]) -> dict[str, int]:
    return {
        i: max_hops + 1 - h
        for i, h in sorted(hops.items(), key=lambda kv: (kv[1], kv[0]))
        if h <= max_hops and i in allowed
    }


def _corpus(
    taxonomy: Taxonomy, judged: set[str], pool: list[str], size: int, tag: str, seed: int
) -> dict[str, dict[str, str]]:
    """The judged documents plus seeded others from ``pool`` up to ``size``, in taxonomy order."""
    others = [i for i in pool if i not in judged]
    extra = set(_sample(others, max(0, size - len(judged)), tag, seed))
    return {
        i: {"title": "", "text": taxonomy[i].text} for i in taxonomy.concepts if i in judged or i in extra
    }


def _write_set(
    folder: Path,
    corpus: Mapping[str, Mapping[str, str]],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    part_of: Mapping[str, str],
) -> dict[str, int]:
    """A BEIR folder with ``test`` and its ``tune`` / ``report`` halves (``part_of[query id]``)."""
    write_beir(folder, corpus, queries, qrels, split="test")
    for part in ("tune", "report"):
        lines = ["\t".join(QRELS_HEADER)]
        lines += [
            f"{q}\t{d}\t{s}" for q, judged in qrels.items() if part_of[q] == part for d, s in judged.items()
        ]
        (folder / "qrels" / f"{part}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {
        "corpus": len(corpus),
        "queries": len(qrels),
        "judgments": sum(len(j) for j in qrels.values()),
        "tune_queries": sum(part_of[q] == "tune" for q in qrels),
        "report_queries": sum(part_of[q] == "report" for q in qrels),
    }


def _relation_set(
    full: Taxonomy, split: TaxonomySplit, relation: str, opts: TaxonomySetOptions, out: Path
) -> dict[str, int]:
    train_ids = set(split.train.concepts)
    hops_of = full.ancestors if relation == "broader" else full.descendants
    judged: dict[str, dict[str, int]] = {}
    for concept_id in split.held_out:
        graded = _graded(hops_of(concept_id), opts.max_hops, train_ids)
        if graded:
            judged[concept_id] = graded
    chosen = _sample(judged, opts.max_queries, f"taxonomy-{relation}", opts.seed)
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    part_of: dict[str, str] = {}
    for concept_id in chosen:
        concept = full[concept_id]
        for variant, text in (("name", concept.name), ("definition", concept.definition)):
            if text:
                qid = f"{concept_id}#{variant}"
                queries[qid], qrels[qid], part_of[qid] = text, judged[concept_id], split.part(concept_id)
    relevant = {d for j in qrels.values() for d in j}
    corpus = _corpus(
        full, relevant, list(split.train.concepts), opts.corpus_size, f"taxonomy-{relation}-docs", opts.seed
    )
    return _write_set(out / "eval" / relation, corpus, queries, qrels, part_of)


def _synonym_set(full: Taxonomy, split: TaxonomySplit, opts: TaxonomySetOptions, out: Path) -> dict[str, int]:
    with_synonyms = [i for i in split.held_out if full[i].synonyms]
    chosen = _sample(with_synonyms, opts.max_queries, "taxonomy-synonym", opts.seed)
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    part_of: dict[str, str] = {}
    for concept_id in chosen:
        for k, synonym in enumerate(full[concept_id].synonyms):
            qid = f"{concept_id}#synonym{k}"
            queries[qid], qrels[qid], part_of[qid] = synonym, {concept_id: 1}, split.part(concept_id)
    pool = [*split.held_out, *split.train.concepts]
    corpus = _corpus(full, set(chosen), pool, opts.corpus_size, "taxonomy-synonym-docs", opts.seed)
    return _write_set(out / "eval" / "synonym", corpus, queries, qrels, part_of)


def _levels(full: Taxonomy, split: TaxonomySplit, opts: TaxonomySetOptions, out: Path) -> dict[str, int]:
    depths = {i: full.depth(i) for i in split.held_out}
    level = depth_levels(depths)
    rows = []
    for lvl in sorted(set(level.values())):
        members = _sample(
            [i for i in split.held_out if level[i] == lvl],
            opts.probe_per_level,
            f"taxonomy-level-{lvl}",
            opts.seed,
        )
        rows += [
            {"level": lvl, "id": i, "depth": depths[i], "text": full[i].text, "part": split.part(i)}
            for i in members
        ]
    _write_jsonl(out / "eval" / "levels.jsonl", rows)
    return {f"level_{lvl}": sum(r["level"] == lvl for r in rows) for lvl in sorted(set(level.values()))}


def _subsumption(full: Taxonomy, split: TaxonomySplit, opts: TaxonomySetOptions, out: Path) -> dict[str, int]:
    train = split.train
    train_ids = list(train.concepts)
    chosen = _sample(
        [i for i in split.held_out if full[i].parents],
        opts.subsumption_concepts,
        "taxonomy-subsumption",
        opts.seed,
    )
    rows: dict[str, list[dict[str, Any]]] = {"validation": [], "test": []}
    for concept_id in chosen:
        rng = random.Random(f"taxonomy-subsumption-{opts.seed}-{concept_id}")
        ancestors = {a: h for a, h in full.ancestors(concept_id).items() if a in train}
        excluded = set(ancestors) | {concept_id}
        hard_pool = sorted({s for a in ancestors for s in train.children(a)} - excluded)
        target = rows["validation" if split.part(concept_id) == "tune" else "test"]
        for ancestor, hops in sorted(ancestors.items(), key=lambda kv: (kv[1], kv[0])):
            for setting in ("random", "hard"):
                target.append(_pair(full, concept_id, ancestor, 1, setting, hops))
                for negative in _negatives(rng, setting, hard_pool, train_ids, excluded, opts.negatives):
                    target.append(_pair(full, concept_id, negative, 0, setting, None))
    counts = {}
    for name, items in rows.items():
        counts[f"{name}_pairs"] = _write_jsonl(out / "eval" / "subsumption" / f"{name}.jsonl.gz", items)
        counts[f"{name}_positives"] = sum(r["label"] for r in items)
    return counts


def _negatives(
    rng: random.Random, setting: str, hard_pool: list[str], pool: list[str], excluded: set[str], n: int
) -> list[str]:
    """``n`` negatives: hard ones from ``hard_pool`` (topped up at random when it has fewer), or random
    concepts of ``pool`` outside ``excluded`` (drawn with replacement). Fewer than ``n`` only when every
    concept of ``pool`` is excluded (a small taxonomy whose train concepts are all ancestors of the child):
    then the hard ones, if any, and nothing else."""
    picked: list[str] = []
    if setting == "hard" and hard_pool:
        picked = rng.sample(hard_pool, min(n, len(hard_pool)))
    if len(picked) < n and any(c not in excluded for c in pool):
        while len(picked) < n:
            picked.append(_draw_outside(rng, pool, excluded))
    return picked


def _draw_outside(rng: random.Random, pool: list[str], excluded: set[str]) -> str:
    """A uniform draw from the concepts of ``pool`` outside ``excluded`` (at least one must be): rejection
    sampling, as the sets have always been drawn, bounded so that it ends by construction; past the bound
    (at least one in ``len(pool)`` draws succeeds, so in practice never) a draw from the explicit list."""
    for _ in range(_MAX_REJECTIONS * len(pool)):
        candidate = pool[rng.randrange(len(pool))]
        if candidate not in excluded:
            return candidate
    eligible = [c for c in pool if c not in excluded]
    return eligible[rng.randrange(len(eligible))]


def _pair(
    full: Taxonomy, child: str, candidate: str, label: int, setting: str, hops: int | None
) -> dict[str, Any]:
    return {
        "child": child,
        "candidate": candidate,
        "label": label,
        "setting": setting,
        "hops": hops,
        "child_name": full[child].name,
        "child_text": full[child].text,
        "candidate_name": full[candidate].name,
        "candidate_text": full[candidate].text,
    }


def build_taxonomy_sets(
    taxonomy: Taxonomy,
    out_dir: str | os.PathLike[str],
    options: TaxonomySetOptions = TaxonomySetOptions(),
    *,
    candidates: Iterable[str] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Split ``taxonomy`` (only ``candidates`` may be held out, when given) and write every derived file
    into ``out_dir`` (module docstring); returns the manifest (also written as ``manifest.json``).
    ``name`` (the taxonomy's file) is what error messages call the taxonomy.

    The files are written into a hidden sibling folder (``.NAME.partial-PID``) and moved into ``out_dir``
    at the end: renamed to it when it does not exist, else moved over its same-named files with
    ``manifest.json`` removed first and moved last. So an error or Ctrl-C leaves no partial set behind (the
    sibling is removed), and a folder holding a ``manifest.json`` holds a complete set."""
    out = Path(out_dir)
    opts = options
    split = split_taxonomy(
        taxonomy,
        opts.held_out_fraction,
        opts.validation_fraction,
        opts.seed,
        candidates=candidates,
        name=name,
    )
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a folder; choose another output folder")
    target = out.resolve()  # the sibling is on the same file system, so the moves are renames
    work = target.parent / f".{target.name}.partial-{os.getpid()}"
    state = ["writing"]  # then "moving" (out is being changed), then "done"
    said = {
        "writing": f"nothing was written to {out}; rerun the same command",
        "moving": f"{out} is incomplete (no manifest.json); rerun the same command with --overwrite",
        "done": f"the sets in {out} are complete",
    }
    with on_interrupt(lambda: said[state[0]]), names_path(out):
        try:
            if work.exists():  # left by an earlier run of a process with the same id
                shutil.rmtree(work)
            work.mkdir(parents=True)
            manifest = _write_sets(taxonomy, split, opts, work)
            _publish(work, target, state)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return manifest


def _publish(work: Path, out: Path, state: list[str]) -> None:
    """Move the finished sets in ``work`` to ``out`` (see :func:`build_taxonomy_sets`); ``state[0]`` says how
    far it got (``"moving"`` from before the first change to ``out``, ``"done"``)."""
    state[0] = "moving"
    if not out.exists():
        os.replace(work, out)
        state[0] = "done"
        return
    manifest = work / "manifest.json"
    (out / "manifest.json").unlink(missing_ok=True)
    files = sorted(p for p in work.rglob("*") if p.is_file() and p != manifest)
    for src in [*files, manifest]:
        dst = out / src.relative_to(work)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    state[0] = "done"


def _write_sets(
    taxonomy: Taxonomy, split: TaxonomySplit, opts: TaxonomySetOptions, out: Path
) -> dict[str, Any]:
    """Write every derived file of ``split`` into the folder ``out``; returns the manifest."""
    held = [taxonomy[i] for i in split.held_out]
    banned = {t for c in held for t in (c.name, *c.synonyms, c.definition) if t}
    pairs, dropped = contrastive_pairs(split.train, banned)
    (out / "split.json").write_text(
        json.dumps(
            {
                "seed": opts.seed,
                "held_out_fraction": opts.held_out_fraction,
                "validation_fraction": opts.validation_fraction,
                "concepts": len(taxonomy),
                "train": len(split.train),
                "held_out": list(split.held_out),
                "validation": list(split.validation),
                "report": list(split.report),
            },
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    write_taxonomy(split.train, out / "train.jsonl.gz")
    edges = [
        f"{c}\t{a}\t{h}"
        for c in split.train.concepts
        for a, h in sorted(split.train.ancestors(c).items(), key=lambda kv: (kv[1], kv[0]))
    ]
    (out / "edges.tsv.gz").write_bytes(
        gzip_bytes(("child\tancestor\thops\n" + "".join(e + "\n" for e in edges)).encode("utf-8"))
    )
    _write_jsonl(out / "pairs.jsonl.gz", pairs)
    manifest: dict[str, Any] = {
        "options": dataclasses.asdict(opts),
        "concepts": len(taxonomy),
        "train_concepts": len(split.train),
        "held_out": len(split.held_out),
        "validation": len(split.validation),
        "report": len(split.report),
        "edges": len(edges),
        "direct_edges": len(split.train.edges()),
        "pairs": len(pairs),
        "pairs_dropped_for_held_out_text": dropped,
        "broader": _relation_set(taxonomy, split, "broader", opts, out),
        "narrower": _relation_set(taxonomy, split, "narrower", opts, out),
        "synonym": _synonym_set(taxonomy, split, opts, out),
        "levels": _levels(taxonomy, split, opts, out),
        "subsumption": _subsumption(taxonomy, split, opts, out),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def resolve_taxonomy(source: str) -> Path:
    """A taxonomy file, or the bundled taxonomy of that name (``wordnet``, ``icd10cm``) when no such file."""
    path = Path(source)
    if path.is_file():
        return path
    if source in BUNDLED_TAXONOMIES:
        return taxonomy_path(source)
    raise FileNotFoundError(
        f"taxonomy {source!r}: no such file, and not a bundled taxonomy ({', '.join(BUNDLED_TAXONOMIES)})"
    )


def taxonomy_build_command(
    source: str, out: str, *, overwrite: bool = False, **options: Any
) -> dict[str, Any]:
    """``lorentz-rag taxonomy build``: read ``source`` (a file or a bundled name), write the derived sets
    into ``out`` (refused when it already holds files, unless ``overwrite``), print a summary."""
    out_dir = Path(out)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out_dir} is not empty (pass --overwrite to replace its files)")
    path = resolve_taxonomy(source)
    taxonomy = read_taxonomy(path)
    # A WordNet nouns file: hold out only its own held-out synsets, which no bundled training file contains.
    candidates = wordnet_held_out_ids(path)
    manifest = build_taxonomy_sets(
        taxonomy, out_dir, TaxonomySetOptions(**options), candidates=candidates, name=str(path)
    )
    print(
        f"{source}: {manifest['concepts']} concepts, {manifest['held_out']} held out "
        f"({manifest['validation']} validation); train: {manifest['train_concepts']} concepts, "
        f"{manifest['edges']} closure edges, {manifest['pairs']} pairs"
    )
    for name in ("broader", "narrower", "synonym"):
        m = manifest[name]
        print(
            f"  eval/{name}: {m['queries']} queries ({m['tune_queries']} tune, {m['report_queries']} report), "
            f"{m['corpus']} documents, {m['judgments']} judgments"
        )
    sub = manifest["subsumption"]
    print(
        f"  eval/subsumption: {sub['validation_pairs']} validation / {sub['test_pairs']} test pairs; "
        f"eval/levels.jsonl: {sum(manifest['levels'].values())} rows; written to {out_dir}"
    )
    return manifest
