"""The one error boundary of every entry point (``lorentz-rag ...``, ``train.py``, ``eval_mteb_hyperbolic.py``,
``eval_ragas.py``).

A mistake the user can act on (a config key, a data file, a checkpoint, a weights mismatch, an index, a full
disk) ends the command with one ``error: ...`` line on stderr that names the file (and line where known),
and exit status 2. ``--debug`` anywhere on the command line, or ``LORENTZ_RAG_DEBUG=1``, also prints the
traceback. Anything else (a bug) keeps its traceback.

What counts as a user error: ``ValueError`` (configuration, data format, BEIR format, non-finite
embeddings, ... all derive from it), ``OSError`` (file not found, permission, disk full, a folder in use)
and the classes registered with :func:`user_error` (checkpoint, weights mismatch, divergence). Only the
standard library is imported here, so the boundary costs nothing before the command runs.
"""

from __future__ import annotations

import difflib
import errno
import os
import sys
import traceback
from collections.abc import Callable, Sequence

__all__ = ["DEBUG_ENV", "DEBUG_FLAG", "closest_key", "describe_error", "run_entry_point", "user_error"]

DEBUG_ENV = "LORENTZ_RAG_DEBUG"
DEBUG_FLAG = "--debug"

_USER_ERRORS: list[type[BaseException]] = [ValueError, OSError]


def user_error(cls: type[BaseException]) -> type[BaseException]:
    """Class decorator: exceptions of ``cls`` end a command with ``error: <message>`` and exit status 2."""
    _USER_ERRORS.append(cls)
    return cls


def closest_key(key: str, candidates: Sequence[str], *, cutoff: float = 0.5) -> str | None:
    """The candidate closest to a misspelt ``key`` (for "did you mean ...?" in error messages), or None."""
    match = difflib.get_close_matches(str(key), sorted(map(str, candidates)), n=1, cutoff=cutoff)
    return match[0] if match else None


def _is_user_error(error: BaseException) -> bool:
    return isinstance(error, tuple(_USER_ERRORS))


def describe_error(error: BaseException) -> str:
    """The message for ``error``; an OS error with an errno names its file (``PATH: reason``)."""
    if isinstance(error, OSError) and error.errno is not None and error.strerror:
        reason = "no space left on device" if error.errno == errno.ENOSPC else error.strerror
        return f"{error.filename}: {reason}" if error.filename is not None else reason
    return str(error) or type(error).__name__


def _debug_requested(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")


def run_entry_point(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` (``--debug`` removed) and turn user errors into ``error: ...`` and exit status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(args)
    args = [a for a in args if a != DEBUG_FLAG]
    previous = os.environ.get(DEBUG_ENV)
    if debug:  # a nested boundary (lorentz-rag train -> the trainer's main) must see it too
        os.environ[DEBUG_ENV] = "1"
    try:
        return int(main(args) or 0)
    except Exception as error:
        if not _is_user_error(error):
            raise
        if debug:
            traceback.print_exc()
        print(f"error: {describe_error(error)}", file=sys.stderr, flush=True)
        return 2
    finally:
        if previous is None:
            os.environ.pop(DEBUG_ENV, None)
        else:
            os.environ[DEBUG_ENV] = previous
