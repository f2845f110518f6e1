"""Training-data readers: one API over JSONL files and folders, Hugging Face datasets and MDS folders.

Rows are validated into the schema of :mod:`lorentz_rag.data.schema` (``contrastive`` and ``mlm`` rows).

:func:`open_dataset` picks the reader from the source and returns one of

- :class:`RowDataset` (map-style, in memory): JSONL files/folders and Hugging Face datasets read whole.
  Pair it with :class:`ResumableSampler` for shuffling and exact resume;
- :class:`IterableRows`: Hugging Face datasets opened with ``streaming=True`` (hub names, large folders);
- an MDS dataset (:func:`lorentz_rag.data.mds.open_mds`): mosaicml-streaming's ``StreamingDataset``, which
  shards by rank and DataLoader worker itself and resumes through its own ``state_dict``.

Sharding: each rank gets a disjoint, deterministic share of the *valid* rows, row ``k`` going to rank
``k % world_size``; shares are cut to equal length (the last ``n % world_size`` rows are dropped and counted)
because DDP hangs when ranks run different numbers of steps. Malformed rows (invalid JSON or UTF-8, a missing
column, a wrong type, an empty text) raise :class:`~lorentz_rag.data.jsonl.DataFormatError` naming the file and
line (or dataset row); with ``skip_malformed=True`` they are skipped and counted in :class:`ReadStats`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset, IterableDataset, Sampler, get_worker_info

from lorentz_rag.data.jsonl import DataFormatError, read_jsonl_numbered
from lorentz_rag.data.mds import open_mds
from lorentz_rag.data.schema import Kind, ReadStats, check_kind, validate_row

__all__ = [
    "DataFormatError",
    "IterableRows",
    "ResumableSampler",
    "RowDataset",
    "detect_format",
    "iter_jsonl_rows",
    "jsonl_files",
    "open_dataset",
    "read_rows",
]

Format = Literal["auto", "jsonl", "hf", "mds"]
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")
# --- sources: (where, raw row) streams ----------------------------------------------------------------
# A raw stream yields (where, row) pairs; a row may be an exception standing for a line that could not even
# be decoded, so that the caller decides between raising and skipping in one place.


def jsonl_files(path: str | os.PathLike[str]) -> list[Path]:
    """A JSONL file itself, or the ``.jsonl``/``.jsonl.gz`` files under a folder (recursively, sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or folder: {path}")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(_JSONL_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no {', '.join(_JSONL_SUFFIXES)} files under {path}")
    return files


def iter_jsonl_rows(path: str | os.PathLike[str]) -> Iterator[tuple[str, Any]]:
    """The raw stream of one JSONL file: ``(file:line, value or DataFormatError)`` for every non-blank line
    (:func:`~lorentz_rag.data.jsonl.read_jsonl_numbered` with ``bad_lines="yield"``: a bad line does not end the
    stream, so the reader can skip it when asked; :func:`validate_row` checks that a value is an object)."""
    for lineno, value in read_jsonl_numbered(path, objects=False, bad_lines="yield"):
        yield f"{path}:{lineno}", value


def detect_format(source: str | os.PathLike[str]) -> str:
    """``jsonl``, ``hf`` or ``mds`` for a source: an MDS folder has ``index.json``; a JSONL file or a folder
    of them is ``jsonl``; anything else (a ``save_to_disk`` folder, parquet/csv files, a hub name) is ``hf``."""
    path = Path(source)
    if path.is_file():
        return "jsonl" if path.name.endswith(_JSONL_SUFFIXES) else "hf"
    if path.is_dir():
        if (path / "index.json").is_file():
            return "mds"
        if any(
            (path / marker).is_file() for marker in ("dataset_info.json", "dataset_dict.json", "state.json")
        ):
            return "hf"
        if any(p.name.endswith(_JSONL_SUFFIXES) for p in path.rglob("*")):
            return "jsonl"
        return "hf"
    if _looks_local(str(source)):
        raise FileNotFoundError(
            f"no such file or folder: {source} (a Hugging Face hub dataset is named like 'org/name')"
        )
    return "hf"  # not a local path: a hub name


def _looks_local(source: str) -> bool:
    """Whether a source that does not exist was meant as a local path (absolute or relative with ./, ../
    or ~, a data file suffix, or more folders than a hub 'org/name' has), not a hub dataset name."""
    suffixes = (*_JSONL_SUFFIXES, ".json", ".parquet", ".csv", ".arrow", ".txt")
    return (
        source.startswith(("/", "./", "../", "~"))
        or source.endswith(suffixes)
        or source.count("/") > 1
        or (os.sep != "/" and os.sep in source)
    )


def _load_hf(source: str, split: str, streaming: bool):
    try:
        import datasets
    except ImportError as error:  # pragma: no cover - datasets is in the train extra
        raise ImportError(
            "reading Hugging Face datasets needs `datasets` (pip install 'lorentz-rag[train]')"
        ) from error
    path = Path(source)
    if path.is_dir() and any(
        (path / m).is_file() for m in ("dataset_info.json", "dataset_dict.json", "state.json")
    ):
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise KeyError(f"{source}: no split {split!r}; splits: {', '.join(data)}")
            data = data[split]
        return data.to_iterable_dataset() if streaming else data
    return datasets.load_dataset(source, split=split, streaming=streaming)


def _iter_hf_rows(data: Iterable[Any], name: str) -> Iterator[tuple[str, Any]]:
    for i, row in enumerate(data):
        yield f"{name} row {i}", row


def _raw_rows(source: str, fmt: str, split: str, streaming: bool) -> Iterator[tuple[str, Any]]:
    if fmt == "jsonl":
        for path in jsonl_files(source):
            yield from iter_jsonl_rows(path)
    elif fmt == "hf":
        yield from _iter_hf_rows(_load_hf(source, split, streaming), f"{source} ({split})")
    else:
        raise ValueError(f"unknown data format {fmt!r}")


def _valid_rows(
    raw: Iterable[tuple[str, Any]],
    kind: Kind,
    columns: Mapping[str, str] | None,
    skip_malformed: bool,
    stats: ReadStats,
) -> Iterator[dict[str, Any]]:
    for where, row in raw:
        try:
            if isinstance(row, Exception):
                raise row
            valid = validate_row(row, kind, where, columns=columns)
        except DataFormatError as error:
            if not skip_malformed:
                raise
            stats.record_skip(error)
            continue
        yield valid


# --- datasets ---------------------------------------------------------------------------------------


class RowDataset(Dataset):
    """Map-style dataset of validated rows (this rank's share); ``stats`` says what was read and skipped."""

    def __init__(self, rows: list[dict[str, Any]], kind: Kind, stats: ReadStats | None = None) -> None:
        self.rows = rows
        self.kind = kind
        self.stats = stats or ReadStats(rows=len(rows))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


class IterableRows(IterableDataset):
    """Validated rows streamed from a source, this rank's share (row ``k`` of the valid rows goes to rank
    ``k % world_size``, in complete rounds so every rank yields the same number), further split between
    DataLoader workers.

    ``resume_from(n)`` makes the next pass skip the first ``n`` rows of this rank's stream (exact with
    ``num_workers <= 1``; the trainer counts the rows it consumed). ``stats`` is updated in the iterating
    process (with workers, in each worker's copy).
    """

    def __init__(
        self,
        make_raw: Callable[[], Iterable[tuple[str, Any]]],
        kind: Kind,
        *,
        rank: int = 0,
        world_size: int = 1,
        columns: Mapping[str, str] | None = None,
        skip_malformed: bool = False,
        max_rows: int | None = None,
    ) -> None:
        super().__init__()
        _check_rank(rank, world_size)
        self.make_raw, self.kind = make_raw, kind
        self.rank, self.world_size = rank, world_size
        self.columns, self.skip_malformed, self.max_rows = columns, skip_malformed, max_rows
        self.stats = ReadStats()
        self.start = 0

    def resume_from(self, rows_consumed: int) -> None:
        self.start = int(rows_consumed)

    def _rank_rows(self) -> Iterator[dict[str, Any]]:
        self.stats = ReadStats()
        pending: dict[str, Any] | None = None
        for k, row in enumerate(
            _valid_rows(self.make_raw(), self.kind, self.columns, self.skip_malformed, self.stats)
        ):
            if self.max_rows is not None and k >= self.max_rows:
                break
            self.stats.rows = k + 1
            if k % self.world_size == self.rank:
                pending = row
            if k % self.world_size == self.world_size - 1:  # a complete round: every rank has its row
                assert pending is not None
                yield pending
                pending = None
        self.stats.dropped_for_balance = self.stats.rows % self.world_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for j, row in enumerate(self._rank_rows()):
            if j >= self.start and j % num_workers == worker:
                yield row


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")


def open_dataset(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    kind: Kind = "contrastive",
    *,
    format: Format = "auto",
    split: str = "train",
    rank: int,
    world_size: int,
    skip_malformed: bool = False,
    streaming: bool = False,
    max_rows: int | None = None,
    columns: Mapping[str, str] | None = None,
    mds_options: Mapping[str, Any] | None = None,
) -> RowDataset | IterableRows | Any:
    """Open training rows of ``kind`` from ``source`` and return this rank's share, validated.

    source: a ``.jsonl``/``.jsonl.gz`` file, a folder of them, a Hugging Face ``save_to_disk`` folder, a
    folder of parquet/csv files or a hub name (``split`` picks the split), an MDS folder; or a list of
    sources of one format, read one after the other. ``format="auto"`` decides with :func:`detect_format`.
    rank / world_size: this process's place (the caller asks its launcher, e.g.
    :func:`lorentz_rag.training.distributed.world_info`); required, so that no reader guesses it.
    streaming: read a Hugging Face dataset lazily (:class:`IterableRows`) instead of into memory.
    columns: canonical -> source column names, e.g. ``{"query": "question", "document": "answer"}``.
    mds_options: keyword arguments for :func:`lorentz_rag.data.mds.open_mds` (``batch_size``, ``shuffle``, ...).

    Returns a :class:`RowDataset` (JSONL, HF in memory), an :class:`IterableRows` (HF streaming) or an MDS
    dataset; each has a ``stats`` :class:`ReadStats` (MDS: see ``open_mds``).
    """
    check_kind(kind)
    _check_rank(rank, world_size)
    sources = [str(source)] if isinstance(source, (str, os.PathLike)) else [str(s) for s in source]
    if not sources:
        raise ValueError("open_dataset needs at least one source")
    formats = {format if format != "auto" else detect_format(s) for s in sources}
    if len(formats) != 1:
        raise ValueError(f"sources mix formats {sorted(formats)}; convert them to one format first")
    fmt = formats.pop()
    if fmt == "mds":
        if len(sources) != 1:
            raise ValueError("open one MDS folder at a time (or merge them with streaming's Stream objects)")
        return open_mds(
            sources[0], kind, rank=rank, world_size=world_size, columns=columns, **dict(mds_options or {})
        )

    def make_raw() -> Iterator[tuple[str, Any]]:
        for s in sources:
            yield from _raw_rows(s, fmt, split, streaming)

    if streaming:
        return IterableRows(
            make_raw,
            kind,
            rank=rank,
            world_size=world_size,
            columns=columns,
            skip_malformed=skip_malformed,
            max_rows=max_rows,
        )
    stats = ReadStats()
    rows: list[dict[str, Any]] = []
    for k, row in enumerate(_valid_rows(make_raw(), kind, columns, skip_malformed, stats)):
        if max_rows is not None and k >= max_rows:
            break
        stats.rows = k + 1
        if k % world_size == rank:
            rows.append(row)
    per_rank = stats.rows // world_size
    stats.dropped_for_balance = stats.rows - per_rank * world_size
    if stats.rows == 0:
        raise DataFormatError(
            f"{', '.join(sources)}: no valid {kind} rows ({stats.skipped} malformed skipped)"
        )
    return RowDataset(rows[:per_rank], kind, stats)


def read_rows(data_args: Any, kind: Kind, *, skip_malformed: bool = False) -> RowDataset:
    """All rows a training config's ``data_args`` names, in memory (every rank holds them whole; shard with
    :class:`ResumableSampler`). ``data_args`` has ``data_path``, ``data_format``, ``split``, ``max_rows`` and
    the ``*_column`` names (:class:`lorentz_rag.training.config.DataArgs`). MDS folders are streamed, not held:
    open them with :func:`open_dataset`.
    """
    names = ("query", "document", "negatives") if kind == "contrastive" else ("text",)
    columns = {name: getattr(data_args, f"{name}_column", name) for name in names}
    data = open_dataset(
        data_args.data_path,
        kind,
        format=getattr(data_args, "data_format", "auto"),
        split=getattr(data_args, "split", "train"),
        max_rows=getattr(data_args, "max_rows", None),
        columns=columns,
        rank=0,
        world_size=1,
        skip_malformed=skip_malformed,
    )
    if not isinstance(data, RowDataset):
        raise ValueError(f"{data_args.data_path} is an MDS folder; open it with open_dataset (it streams)")
    return data


# --- sampling with exact resume ---------------------------------------------------------------------


class ResumableSampler(Sampler[int]):
    """Seeded, optionally sharded index order whose position can be saved and restored exactly.

    Epoch ``e`` visits ``randperm(length, seed + e)`` (or ``0..length-1`` without ``shuffle``); rank ``r``
    takes every ``world_size``-th index from ``r``; ranks stay in step by cutting the order to
    ``length // world_size`` each (``drop_last``) or by repeating its first indices (``drop_last=False``).
    Use it with ``world_size=1`` on a :class:`RowDataset` (already this rank's share), or with the real
    rank/world size on a dataset that every rank holds whole (then each epoch reshuffles across ranks).

    State is ``{"epoch", "index"}``: ``index`` indices of ``epoch`` were handed out. Iterating continues from
    there; finishing an epoch moves to the next. ``state_dict(samples_consumed)`` lets the trainer record
    what it really consumed (a DataLoader with workers prefetches ahead of the sampler's own counter).
    """

    def __init__(
        self,
        length: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        _check_rank(rank, world_size)
        if length < world_size:
            raise ValueError(f"{length} samples cannot be shared by {world_size} ranks")
        self.length, self.seed, self.rank, self.world_size = length, seed, rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch = 0
        self.index = 0

    def __len__(self) -> int:
        if self.drop_last:
            return self.length // self.world_size
        return -(-self.length // self.world_size)

    def order(self, epoch: int) -> list[int]:
        """This rank's full index order for ``epoch``."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.length, generator=generator)
        else:
            perm = torch.arange(self.length)
        total = len(self) * self.world_size
        if total > self.length:  # drop_last=False: wrap around so every rank gets the same count
            perm = torch.cat([perm, perm[: total - self.length]])
        return perm[self.rank : len(self) * self.world_size : self.world_size].tolist()

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning; a no-op if it is already the current epoch (e.g. after a resume)."""
        if epoch != self.epoch:
            self.epoch, self.index = int(epoch), 0

    def __iter__(self) -> Iterator[int]:
        order = self.order(self.epoch)
        while self.index < len(order):
            i = order[self.index]
            self.index += 1
            yield i
        self.epoch, self.index = self.epoch + 1, 0

    def state_dict(self, samples_consumed: int | None = None) -> dict[str, int]:
        """``{"epoch", "index", "seed", "length", "world_size"}``; ``samples_consumed`` overrides ``index``."""
        index = self.index if samples_consumed is None else int(samples_consumed)
        return {
            "epoch": self.epoch,
            "index": index,
            "seed": self.seed,
            "length": self.length,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        for key in ("seed", "length", "world_size"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state was saved with {key}={state[key]}, this run has {key}={getattr(self, key)}; "
                    "resume with the same data and world size"
                )
        if not 0 <= int(state["index"]) <= len(self):
            raise ValueError(f"sampler index {state['index']} outside [0, {len(self)}]")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
