"""The taxonomy recipe's data (``taxonomy_args``): a run's contrastive mixture and hierarchy edges, derived from
one taxonomy file with the held-out concepts kept out.

When ``taxonomy_args.path`` is set, :func:`prepare_taxonomy_run` (called by the trainer before the run starts)

1. reads the taxonomy (any format of :mod:`lorentz_rag.data.taxonomy`, or a bundled name: ``wordnet``,
   ``icd10cm``) and splits it with :func:`~lorentz_rag.data.taxonomy.split_taxonomy` and
   ``taxonomy_args.held_out_fraction`` / ``validation_fraction`` / ``seed``, exactly as ``lorentz-rag taxonomy
   build`` does with the same settings (a WordNet nouns file holds out only its own held-out synsets), so
   the evaluation sets that command writes are about concepts this run never saw;
2. writes ``OUT/taxonomy/train.jsonl.gz`` (the train split) and points ``hierarchy_args.taxonomy_path`` at it:
   the hierarchy objective's edges are the train split's closure;
3. writes ``OUT/taxonomy/pairs.jsonl``, the contrastive mixture, and points ``data_args.data_path`` at it: the
   taxonomy's own pairs (name -> definition, synonym -> definition of train concepts,
   :func:`~lorentz_rag.data.taxonomy_sets.contrastive_pairs`; at most ``max_pairs``, a seeded sample), then
   ``broader_pairs`` child -> ancestor pairs (:func:`~lorentz_rag.data.taxonomy_sets.broader_pairs`), plus
   general pairs from ``replay_path`` so that they make up ``replay_share`` of the rows (seeded sample,
   fewer if the files hold fewer);
4. writes ``OUT/taxonomy/split.json`` (the held-out ids and the counts of every part).

Every row whose query or document equals (case-folded) a held-out concept's name, synonym or definition is
dropped, from the taxonomy's pairs and from the replayed general pairs alike: held-out concepts never reach
training. The result is a pure function of the configuration, so a resumed run prepares the same files.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from lorentz_rag.atomic_files import write_json, write_jsonl
from lorentz_rag.data.concepts import Taxonomy
from lorentz_rag.data.jsonl import read_jsonl
from lorentz_rag.data.taxonomy import (
    TaxonomySplit,
    read_taxonomy,
    split_taxonomy,
    wordnet_held_out_ids,
    write_taxonomy,
)
from lorentz_rag.data.taxonomy_sets import broader_pairs, contrastive_pairs, resolve_taxonomy
from lorentz_rag.training.config import TaxonomyArgs, TrainConfig

__all__ = ["TAXONOMY_FOLDER", "prepare_taxonomy_run", "split_for_run"]

#: The folder under ``output_dir`` where the recipe's derived files are written.
TAXONOMY_FOLDER = "taxonomy"


def _replay_rows(paths: str | list[str] | None, banned: set[str]) -> tuple[list[dict[str, str]], int]:
    """``{"query", "document"}`` rows of the general pair files, without rows naming a held-out text."""
    rows: list[dict[str, str]] = []
    dropped = 0
    for path in [paths] if isinstance(paths, str) else (paths or []):
        for row in read_jsonl(path):
            query, document = str(row["query"]), str(row["document"])
            if query.casefold() in banned or document.casefold() in banned:
                dropped += 1
                continue
            rows.append({"query": query, "document": document})
    return rows, dropped


def split_for_run(args: TaxonomyArgs) -> tuple[Path, Taxonomy, TaxonomySplit]:
    """``(file, taxonomy, split)`` of ``taxonomy_args``: the taxonomy read from ``path`` (a file or bundled
    name) and split as ``lorentz-rag taxonomy build`` splits it with the same fractions and seed."""
    source = resolve_taxonomy(args.path)
    taxonomy = read_taxonomy(source)
    split = split_taxonomy(
        taxonomy,
        args.held_out_fraction,
        args.validation_fraction,
        args.seed,
        candidates=wordnet_held_out_ids(source),
        name=f"taxonomy_args.path={args.path}",
    )
    return Path(source), taxonomy, split


def prepare_taxonomy_run(config: TrainConfig) -> TrainConfig:
    """``config`` unchanged without ``taxonomy_args.path``; otherwise a copy whose ``data_args.data_path`` and
    ``hierarchy_args.taxonomy_path`` point at the files written under ``output_dir/taxonomy`` (module
    docstring)."""
    args = config.taxonomy_args
    if args.path is None:
        return config
    source, taxonomy, split = split_for_run(args)
    held = [taxonomy[i] for i in split.held_out]
    banned_texts = {t for c in held for t in (c.name, *c.synonyms, c.definition) if t}
    banned = {t.casefold() for t in banned_texts}
    rng = random.Random(f"taxonomy-recipe-{args.seed}")
    pairs, dropped = contrastive_pairs(split.train, banned_texts) if args.use_pairs else ([], 0)
    if args.max_pairs is not None and len(pairs) > args.max_pairs:
        pairs = rng.sample(pairs, args.max_pairs)
    broader = broader_pairs(split.train, args.broader_pairs, args.broader_max_hops, args.seed, banned_texts)
    pairs += broader
    general, general_dropped = _replay_rows(args.replay_path, banned) if args.replay_share > 0 else ([], 0)
    wanted = round(args.replay_share / (1.0 - args.replay_share) * len(pairs)) if pairs else len(general)
    replay = rng.sample(general, min(wanted, len(general)))
    rows = pairs + replay
    if not rows:
        raise ValueError(
            f"taxonomy_args.path={args.path}: the mixture is empty (no pairs from the taxonomy's train split and "
            "no replayed general pairs); set taxonomy_args.use_pairs or taxonomy_args.replay_path"
        )
    rng.shuffle(rows)

    folder = Path(config.train_args.output_dir) / TAXONOMY_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    train_file = folder / "train.jsonl.gz"
    write_taxonomy(split.train, folder / f".train-{os.getpid()}.jsonl.gz").replace(train_file)
    pairs_file = folder / "pairs.jsonl"
    # Every rank of a torchrun job writes the same bytes: each write is all-or-nothing (atomic_files).
    write_jsonl(pairs_file, rows)
    summary: dict[str, Any] = {
        "taxonomy": str(source),
        "seed": args.seed,
        "held_out_fraction": args.held_out_fraction,
        "validation_fraction": args.validation_fraction,
        "concepts": len(taxonomy),
        "train_concepts": len(split.train),
        "held_out": list(split.held_out),
        "validation": list(split.validation),
        "taxonomy_pairs": len(pairs) - len(broader),
        "broader_pairs": len(broader),
        "taxonomy_pairs_dropped_for_held_out_text": dropped,
        "replay_pairs": len(replay),
        "replay_pairs_dropped_for_held_out_text": general_dropped,
    }
    write_json(folder / "split.json", summary)

    prepared = config.model_copy(deep=True)
    prepared.data_args.data_path = str(pairs_file)
    prepared.data_args.data_format = "jsonl"
    prepared.hierarchy_args.taxonomy_path = str(train_file)
    return prepared
