"""Convert any JSONL / Hugging Face source into a MosaicML Streaming (MDS) folder (``lorentz-rag data to-mds``).

Reading is :func:`lorentz_rag.data.readers.open_dataset`, writing :func:`lorentz_rag.data.mds.write_mds`; this module
sits above both so that neither imports the other's caller.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lorentz_rag.data.mds import write_mds
from lorentz_rag.data.readers import open_dataset
from lorentz_rag.data.schema import Kind, ReadStats

__all__ = ["ConversionReport", "convert_to_mds"]


@dataclass(frozen=True)
class ConversionReport:
    """What :func:`convert_to_mds` wrote: ``rows`` into ``out``; ``stats`` of the reader (skipped rows)."""

    out: Path
    rows: int
    stats: ReadStats


def convert_to_mds(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    kind: Kind = "contrastive",
    *,
    split: str = "train",
    skip_malformed: bool = False,
    columns: Mapping[str, str] | None = None,
    compression: str | None = "zstd",
) -> ConversionReport:
    """Read any JSONL / Hugging Face source with :func:`~lorentz_rag.data.readers.open_dataset` and write it as MDS.

    Every row is kept in its source order (one process, ``world_size=1``); malformed rows raise with file and
    line, or are skipped and counted with ``skip_malformed``.
    """
    data = open_dataset(
        source, kind, split=split, rank=0, world_size=1, skip_malformed=skip_malformed, columns=columns
    )
    n = write_mds(iter(data), out, kind, compression=compression)
    return ConversionReport(out=Path(out), rows=n, stats=data.stats)
