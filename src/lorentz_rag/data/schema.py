"""The training-row schema shared by every reader and writer (JSONL, Hugging Face, MDS).

Rows (docs/design.md, section 10), after validation:

- ``contrastive``: ``{"query": str, "document": str, "negatives": list[str]}`` (``negatives`` may be absent
  in the source; it is then ``[]``);
- ``mlm``: ``{"text": str}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lorentz_rag.data.jsonl import DataFormatError

__all__ = ["COLUMNS", "Kind", "ReadStats", "check_kind", "validate_row"]

Kind = Literal["contrastive", "mlm"]
#: The columns of each kind of row; ``negatives`` is optional.
COLUMNS: dict[str, tuple[str, ...]] = {"contrastive": ("query", "document", "negatives"), "mlm": ("text",)}
# How many skipped-row messages ReadStats keeps for the log (the count is always complete).
_KEEP_MESSAGES = 20


def check_kind(kind: str) -> None:
    """Raise a ``ValueError`` for a row kind other than ``contrastive`` / ``mlm``."""
    if kind not in COLUMNS:
        raise ValueError(f"unknown row kind {kind!r}; expected 'contrastive' or 'mlm'")


@dataclass
class ReadStats:
    """What a reader saw: valid ``rows`` (all ranks), ``skipped`` malformed rows (with the first messages),
    rows ``dropped_for_balance`` so that every rank has the same number."""

    rows: int = 0
    skipped: int = 0
    dropped_for_balance: int = 0
    messages: list[str] = field(default_factory=list)

    def record_skip(self, error: Exception) -> None:
        self.skipped += 1
        if len(self.messages) < _KEEP_MESSAGES:
            self.messages.append(str(error))

    def summary(self) -> str:
        text = f"{self.rows} rows"
        if self.skipped:
            text += f", {self.skipped} malformed rows skipped (first: {self.messages[0]})"
        if self.dropped_for_balance:
            text += f", {self.dropped_for_balance} dropped so every rank has the same number"
        return text


# --- validation -------------------------------------------------------------------------------------


def _nonempty_text(row: Mapping[str, Any], name: str, source_name: str, where: str) -> str:
    if source_name not in row:
        present = ", ".join(sorted(map(str, row))) or "none"
        raise DataFormatError(f"{where}: missing column {source_name!r} (columns present: {present})")
    value = row[source_name]
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: column {source_name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataFormatError(f"{where}: column {source_name!r} ({name}) is empty")
    return value


def validate_row(
    row: Any, kind: Kind, where: str, *, columns: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Check one source row and return it in canonical form (see the module docstring).

    ``columns`` maps canonical names to the source's (e.g. ``{"query": "question"}``); ``where`` is the
    position used in error messages (``file:line`` or ``dataset row i``).
    """
    check_kind(kind)
    if not isinstance(row, Mapping):
        raise DataFormatError(f"{where}: expected an object with columns, got {type(row).__name__}")
    names = {name: name for name in COLUMNS[kind]} | dict(columns or {})
    if kind == "mlm":
        return {"text": _nonempty_text(row, "text", names["text"], where)}
    out: dict[str, Any] = {
        "query": _nonempty_text(row, "query", names["query"], where),
        "document": _nonempty_text(row, "document", names["document"], where),
    }
    negatives = row.get(names["negatives"])
    if negatives is None:
        negatives = []
    if not isinstance(negatives, (list, tuple)):
        raise DataFormatError(
            f"{where}: column {names['negatives']!r} must be a list of strings, got {type(negatives).__name__}"
        )
    for i, neg in enumerate(negatives):
        if not isinstance(neg, str) or not neg.strip():
            raise DataFormatError(
                f"{where}: {names['negatives']}[{i}] must be a non-empty string, got {neg!r}"
            )
    out["negatives"] = list(negatives)
    return out
