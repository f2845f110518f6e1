"""MosaicML Streaming (MDS) folders: write validated rows, read them back sharded by rank.

mosaicml-streaming is an optional dependency (the ``mds`` extra) and is imported only here, on first use.
Columns: contrastive rows store ``query`` and ``document`` as ``str`` and ``negatives`` as ``json``; MLM
rows store ``text`` as ``str`` (the paper's research code's ``MDS_PRETRAIN_DATA_PATH`` folders use the same names).

Reading uses streaming's own partitioning: it takes the rank from the launcher's ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_WORLD_SIZE`` variables and splits further between DataLoader workers, so the dataset must be handed
to the DataLoader un-iterated (never iterate it in the main process first). Its ``state_dict(num_samples,
from_beginning)`` / ``load_state_dict`` give exact resume (or use ``streaming.StreamingDataLoader``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lorentz_rag.data.schema import Kind, ReadStats, check_kind, validate_row

__all__ = ["MDS_COLUMNS", "import_streaming", "open_mds", "write_mds"]

#: MDS column encodings per row kind.
MDS_COLUMNS: dict[str, dict[str, str]] = {
    "contrastive": {"query": "str", "document": "str", "negatives": "json"},
    "mlm": {"text": "str"},
}


def import_streaming():
    """The ``streaming`` package, or an ImportError that says how to install it."""
    try:
        import streaming
    except ImportError as error:
        raise ImportError(
            "reading or writing MDS folders needs mosaicml-streaming: pip install 'lorentz-rag[mds]' "
            f"(streaming also imports torchvision at import time) [{error}]"
        ) from error
    return streaming


def write_mds(
    rows: Iterable[Mapping[str, Any]],
    out: str | os.PathLike[str],
    kind: Kind,
    *,
    compression: str | None = "zstd",
    size_limit: int | str = "64mb",
) -> int:
    """Validate ``rows`` (canonical column names) and write them to a new MDS folder ``out``; return the count.

    Refuses to write into a folder that already has files (MDS shards would mix); on an error (a malformed
    row) the partly written folder is removed.
    """
    if kind not in MDS_COLUMNS:
        raise ValueError(f"unknown row kind {kind!r}; expected 'contrastive' or 'mlm'")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; write MDS shards into a new folder")
    streaming = import_streaming()
    n = 0
    try:
        with streaming.MDSWriter(
            out=str(out), columns=MDS_COLUMNS[kind], compression=compression, size_limit=size_limit
        ) as writer:
            for i, row in enumerate(rows):
                writer.write(validate_row(row, kind, f"row {i}"))
                n += 1
    except BaseException:
        # A half-written folder would later read as a valid, shorter dataset: remove it.
        shutil.rmtree(out, ignore_errors=True)
        raise
    return n


_MDS_CLASS: type | None = None


def _mds_dataset_class() -> type:
    """A ``StreamingDataset`` subclass whose samples are validated rows (built once, after the lazy import)."""
    global _MDS_CLASS
    if _MDS_CLASS is None:
        streaming = import_streaming()

        class MDSRows(streaming.StreamingDataset):
            """streaming's dataset, each sample checked by :func:`validate_row` (error names the sample id)."""

            def __init__(self, *, kind: Kind, columns: Mapping[str, str] | None, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                self.kind, self.columns, self.mds_path = kind, dict(columns or {}), kwargs.get("local")
                self.stats = ReadStats(rows=self.size)

            def get_item(self, sample_id: int, retry: int = 7) -> dict[str, Any]:
                sample = super().get_item(sample_id, retry=retry)
                return validate_row(
                    sample, self.kind, f"{self.mds_path} sample {sample_id}", columns=self.columns
                )

        _MDS_CLASS = MDSRows
    return _MDS_CLASS


def open_mds(
    path: str | os.PathLike[str],
    kind: Kind = "contrastive",
    *,
    rank: int = 0,
    world_size: int = 1,
    columns: Mapping[str, str] | None = None,
    batch_size: int | None = None,
    shuffle: bool = False,
    seed: int = 9176,
    **streaming_kwargs: Any,
):
    """Open a local MDS folder as a streaming ``StreamingDataset`` of validated rows of ``kind``.

    ``rank`` / ``world_size`` must agree with the launcher's environment, which is what streaming partitions
    by (a mismatch would silently give ranks overlapping data). ``batch_size`` should be the per-rank batch
    size, required (streaming partitions by it for deterministic resume). Extra keyword arguments go to
    ``StreamingDataset`` (e.g. ``epoch_size``, ``num_canonical_nodes``).
    """
    path = Path(path)
    if not (path / "index.json").is_file():
        raise FileNotFoundError(
            f"{path} is not an MDS folder (no index.json); write one with `lorentz-rag data to-mds`"
        )
    env_rank, env_world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if (rank, world_size) != (env_rank, env_world):
        raise ValueError(
            f"MDS reading shards by the launcher's RANK={env_rank}/WORLD_SIZE={env_world}, but rank={rank}, "
            f"world_size={world_size} was asked for; launch with torchrun/deepspeed so they agree"
        )
    check_kind(kind)
    if batch_size is None or batch_size < 1:
        raise ValueError(
            "open_mds needs batch_size, the per-rank DataLoader batch size (streaming partitions samples by it "
            "for deterministic resume); with open_dataset pass mds_options={'batch_size': N}"
        )
    cls = _mds_dataset_class()
    return cls(
        kind=kind,
        columns=columns,
        local=str(path),
        remote=None,
        batch_size=batch_size,
        shuffle=shuffle,
        shuffle_seed=seed,
        **streaming_kwargs,
    )
