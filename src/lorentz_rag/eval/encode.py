"""Encoding a corpus: data-parallel under ``torchrun`` and resumable shard by shard, equal to one process.

:func:`encode_corpus` embeds documents exactly as ``model.encode(texts, batch_size=B)`` does in one call, bit
for bit: that call sorts the texts longest first and embeds them in batches of ``B`` in that order, and so
does this module, cutting the sorted order into *shards* of ``K`` documents (``K`` a multiple of ``B``, so
each shard is whole batches of the one-call order: every text meets the same batch-mates and the same
padding). An embedding does not depend on its batch-mates in exact arithmetic, but float32 rounding does
(about 1e-6), hence the identical batches.

- Under ``torchrun`` (a process group started by :func:`lorentz_rag.training.distributed.init_distributed`),
  shard ``j`` (a contiguous run of the sorted order) is encoded by rank ``j % world_size``: dealt round
  robin, so that the ranks get texts of similar lengths rather than rank 0 all the longest. Every rank
  receives the whole ``[n, D]`` result in corpus order.
- Bit-for-bit equality holds at equal threads per process: a few batch shapes (e.g. a short last batch)
  round differently with 1 and 2 BLAS threads, whatever the sharding.
- With a work folder (``work_dir``; always used under ``torchrun`` by ``lorentz-rag index build``), every
  finished shard is written there at once (``shard-000012.safetensors``, atomically), beside a
  ``manifest.json`` that fingerprints the model, the corpus and the settings. A rerun skips the shards that
  are there (with any number of processes), and refuses, with :class:`EncodingWorkMismatchError`, a folder
  made by another model, corpus or settings.
- In one process without a work folder nothing changes: it is one ``model.encode`` call.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from lorentz_rag.atomic_files import write_json
from lorentz_rag.errors import names_path, user_error
from lorentz_rag.models.base import check_finite_embeddings
from lorentz_rag.training.distributed import (
    barrier,
    is_distributed,
    world_info,
)

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "EncodingIncompleteError",
    "EncodingWorkMismatchError",
    "ShardPlan",
    "encode_corpus",
    "finished_shards",
    "work_dir_for",
]

#: Documents per shard (rounded up to a multiple of the batch size).
DEFAULT_SHARD_SIZE = 1024
_MANIFEST = "manifest.json"
_FORMAT_VERSION = 1


@user_error
class EncodingWorkMismatchError(ValueError):
    """A work folder was made by another model, corpus or settings; the message names what differs."""


@user_error
class EncodingIncompleteError(RuntimeError):
    """Encoding stopped before every shard was done (``max_new_shards``); rerun to resume. ``remaining`` and
    ``total`` count shards; the finished ones are in ``work_dir``."""

    def __init__(
        self, message: str, *, remaining: int = 0, total: int = 0, work_dir: Path | None = None
    ) -> None:
        super().__init__(message)
        self.remaining, self.total, self.work_dir = remaining, total, work_dir


def work_dir_for(out: str | os.PathLike[str]) -> Path:
    """The work folder of an index folder ``out``: ``out.encoding`` beside it."""
    out = Path(out).absolute()
    return out.with_name(out.name + ".encoding")


def finished_shards(work_dir: str | os.PathLike[str]) -> int:
    """How many finished shards the work folder ``work_dir`` holds (0 when it does not exist)."""
    return sum(1 for _ in Path(work_dir).glob("shard-*.safetensors"))


@dataclass(frozen=True)
class ShardPlan:
    """The encoding order (corpus positions, longest text first, as ``EmbeddingModel.encode`` sorts) cut
    into shards of ``shard_size`` documents; ``shard_size`` is a multiple of the batch size."""

    order: tuple[int, ...]
    shard_size: int

    @classmethod
    def for_texts(cls, texts: Sequence[str], batch_size: int, shard_size: int) -> ShardPlan:
        if batch_size < 1 or shard_size < 1:
            raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size} and {shard_size}")
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # stable: ties in corpus order
        return cls(tuple(order), math.ceil(shard_size / batch_size) * batch_size)

    @property
    def n_shards(self) -> int:
        return math.ceil(len(self.order) / self.shard_size)

    def positions(self, shard: int) -> list[int]:
        """Corpus positions of shard ``shard``, in encoding order."""
        return list(self.order[shard * self.shard_size : (shard + 1) * self.shard_size])

    def shards_of(self, rank: int, world_size: int) -> range:
        return range(rank, self.n_shards, world_size)


def corpus_fingerprint(texts: Sequence[str], ids: Sequence[str] | None = None) -> str:
    """sha256 of the texts (and ids), in order."""
    digest = hashlib.sha256()
    for part in (texts, ids or ()):
        digest.update(f"{len(part)}|".encode())
        for item in part:
            data = item.encode("utf-8")
            digest.update(f"{len(data)}:".encode() + data)
    return digest.hexdigest()


def _model_fingerprint(model: Any) -> str:
    return model.fingerprint() if hasattr(model, "fingerprint") else type(model).__qualname__


def encode_corpus(
    model: Any,
    texts: Sequence[str],
    *,
    ids: Sequence[str] | None = None,
    prompt_type: str = "document",
    batch_size: int = 64,
    shard_size: int = DEFAULT_SHARD_SIZE,
    work_dir: str | os.PathLike[str] | None = None,
    max_new_shards: int | None = None,
    echo: Callable[[str], None] | None = None,
) -> Tensor:
    """Embed ``texts`` ``[n]`` -> float32 ``[n, D]`` in corpus order, on every rank (see the module docstring).

    ids: the document ids, part of the corpus fingerprint of a work folder.
    work_dir: keep finished shards there and resume from them (created if missing; removed by the caller
    when it no longer needs it).
    max_new_shards: stop after each rank has encoded this many shards, with :class:`EncodingIncompleteError`
    (the finished shards stay in ``work_dir``): a bounded step of a long encoding, and what tests interrupt
    with.
    echo: a ``print``-like function for one line of progress per rank 0 (``None``: quiet).
    """
    texts = list(texts)
    distributed = is_distributed()
    if not distributed and work_dir is None:
        return check_finite_embeddings(
            model.encode(texts, prompt_type=prompt_type, batch_size=batch_size), texts, "documents"
        )
    info = world_info()
    plan = ShardPlan.for_texts(texts, batch_size, shard_size)
    store = _ShardStore(Path(work_dir)) if work_dir is not None else None
    if store is not None:
        store.open(
            {
                "format_version": _FORMAT_VERSION,
                "model_fingerprint": _model_fingerprint(model),
                "corpus_fingerprint": corpus_fingerprint(texts, ids),
                "n_docs": len(texts),
                "prompt_type": prompt_type,
                "batch_size": batch_size,
                "shard_size": plan.shard_size,
            },
            is_main=info.rank == 0,
        )
    done: dict[int, Tensor] = {}
    reused = encoded = 0
    stopped = False
    for shard in plan.shards_of(info.rank, info.world_size):
        if store is not None and store.has(shard):
            reused += 1
            continue
        if max_new_shards is not None and encoded >= max_new_shards:
            stopped = True
            break
        positions = plan.positions(shard)
        chunk = [texts[i] for i in positions]
        emb = check_finite_embeddings(
            model.encode(chunk, prompt_type=prompt_type, batch_size=batch_size), chunk, "documents"
        )
        encoded += 1
        if store is not None:
            store.write(shard, positions, emb)
        else:
            done[shard] = emb
    counts = _sum_over_ranks([reused, encoded, int(stopped)])
    if echo is not None and info.rank == 0:
        echo(
            f"encoded {counts[1]} of {plan.n_shards} shards of {plan.shard_size} documents "
            f"({counts[0]} done before) with {info.world_size} process(es)"
        )
    if counts[2]:
        remaining = plan.n_shards - counts[0] - counts[1]
        raise EncodingIncompleteError(
            f"stopped after {max_new_shards} new shard(s) per process; {remaining} of {plan.n_shards} shards are "
            f"left in {work_dir}: run again to resume",
            remaining=remaining,
            total=plan.n_shards,
            work_dir=None if work_dir is None else Path(work_dir),
        )
    if store is None:
        done = _all_gather_shards(done)
    out = torch.empty(len(texts), _embedding_dim(model, done, store, plan), dtype=torch.float32)
    for shard in range(plan.n_shards):
        positions = plan.positions(shard)
        out[torch.tensor(positions, dtype=torch.long)] = (
            done[shard] if store is None else store.read(shard, positions)
        )
    return out


def _embedding_dim(model: Any, done: dict[int, Tensor], store: _ShardStore | None, plan: ShardPlan) -> int:
    if done:
        return int(next(iter(done.values())).shape[1])
    if store is not None and plan.n_shards:
        return int(store.read(0, plan.positions(0)).shape[1])
    return int(model.embedding_dim)


def _sum_over_ranks(values: list[int]) -> list[int]:
    if not is_distributed():
        return values
    # NCCL (torchrun on GPUs) reduces CUDA tensors only; init_distributed has bound this rank's device.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor(values, dtype=torch.long, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _all_gather_shards(done: dict[int, Tensor]) -> dict[int, Tensor]:
    """Every rank's ``{shard: embeddings}``, merged (one process: ``done`` itself)."""
    if not is_distributed():
        return done
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, done)
    return {shard: emb for part in parts for shard, emb in part.items()}


class _ShardStore:
    """The work folder: ``manifest.json`` and one safetensors file per finished shard."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def open(self, manifest: dict[str, Any], *, is_main: bool) -> None:
        """Check the folder's manifest against ``manifest`` on every rank (so that all refuse alike), then
        let rank 0 create the folder and write it if there was none."""
        path = self.folder / _MANIFEST
        if path.is_file():
            try:
                found = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as error:
                raise EncodingWorkMismatchError(
                    f"{path}: not valid JSON ({error}); delete {self.folder} to encode from the start"
                ) from None
            differs = [key for key in manifest if found.get(key) != manifest[key]]
            if differs:
                raise EncodingWorkMismatchError(
                    f"the encoding work folder {self.folder} was made by another "
                    f"{', '.join(_WHAT.get(key, key) for key in differs)}: its shards cannot be reused. Delete "
                    "it (or build into another --out) to encode from the start"
                )
        elif any(self.folder.glob("shard-*")):
            raise EncodingWorkMismatchError(
                f"the encoding work folder {self.folder} holds shards but no {_MANIFEST}: nothing says which "
                "model or corpus made them. Delete it to encode from the start"
            )
        elif is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json(path, manifest, indent=2)
        barrier()

    def _file(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:06d}.safetensors"

    def has(self, shard: int) -> bool:
        return self._file(shard).is_file()

    def write(self, shard: int, positions: list[int], emb: Tensor) -> None:
        tmp = self._file(shard).with_suffix(f".tmp-{os.getpid()}")
        tensors = {"positions": torch.tensor(positions, dtype=torch.long), "embeddings": emb.contiguous()}
        try:
            with names_path(tmp):  # a full disk names the shard
                save_file(tensors, str(tmp))
                _fsync(tmp)
                os.replace(tmp, self._file(shard))
        except BaseException:  # Ctrl-C or a full disk: leave no half-written shard behind
            tmp.unlink(missing_ok=True)
            raise

    def read(self, shard: int, positions: list[int]) -> Tensor:
        file = self._file(shard)
        if not file.is_file():
            raise FileNotFoundError(f"{file}: shard missing from the encoding work folder (was it deleted?)")
        try:
            tensors = load_file(str(file))
        except (SafetensorError, OSError) as error:
            raise EncodingWorkMismatchError(
                f"{file}: not a readable shard ({error}); delete it to encode it again"
            ) from None
        if tensors.get("positions") is None or tensors["positions"].tolist() != positions:
            raise EncodingWorkMismatchError(f"{file}: holds other documents than the plan's shard {shard}")
        return tensors["embeddings"]


# How the manifest's keys are named in the mismatch error.
_WHAT = {
    "model_fingerprint": "model (other weights or settings)",
    "corpus_fingerprint": "corpus (other ids or texts)",
    "n_docs": "corpus size",
    "format_version": "lorentz_rag version (format_version)",
    "prompt_type": "prompt type",
    "batch_size": "batch size (--batch-size)",
    "shard_size": "shard size (--shard-size)",
}


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
