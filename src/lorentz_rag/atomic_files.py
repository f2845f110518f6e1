"""Writing a file so that a reader finds the old content or the new, never a part of either.

Each writer puts the bytes into a temporary file beside the target (``.NAME.tmp-PID``: the same filesystem, so
the rename is atomic; the process id keeps ranks that write the same file apart), flushes and fsyncs it, then
renames it over the target. A failure (a full disk, Ctrl-C) removes the temporary file and leaves the target
as it was; an ``OSError`` without a file name (a write on a full disk) is given the target's name, so the error
line says which file could not be written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lorentz_rag.errors import names_path

__all__ = ["write_bytes", "write_json", "write_jsonl", "write_text"]


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace ``path``'s content with ``data``, atomically (module docstring); returns ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with names_path(path), open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`write_bytes` of ``text`` in UTF-8."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], value: Any, *, indent: int | None = 1) -> Path:
    """:func:`write_text` of ``value`` as JSON (``indent``), with a final newline."""
    return write_text(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """:func:`write_text` of ``rows``, one JSON object per line."""
    return write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
