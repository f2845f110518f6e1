"""Data readers: the bundled real data (``bundled``) and BEIR evaluation folders (``beir``)."""

from __future__ import annotations

from hyprag.data.beir import BeirData, BeirFormatError, load_beir, write_beir
from hyprag.data.bundled import (
    DataFormatError,
    LevelItem,
    data_dir,
    faq_dev_path,
    load_wordnet_levels,
    mlm_text_path,
    pair_paths,
    read_jsonl,
    wordnet_levels_path,
    wordnet_nouns_path,
)

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
