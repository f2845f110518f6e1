"""Data readers: the bundled real data (``bundled``), BEIR evaluation folders (``beir``) and the one JSONL
reader (``jsonl``)."""

from __future__ import annotations

from lorentz_rag.data.beir import BeirData, BeirFormatError, load_beir, write_beir
from lorentz_rag.data.bundled import (
    LevelItem,
    data_dir,
    faq_dev_path,
    load_wordnet_levels,
    mlm_text_path,
    pair_paths,
    wordnet_levels_path,
    wordnet_nouns_path,
)
from lorentz_rag.data.jsonl import DataFormatError, read_jsonl

__all__ = [
    "BeirData",
    "BeirFormatError",
    "DataFormatError",
    "LevelItem",
    "data_dir",
    "faq_dev_path",
    "load_beir",
    "load_wordnet_levels",
    "mlm_text_path",
    "pair_paths",
    "read_jsonl",
    "wordnet_levels_path",
    "wordnet_nouns_path",
    "write_beir",
]
