"""The real data bundled in the repository's ``data/`` folder.

``data/`` is produced by ``scripts/build_data.py`` from Debian packages (WordNet 3.0, the Python 3.11
documentation, the Debian FAQ); ``data/README.md`` lists every file with its source, license, row
count and sha256. Set ``LORENTZ_RAG_DATA_DIR`` to read the same layout from another folder.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

# DataFormatError and read_jsonl are re-exported: callers outside data/ import them from here.
from lorentz_rag.data.jsonl import DataFormatError as DataFormatError
from lorentz_rag.data.jsonl import read_jsonl as read_jsonl
from lorentz_rag.data.jsonl import read_jsonl_numbered

DATA_DIR_ENV = "LORENTZ_RAG_DATA_DIR"
#: ``<repo>/data`` for a source checkout (``src/lorentz_rag/data/bundled.py`` -> three folders up).
REPO_DATA_DIR = Path(__file__).resolve().parents[3] / "data"


def data_dir() -> Path:
    """The bundled data folder: ``$LORENTZ_RAG_DATA_DIR`` if set, else the repository's ``data/``.

    Read at call time, so changing the environment variable takes effect immediately.
    """
    override = os.environ.get(DATA_DIR_ENV)
    folder = Path(override).expanduser() if override else REPO_DATA_DIR
    if not folder.is_dir():
        hint = f"${DATA_DIR_ENV}={override}" if override else "the repository's data/ folder"
        raise FileNotFoundError(
            f"bundled data folder {folder} not found ({hint}); run `python scripts/build_data.py` "
            f"or point {DATA_DIR_ENV} at a folder with the same layout"
        )
    return folder


def faq_dev_path() -> Path:
    """BEIR folder of the FAQ development set (Python FAQ + Debian FAQ; question -> answer)."""
    return data_dir() / "eval" / "faq-dev"


def wordnet_hier_path() -> Path:
    """BEIR folder of the hierarchical retrieval set: held-out synset (name or gloss) -> its train-split
    ancestors, graded by hops (3 = parent); qrels splits ``test`` (all), ``tune`` and ``report``."""
    return data_dir() / "eval" / "wordnet-hier"


#: The two halves of every evaluation set: settings are chosen on ``tune``, results reported on ``report``.
PARTS = ("tune", "report")


def part_of(key: str) -> str:
    """``"tune"`` or ``"report"``: sha256(``part:<key>``) even or odd (the rule ``scripts/build_data.py``
    splits the qrels with; keys are query ids, query synsets or probe synset ids)."""
    digest = hashlib.sha256(f"part:{key}".encode()).digest()
    return PARTS[int.from_bytes(digest[:8], "big") % 2]


def wordnet_levels_path() -> Path:
    """JSONL hierarchy probe: ``{"level", "id", "depth", "text"}`` glosses of held-out synsets."""
    return data_dir() / "eval" / "wordnet-levels.jsonl"


def wordnet_nouns_path() -> Path:
    """Gzipped JSONL of all WordNet 3.0 noun synsets (ids, lemmas, gloss, hypernyms, depth, split)."""
    return data_dir() / "wordnet" / "nouns.jsonl.gz"


#: Taxonomies bundled in ``data/`` by name (``lorentz-rag taxonomy build wordnet --out DIR``).
BUNDLED_TAXONOMIES = ("wordnet", "icd10cm")


def taxonomy_path(name: str) -> Path:
    """The bundled taxonomy ``name``: ``wordnet`` (the nouns file, converted when read) or ``icd10cm``
    (``taxonomies/icd10cm.jsonl.gz``, ICD-10-CM chapters, blocks and codes)."""
    if name == "wordnet":
        return wordnet_nouns_path()
    if name in BUNDLED_TAXONOMIES:
        return data_dir() / "taxonomies" / f"{name}.jsonl.gz"
    raise ValueError(f"no bundled taxonomy {name!r}; bundled: {', '.join(BUNDLED_TAXONOMIES)}")


def mlm_text_path() -> Path:
    """Gzipped JSONL of ``{"text"}`` chunks of the Python 3.11 docs, for masked-language-model training."""
    return data_dir() / "train" / "mlm_python_docs.jsonl.gz"


def pair_paths() -> list[Path]:
    """Gzipped JSONL files of ``{"query", "document"}`` contrastive training pairs, sorted by name."""
    paths = sorted((data_dir() / "train").glob("pairs_*.jsonl.gz"))
    if not paths:
        raise FileNotFoundError(f"no pairs_*.jsonl.gz files in {data_dir() / 'train'}")
    return paths


@dataclass(frozen=True)
class LevelItem:
    """One probe text: ``level`` 1 (general) .. N (specific), WordNet synset ``id``, its ``depth``."""

    level: int
    id: str
    depth: int
    text: str


def load_wordnet_levels(path: str | os.PathLike[str] | None = None) -> list[LevelItem]:
    """Read the hierarchy probe set (default: the bundled ``eval/wordnet-levels.jsonl``), in file order."""
    path = Path(path) if path is not None else wordnet_levels_path()
    items: list[LevelItem] = []
    for lineno, row in read_jsonl_numbered(path):
        level, synset_id, depth, text = row.get("level"), row.get("id"), row.get("depth", -1), row.get("text")
        if not isinstance(level, int) or isinstance(level, bool) or level < 1:
            raise DataFormatError(f"{path}:{lineno}: 'level' must be an integer >= 1, got {level!r}")
        if not isinstance(synset_id, str) or not isinstance(text, str) or not text:
            raise DataFormatError(f"{path}:{lineno}: 'id' and 'text' must be non-empty strings")
        if not isinstance(depth, int):
            raise DataFormatError(f"{path}:{lineno}: 'depth' must be an integer, got {depth!r}")
        items.append(LevelItem(level=level, id=synset_id, depth=depth, text=text))
    if not items:
        raise DataFormatError(f"{path}: no rows")
    return items
