"""Euclidean models: the twin of each hyperbolic encoder (the paper's EucBERT, docs/design.md, section 6) and
sentence-transformers folders as cosine baselines.

- :class:`EuclideanEncoder` with ``kind="modernbert"``: transformers' own ``ModernBertModel`` initialised
  at random from a ``ModernBertConfig`` of the same sizes as HyTE-FH (the twin of HyTE-FH), pooled with
  ``mean`` or ``cls``.
- :class:`EuclideanEncoder` with ``kind="pretrained"``: a pretrained ``AutoModel`` + pooling +
  ``Linear(d_base, d)`` (the twin of HyTE-H); with ``head="direction_norm"`` the pooled state goes through
  the same direction + radius head as HyTE-H's ``pooled`` head (:mod:`lorentz_rag.models.heads`) and the output
  is ``y = r u``, compared by the Euclidean distance (the fair twin: its norm can carry depth, as the
  hyperbolic radius can).
- :class:`EuclideanForMaskedLM`: ``ModernBertForMaskedLM`` with sparse prediction (logits only where
  ``labels != -100``) and the lorentz_rag save format, the twin of ``HyteFHForMaskedLM``.
- :class:`SentenceTransformerModel`: any sentence-transformers folder (its own pooling and normalisation).

They use cosine similarity, or ``euclidean`` (``-|q - x|``) where the norm is meant to matter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import ModernBertConfig, ModernBertForMaskedLM

from lorentz_rag._version import __version__
from lorentz_rag.models.base import EmbeddingModel, ModelSettings, check_texts, euclidean_pool
from lorentz_rag.models.heads import DirectionRadiusHead, pretrained_base_options, unfreeze_top_layers
from lorentz_rag.models.hf_base import base_config_dict, base_token_states, strip_hf_meta
from lorentz_rag.models.io import SECTION, config_section, save_module_folder

__all__ = ["EUCLIDEAN_HEADS", "EuclideanEncoder", "EuclideanForMaskedLM", "SentenceTransformerModel"]

EuclideanKind = Literal["modernbert", "pretrained"]
EUCLIDEAN_HEADS = ("linear", "direction_norm")


class EuclideanEncoder(EmbeddingModel):
    """Euclidean text encoder with ``mean``/``cls`` pooling and cosine similarity; embeddings ``[n, d]``.

    ``kind="modernbert"``: ``encoder`` is a ``ModernBertModel`` trunk stored as ``.model`` (the same
    weight names as ``EuclideanForMaskedLM.model``, so MLM weights load into it), no projection.
    ``kind="pretrained"``: ``encoder`` is a pretrained base stored as ``.base``, followed by
    ``Linear(d_base, projection_dim)`` applied to the pooled state (pooling and an affine map commute).
    """

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer: Any,
        settings: ModelSettings,
        *,
        kind: EuclideanKind,
        projection_dim: int | None = None,
        freeze_base: bool = False,
        base_lr_multiplier: float = 1.0,
        head: str = "linear",
        radius_init: float = 2.0,
        radius_gain: float = 5.0,
        max_norm: float = 10.0,
        trainable_base_layers: int = 0,
    ) -> None:
        super().__init__(settings, tokenizer)
        if head not in EUCLIDEAN_HEADS:
            raise ValueError(f"Euclidean head must be one of {list(EUCLIDEAN_HEADS)}, got {head!r}")
        self.kind = kind
        self.head_kind = head
        self.projection: nn.Linear | None = None
        self.head: DirectionRadiusHead | None = None
        if kind == "modernbert":
            if head != "linear":
                raise ValueError("head='direction_norm' needs kind='pretrained' (the twin of HyTE-H)")
            self.model = encoder
        elif kind == "pretrained":
            if projection_dim is None or projection_dim < 1:
                raise ValueError(f"kind='pretrained' needs projection_dim >= 1, got {projection_dim}")
            self.base = encoder
            d_base = int(encoder.config.hidden_size)
            if head == "linear":
                self.projection = nn.Linear(d_base, projection_dim)
            else:
                self.head = DirectionRadiusHead(
                    d_base,
                    projection_dim,
                    radius_init=radius_init,
                    radius_gain=radius_gain,
                    max_radius=max_norm,
                    length_feature=True,
                )
        else:
            raise ValueError(f"kind must be 'modernbert' or 'pretrained', got {kind!r}")
        self.trainable_base_layers = int(trainable_base_layers) if kind == "pretrained" else 0
        self.freeze_base = (bool(freeze_base) or self.trainable_base_layers > 0) and kind == "pretrained"
        self._base_lr_multiplier = float(base_lr_multiplier)
        if self.freeze_base:
            unfreeze_top_layers(self.base, self.trainable_base_layers)

    @property
    def direction_layer(self) -> nn.Linear | None:
        """The ``Linear(d_base, d)`` after pooling (``projection_init`` applies to it); ``None`` for ModernBERT."""
        return self.head.direction if self.head is not None else self.projection

    @property
    def encoder(self) -> nn.Module:
        return self.model if self.kind == "modernbert" else self.base

    @property
    def base_lr_multiplier(self) -> float:
        return self._base_lr_multiplier

    def base_parameters(self) -> list[nn.Parameter]:
        return list(self.base.parameters()) if self.kind == "pretrained" else []

    def train(self, mode: bool = True) -> EuclideanEncoder:
        super().train(mode)
        if self.freeze_base:
            self.base.eval()
        return self

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Pooled embeddings ``[B, d]`` (float32) for ``input_ids``/``attention_mask`` ``[B, T]``."""
        hidden = base_token_states(self.encoder, input_ids, attention_mask, text_by_text=self.training)
        pooled = euclidean_pool(self.settings.pooling, hidden, attention_mask)
        if self.head is not None:
            u, r = self.head(pooled.float(), attention_mask.sum(-1))
            return r.unsqueeze(-1) * u
        if self.projection is not None:
            pooled = self.projection(pooled)
        return pooled.float()

    def lorentz_rag_config(self) -> dict[str, Any]:
        layer = self.direction_layer
        config: dict[str, Any] = {
            "euclidean_kind": self.kind,
            "base_config": base_config_dict(self.encoder),
            "projection_dim": None if layer is None else layer.out_features,
            "freeze_base": self.freeze_base,
            "base_lr_multiplier": self._base_lr_multiplier,
            "euclidean_head": self.head_kind,
            "trainable_base_layers": self.trainable_base_layers,
        }
        if self.head is not None:
            config.update(self.head.saved_config(), max_norm=self.head.max_radius)
        return config

    @classmethod
    def _from_section(
        cls, section: Mapping[str, Any], tokenizer: Any, settings: ModelSettings, base: Any
    ) -> EuclideanEncoder:
        """The encoder from a saved section or from ``model_args`` (the same keys, plus ``euclidean_kind``
        and ``projection_dim``) on ``base`` (the pretrained base, or the ModernBERT trunk)."""
        return cls(
            base,
            tokenizer,
            settings,
            kind=section["euclidean_kind"],
            projection_dim=section.get("projection_dim"),
            head=str(section.get("euclidean_head", "linear")),
            max_norm=float(section.get("max_norm", 10.0)),
            **pretrained_base_options(section),
        )

    @property
    def native_st_modules(self) -> bool:
        """The linear head with cosine/Euclidean scoring and mean/cls pooling is exactly sentence-transformers'
        Transformer + Pooling (+ Dense): the saved folder uses those native modules."""
        return (
            self.head_kind == "linear"
            and self.settings.similarity in ("cosine", "euclidean")
            and self.settings.pooling in ("mean", "cls")
        )


class EuclideanForMaskedLM(ModernBertForMaskedLM):
    """``ModernBertForMaskedLM`` with sparse prediction, a ``.tokenizer`` and the lorentz_rag save format.

    ``forward(input_ids, attention_mask, labels)`` returns a ``MaskedLMOutput`` whose ``logits`` are
    ``[n_masked, V]`` (rows where ``labels != -100``, in row-major order) when labels are given. The trunk
    is ``.model`` (a ``ModernBertModel``), whose weights :class:`EuclideanEncoder` loads with ``init_from``.
    """

    def __init__(self, config: ModernBertConfig, tokenizer: Any = None) -> None:
        config.sparse_prediction = True
        config.sparse_pred_ignore_index = -100
        super().__init__(config)
        self.tokenizer = tokenizer

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """``ModernBertForMaskedLM.forward``, except that a batch without scored tokens has loss 0 (with a
        graph, as :func:`lorentz_rag.training.losses.mlm_loss`), not the NaN of a mean over no tokens."""
        out = super().forward(*args, **kwargs)
        # (getattr: with return_dict=False the output is a tuple, left as it is)
        if getattr(out, "loss", None) is not None and out.logits.shape[0] == 0:
            out.loss = out.logits.sum() * 0.0
        return out

    @classmethod
    def from_config(cls, section: Mapping[str, Any], tokenizer: Any = None) -> EuclideanForMaskedLM:
        """The model a saved ``euclidean_mlm`` section describes (placeholder weights)."""
        return cls(ModernBertConfig(**strip_hf_meta(section["trunk_config"])), tokenizer)

    def save_pretrained(self, save_directory: str | Path, **_: Any) -> None:  # type: ignore[override]
        """Write ``config.json`` (the ModernBERT config + a ``lorentz_rag`` section), weights and tokenizer."""
        save_module_folder(
            self,
            save_directory,
            {"model_type": "euclidean_mlm", "trunk_config": self.config.to_dict()},
            tokenizer=self.tokenizer,
            top_level_config=self.config.to_dict(),
        )


class SentenceTransformerModel(EmbeddingModel):
    """A sentence-transformers model as a cosine baseline, encoded through its own ``encode``.

    Its own modules (pooling, normalisation, ``max_seq_length``) are honoured; the query/document prefixes
    are empty unless the folder's ``config.json`` has a ``lorentz_rag`` section that sets them.
    """

    def __init__(self, st_model: Any, settings: ModelSettings) -> None:
        super().__init__(settings, st_model.tokenizer)
        self.st = st_model

    @classmethod
    def from_folder(cls, path: str | Path, device: str = "cpu") -> SentenceTransformerModel:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(path), device=device)
        saved: dict[str, Any] = {}
        config_file = Path(path) / "config.json"
        if config_file.is_file():
            saved = config_section(json.loads(config_file.read_text())) or {}
        pooling_mode = "mean"
        for module in st:
            mode = getattr(module, "pooling_mode", None) or getattr(module, "get_pooling_mode_str", None)
            if isinstance(mode, str):
                pooling_mode = mode
            elif callable(mode):
                pooling_mode = str(mode())
        settings = ModelSettings(
            model_type="sentence_transformers",
            pooling=pooling_mode,
            similarity="cosine",
            embedding_dim=int(_st_dimension(st)),
            query_prefix=saved.get("query_prefix", ""),
            document_prefix=saved.get("document_prefix", ""),
            max_seq_length=int(st.max_seq_length),
        )
        return cls(st, settings)

    def tokenize(self, texts, prompt_type: Any = None) -> dict[str, Tensor]:
        """Prefix and tokenize with the sentence-transformers model's own tokenization."""
        if isinstance(texts, str):
            texts = [texts]
        prefix = self.settings.prefix(prompt_type)
        # sentence-transformers >= 6 renamed tokenize to preprocess (the old name warns); its features also
        # carry non-tensor entries such as "modality".
        preprocess = getattr(self.st, "preprocess", None) or self.st.tokenize
        features = preprocess([prefix + t for t in texts])
        return {k: v for k, v in features.items() if isinstance(v, Tensor)}

    def forward(self, input_ids: Tensor, attention_mask: Tensor, **features: Tensor) -> Tensor:
        """The model's ``sentence_embedding`` ``[B, d]`` (float32)."""
        out = self.st({"input_ids": input_ids, "attention_mask": attention_mask, **features})
        return out["sentence_embedding"].float()

    def encode(
        self,
        texts,
        prompt_type: Any = None,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        device: str | torch.device | None = None,
        **_: Any,
    ) -> Tensor:
        """Embed through ``SentenceTransformer.encode``: float32 CPU ``[n, d]`` in input order."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        check_texts(texts)
        if not texts:
            return torch.empty(0, self.embedding_dim, dtype=torch.float32)
        prefix = self.settings.prefix(prompt_type)
        emb = self.st.encode(
            [prefix + t for t in texts],
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            convert_to_tensor=True,
            device=str(device) if device is not None else None,
        )
        return emb.detach().to("cpu", torch.float32)

    def lorentz_rag_config(self) -> dict[str, Any]:
        return {}

    def save_pretrained(self, path: str | Path) -> None:
        """Save as a sentence-transformers folder whose ``config.json`` also carries a ``lorentz_rag`` section."""
        self.st.save(str(path))
        config_file = Path(path) / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        config[SECTION] = {"library_version": __version__, **self.settings.to_dict()}
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        self.save_companions(path)


def _st_dimension(st: Any) -> int:
    # sentence-transformers >= 6 renamed get_sentence_embedding_dimension (the old name warns).
    getter = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
    return int(getter())
