"""Saving and loading weights and configs of lorentz_rag models (docs/design.md, section 11).

A saved folder holds ``config.json`` (a ``lorentz_rag`` section, plus the architecture config at the top level
where one exists), ``model.safetensors`` and the tokenizer files. Loading is strict: every tensor the
model has must be in the file with the same shape, and every tensor in the file must be used; otherwise a
:class:`WeightsMismatchError` lists the offending names.

Tensors that share storage (tied input/output embeddings) are written once; the other names are recorded
in the safetensors metadata (``lorentz_rag_aliases``) and filled from their source on load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from lorentz_rag._version import __version__
from lorentz_rag.errors import user_error
from lorentz_rag.models.card import write_model_card

__all__ = [
    "CONFIG_NAME",
    "SECTION",
    "WEIGHTS_NAME",
    "WeightsMismatchError",
    "check_and_load_state_dict",
    "config_section",
    "load_weights_file",
    "read_config",
    "save_embedding_model",
    "save_module_folder",
    "select_prefix",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: The key of this library's section in ``config.json``.
SECTION = "lorentz_rag"
_ALIASES_KEY = "lorentz_rag_aliases"
# Folders saved before the package was renamed from ``hyprag`` (the name is taken on PyPI) carry the old
# keys; loading reads them so that nothing a user saved stops loading.
_LEGACY_SECTION = "hyprag"
_LEGACY_ALIASES_KEY = "hyprag_aliases"


@user_error
class WeightsMismatchError(RuntimeError):
    """Raised when a weights file does not match the model: one line listing missing, unexpected and
    mis-shaped names, then ``advice`` (what to do) when the caller knows it."""

    def __init__(
        self,
        where: str,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] | None = None,
        advice: str = "",
    ) -> None:
        self.missing = sorted(missing or [])
        self.unexpected = sorted(unexpected or [])
        self.mismatched = sorted(mismatched or [])
        parts = []
        if self.missing:
            parts.append(f"missing ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        for name, got, want in self.mismatched:
            parts.append(f"wrong shape: {name}: file has {list(got)}, model expects {list(want)}")
        message = f"weights in {where} do not match the model: {'; '.join(parts)}"
        super().__init__(f"{message}; {advice}" if advice else message)


def _dedup_shared(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Keep one name per storage-sharing tensor; return (tensors to write, alias -> source name)."""
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], str] = {}
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if t.numel() > 0 and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    return tensors, aliases


def save_module_folder(
    module: nn.Module,
    path: str | Path,
    lorentz_rag_section: Mapping[str, Any],
    *,
    tokenizer: Any = None,
    top_level_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``module``'s state dict, a ``config.json`` and the tokenizer into folder ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors, aliases = _dedup_shared(module.state_dict())
    save_file(tensors, str(path / WEIGHTS_NAME), metadata={"format": "pt", _ALIASES_KEY: json.dumps(aliases)})
    config = dict(top_level_config or {})
    config[SECTION] = {"library_version": __version__, **lorentz_rag_section}
    (path / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


def save_embedding_model(model: Any, path: str | Path) -> Path:
    """Save an :class:`~lorentz_rag.models.base.EmbeddingModel` (settings + model-specific config + weights)."""
    section = {
        **model.settings.to_dict(),
        **model.lorentz_rag_config(),
        "attn_implementation": getattr(model, "attn_implementation", "sdpa"),
        "model_args": getattr(model, "model_args", None),
    }
    c = model.curvature()
    section["curvature"] = None if c is None else float(c.detach())
    save_module_folder(model, path, section, tokenizer=model.tokenizer)
    # The same folder is also a sentence-transformers model (modules.json and its module folders). st_export
    # subclasses sentence-transformers' modules, whose import takes seconds (4-8 s measured, more than torch):
    # only saving needs it, so it is imported here and loading or building a model does not pay for it.
    from lorentz_rag.models.st_export import write_sentence_transformers_files

    write_sentence_transformers_files(model, path)
    write_model_card(model, path)
    return Path(path)


def read_config(path: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a folder; a clear error when it is absent or not ours."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a saved model folder: {CONFIG_NAME} not found")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from err


def config_section(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The library's section of a parsed ``config.json`` (under its pre-rename key ``hyprag`` in folders saved
    before the rename), or None when the folder has none."""
    for key in (SECTION, _LEGACY_SECTION):
        section = config.get(key)
        if isinstance(section, dict):
            return section
    return None


def load_weights_file(path: str | Path) -> dict[str, Tensor]:
    """All tensors of ``model.safetensors`` in folder (or file) ``path``, with tied aliases restored."""
    file = Path(path)
    if file.is_dir():
        file = file / WEIGHTS_NAME
    if not file.is_file():
        raise FileNotFoundError(f"weights file {file} not found")
    tensors: dict[str, Tensor] = {}
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                tensors[name] = f.get_tensor(name)
        aliases = json.loads(meta.get(_ALIASES_KEY, meta.get(_LEGACY_ALIASES_KEY, "{}")))
    except (SafetensorError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{file} is not a readable safetensors file, it is corrupt or truncated ({error}); copy or save "
            "the model folder again"
        ) from error
    for alias, source in aliases.items():
        if source not in tensors:
            raise WeightsMismatchError(str(file), missing=[source])
        tensors[alias] = tensors[source]
    return tensors


def check_and_load_state_dict(
    module: nn.Module, state: Mapping[str, Tensor], where: str, advice: str = ""
) -> None:
    """Load ``state`` into ``module`` exactly: raise :class:`WeightsMismatchError` (ending with ``advice``,
    what to do) on any difference.

    Checks names and shapes against ``module.state_dict()`` first, then loads with ``strict=False`` and
    checks the keys torch reports (so non-persistent buffers are neither required nor accepted).
    """
    state = dict(state)
    for name, sub in module.named_modules():  # older layouts (e.g. nn.curvature.ScalarParameters)
        if hasattr(sub, "upgrade_state_dict"):
            sub.upgrade_state_dict(state, f"{name}." if name else "")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        raise WeightsMismatchError(where, missing, unexpected, mismatched, advice)
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsMismatchError(
            where, list(result.missing_keys), list(result.unexpected_keys), advice=advice
        )


def select_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``state`` under ``prefix`` (e.g. ``"model."``), with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
