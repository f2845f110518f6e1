"""The one JSONL reader (``.jsonl`` / ``.jsonl.gz``) and its error type, used by every reader of lorentz_rag.

A bad line (invalid UTF-8 or JSON, or with ``objects=True`` a value that is not a JSON object) is a
:class:`DataFormatError` naming ``file:line``; a corrupt or truncated gzip stream one naming the file.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["DataFormatError", "gzip_bytes", "read_jsonl", "read_jsonl_numbered", "string_field"]


class DataFormatError(ValueError):
    """A data file is not in the expected format; the message names the file and line."""


def _decode(raw: bytes, where: str, objects: bool) -> Any:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{where}: not valid UTF-8 ({error.reason})") from error
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{where}: invalid JSON ({error.msg} at column {error.colno})") from error
    if objects and not isinstance(value, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def read_jsonl_numbered(
    path: str | os.PathLike[str], *, objects: bool = True, bad_lines: str = "raise"
) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for every non-blank line of a ``.jsonl`` or ``.jsonl.gz`` file.

    objects: a line must hold a JSON object (``False``: any JSON value; the caller checks it).
    bad_lines: ``"raise"`` raises :class:`DataFormatError` naming ``file:line`` at the first bad line;
    ``"yield"`` yields that error in place of the value and goes on, so a reader can skip and count bad
    lines. A corrupt gzip stream cannot be resumed and always raises. A missing file is ``FileNotFoundError``.
    """
    if bad_lines not in ("raise", "yield"):
        raise ValueError(f"bad_lines must be 'raise' or 'yield', got {bad_lines!r}")
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        try:
            for lineno, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    value = _decode(raw, f"{path}:{lineno}", objects)
                except DataFormatError as error:
                    if bad_lines == "raise":
                        raise
                    value = error
                yield lineno, value
        except (gzip.BadGzipFile, EOFError, OSError) as error:  # corrupt or truncated gzip stream
            raise DataFormatError(f"{path}: not a readable gzip file ({error})") from error


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` / ``.jsonl.gz`` file, one per non-blank line (errors as
    :func:`read_jsonl_numbered`, which this is without the line numbers)."""
    for _lineno, row in read_jsonl_numbered(path):
        yield row


def string_field(
    row: Mapping[str, object],
    key: str,
    where: str,
    *,
    required: bool = True,
    error: type[DataFormatError] = DataFormatError,
) -> str:
    """``row[key]`` as a string (``""`` when absent and not ``required``); otherwise ``error`` naming
    ``where`` (``file:line``) and what the value is."""
    value = row.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        problem = "missing" if value is None else f"a {type(value).__name__}, not a string"
        raise error(f"{where}: field {key!r} is {problem}")
    return value


def gzip_bytes(data: bytes) -> bytes:
    """``data`` as a reproducible gzip member (no file name, mtime 0): the same input gives the same bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as handle:
        handle.write(data)
    return buffer.getvalue()
