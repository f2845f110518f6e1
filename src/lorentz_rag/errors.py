"""The one error boundary of every entry point (``lorentz-rag ...``, ``train.py``, ``eval_mteb_hyperbolic.py``,
``eval_ragas.py``).

A mistake the user can act on (a config key, a data file, a checkpoint, a weights mismatch, an index, a full
disk) ends the command with one ``error: ...`` line on stderr that names the file (and line where known),
and exit status 2. ``--debug`` anywhere on the command line, or ``LORENTZ_RAG_DEBUG=1``, also prints the
traceback. Anything else (a bug) keeps its traceback.

What counts as a user error: ``ValueError`` (configuration, data format, BEIR format, non-finite
embeddings, ... all derive from it), ``OSError`` (file not found, permission, disk full, a folder in use),
a corrupt safetensors file (``safetensors_rust.SafetensorError``, matched by its type name so that this
module stays standard-library only) and the classes registered with :func:`user_error` (checkpoint,
weights mismatch, divergence). An ``OSError`` with ENOSPC, EROFS, EACCES or EPERM names its file and says
what to do. Two kinds name no file by themselves, so the code at the place fills it in: a ``json.JSONDecodeError``
(code reading a user's JSON file reads it with :func:`read_json_file`, whose error names the file) and an
``OSError`` raised by a write or close, e.g. a full disk (code writing an output wraps the writing in
:func:`names_path`).

Ctrl-C (``KeyboardInterrupt``) ends every entry point with one line on stderr, ``interrupted: ...``, and
exit status 130, with no traceback (``--debug``: with it). **The convention for saying what was kept**:
the code that was running catches the interrupt and re-raises it as :class:`Interrupted` carrying one line
that says what is on disk and how to resume, most simply with the :func:`on_interrupt` context manager::

    with on_interrupt(lambda: f"kept {n} shards in {work}; rerun the same command with --resumable"):
        ...  # the long-running work

prints ``interrupted: kept 3 shards in out.encoding; rerun the same command with --resumable``. A plain
``KeyboardInterrupt`` prints ``interrupted``. The innermost :class:`Interrupted` wins (an outer
``on_interrupt`` passes it on unchanged).

Only the standard library is imported here, so the boundary costs nothing before the command runs.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DEBUG_ENV",
    "DEBUG_FLAG",
    "EXIT_INTERRUPTED",
    "EXIT_USER_ERROR",
    "Interrupted",
    "closest_key",
    "describe_error",
    "names_path",
    "on_interrupt",
    "read_json_file",
    "run_entry_point",
    "user_error",
]

DEBUG_ENV = "LORENTZ_RAG_DEBUG"
DEBUG_FLAG = "--debug"
#: Exit status of a user error (one ``error:`` line).
EXIT_USER_ERROR = 2
#: Exit status after Ctrl-C (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130

_USER_ERRORS: list[type[BaseException]] = [ValueError, OSError]


def user_error(cls: type[BaseException]) -> type[BaseException]:
    """Class decorator: exceptions of ``cls`` end a command with ``error: <message>`` and exit status 2."""
    _USER_ERRORS.append(cls)
    return cls


def closest_key(key: str, candidates: Sequence[str], *, cutoff: float = 0.5) -> str | None:
    """The candidate closest to a misspelt ``key`` (for "did you mean ...?" in error messages), or None."""
    match = difflib.get_close_matches(str(key), sorted(map(str, candidates)), n=1, cutoff=cutoff)
    return match[0] if match else None


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, re-raised by the code that was running with one line saying what was kept and how to resume.

    ``str(error)`` is that line; the boundary prints ``interrupted: <line>`` and exits with status 130.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@contextlib.contextmanager
def on_interrupt(message: str | Callable[[], str]) -> Iterator[None]:
    """Turn a Ctrl-C inside the block into :class:`Interrupted` with ``message`` (a string, or a function
    called at the interrupt, so it can count what was kept). An :class:`Interrupted` raised inside passes."""
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt as error:
        raise Interrupted(message() if callable(message) else message) from error


@contextlib.contextmanager
def names_path(path: str | os.PathLike[str]) -> Iterator[None]:
    """Give an ``OSError`` raised inside the block without a file name (a write or close on a full disk:
    ``[Errno 28] No space left on device``) the name ``path``, so the error line says where."""
    try:
        yield
    except OSError as error:
        if error.filename is None and error.errno is not None:
            error.filename = os.fspath(path)
        raise


def read_json_file(path: str | os.PathLike[str], what: str = "") -> Any:
    """The JSON value in file ``path``; invalid JSON raises ``ValueError`` naming the file, line and column
    (``what``, e.g. ``"--deepspeed_config"``, is put in front of the file name)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        where = f"{what}={path}" if what else str(path)
        raise ValueError(
            f"{where}:{error.lineno}: not valid JSON ({error.msg}, column {error.colno}); fix or replace the file"
        ) from None


def _is_safetensors_error(error: BaseException) -> bool:
    return type(error).__name__ == "SafetensorError"


# safetensors reports an I/O failure in its text: 'I/O error: No space left on device (os error 28) at path "..."'.
_OS_ERROR_TEXT = re.compile(r'\(os error (\d+)\)(?: at path "([^"]*)")?')


def _os_error_of(error: BaseException) -> OSError | None:
    """``error`` as an ``OSError`` with an errno: itself, or a safetensors I/O error (errno and path read from
    its message); ``None`` otherwise."""
    if isinstance(error, OSError):
        return error if error.errno is not None and error.strerror else None
    match = _OS_ERROR_TEXT.search(str(error)) if _is_safetensors_error(error) else None
    if match is None:
        return None
    code = int(match.group(1))
    return OSError(code, os.strerror(code), match.group(2))


def _is_user_error(error: BaseException) -> bool:
    return isinstance(error, tuple(_USER_ERRORS)) or _is_safetensors_error(error)


#: What to do about an OS error, by errno: the boundary prints ``PATH: reason: advice``.
_OS_ADVICE = {
    errno.ENOSPC: "free space or write to another disk, then rerun",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
}


def describe_error(error: BaseException) -> str:
    """The one-line message for ``error``: an OS error with an errno names its file(s) (``PATH: reason``), a
    safetensors error says that a weights file is corrupt, a JSON error without a file name says it is JSON."""
    os_error = _os_error_of(error)
    if os_error is not None:
        reason = "no space left on device" if os_error.errno == errno.ENOSPC else os_error.strerror
        names = [str(n) for n in (os_error.filename, os_error.filename2) if n is not None]
        return f"{' -> '.join(names)}: {reason}" if names else reason
    if _is_safetensors_error(error):
        return f"a safetensors weights file is corrupt or truncated ({error}); save the model again"
    if isinstance(error, json.JSONDecodeError):
        return f"not valid JSON ({error})"
    return str(error) or type(error).__name__


def _error_line(error: BaseException) -> str:
    """``describe_error``, plus what to do when ``error`` itself is a full disk, a read-only file system or
    a permission problem (a message that wraps one says what to do in its own words)."""
    os_error = _os_error_of(error)
    advice = _OS_ADVICE.get(os_error.errno) if os_error is not None else None  # type: ignore[arg-type]
    return f"{describe_error(error)}: {advice}" if advice else describe_error(error)


def _debug_requested(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")


def run_entry_point(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` (``--debug`` removed): user errors become ``error: ...`` and exit status 2, Ctrl-C
    ``interrupted: ...`` and exit status 130."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(args)
    args = [a for a in args if a != DEBUG_FLAG]
    previous = os.environ.get(DEBUG_ENV)
    if debug:  # a nested boundary (lorentz-rag train -> the trainer's main) must see it too
        os.environ[DEBUG_ENV] = "1"
    try:
        return int(main(args) or 0)
    except KeyboardInterrupt as error:
        if debug:
            traceback.print_exc()
        message = str(error) if isinstance(error, Interrupted) else ""
        print(f"interrupted: {message}" if message else "interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as error:
        if not _is_user_error(error):
            raise
        if debug:
            traceback.print_exc()
        print(f"error: {_error_line(error)}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    finally:
        if previous is None:
            os.environ.pop(DEBUG_ENV, None)
        else:
            os.environ[DEBUG_ENV] = previous
