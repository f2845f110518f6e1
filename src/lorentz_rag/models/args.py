"""The ``model_args`` config section: :class:`ModelArgs` (pydantic v2, unknown keys rejected with the closest
valid key). :mod:`lorentz_rag.models.factory` builds models from it; the training config reuses it as is."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from lorentz_rag.errors import closest_key

# The settings and the valid names come from lorentz_rag.models.settings (standard library only): the field list
# and descriptions are read by `lorentz-rag train --help`, which answers without torch.
from lorentz_rag.models.settings import (
    EUCLIDEAN_POOLINGS,
    EUCLIDEAN_SIMILARITIES,
    HYPERBOLIC_POOLINGS,
    HYPERBOLIC_SIMILARITIES,
    ModelSettings,
)

__all__ = ["SIZE_KEYS", "ModelArgs", "as_model_args", "reject_unknown_keys"]

SIZE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def reject_unknown_keys(data: Any, known: Collection[str], section: str) -> Any:
    """The one unknown-key check of lorentz_rag's configuration models (a ``model_validator(mode="before")`` body).

    Every key of ``data`` that is not in ``known`` is reported in one ``unknown_key`` error whose message
    names it and the closest valid key (``unknown model_args key 'poolng'; did you mean 'pooling'?``) and
    whose context carries ``keys`` and ``suggestions`` (None where nothing is close), so that the training
    config can say where each key came from (``file:line``). ``section`` names the place in messages.
    """
    if not isinstance(data, Mapping):
        return data
    unknown = [str(key) for key in data if key not in known]
    if unknown:
        suggestions = [closest_key(key, known) for key in unknown]
        message = ", ".join(
            f"unknown {section} key {key!r}" + (f"; did you mean {hint!r}?" if hint else "")
            for key, hint in zip(unknown, suggestions)
        )
        raise PydanticCustomError(
            "unknown_key", "{message}", {"message": message, "keys": unknown, "suggestions": suggestions}
        )
    return data


class ModelArgs(BaseModel):
    """The ``model_args`` section: which encoder, its sizes, pooling, similarity, curvature and prefixes."""

    # Unknown keys are refused by _reject_unknown_keys (with the closest valid key), not by extra="forbid".
    model_config = ConfigDict(protected_namespaces=(), validate_assignment=False)

    model_type: Literal["hyte_fh", "hyte_h", "euclidean"] = Field(
        "hyte_fh",
        description="hyte_fh (fully hyperbolic), hyte_h (pretrained encoder + expmap), euclidean (twin).",
    )
    model_name: str = Field(
        "answerdotai/ModernBERT-base",
        description="hyte_fh / euclidean-modernbert: ModernBERT config source and tokenizer source (hub id or "
        "folder; any tokenizer folder works, sizes then come from this section). hyte_h / "
        "euclidean-pretrained: the pretrained base encoder. 'all-MiniLM-L6-v2' resolves to the packaged "
        "copy when the hub is offline.",
    )
    euclidean_base: Literal["auto", "modernbert", "pretrained"] = Field(
        "auto",
        description="euclidean only: 'modernbert' = ModernBertModel from scratch at HyTE-FH's sizes (twin of "
        "HyTE-FH); 'pretrained' = model_name + Linear + pooling (twin of HyTE-H); 'auto' = modernbert if "
        "init_from or a size key is set, else pretrained.",
    )
    pooling: str | None = Field(
        None,
        description="Hyperbolic: cls, lorentz_centroid (alias mean), einstein_midpoint, "
        "outward_einstein_midpoint, mean_tangent (default outward_einstein_midpoint). Euclidean: mean, cls "
        "(default mean).",
    )
    pooling_p: float = Field(
        1.0, gt=0, description="Exponent p of the outward Einstein midpoint (paper's p)."
    )
    similarity: Literal["geodesic", "lorentz_inner", "cosine", "euclidean"] | None = Field(
        None,
        description="Saved scoring function: geodesic (-d) or lorentz_inner (<q,x>_L + 1/c) for hyperbolic "
        "models (default geodesic), cosine or euclidean (-|q - x|) for Euclidean ones (default cosine). The "
        "trainer sets it from train_args.distance.",
    )
    curvature: float = Field(
        1.0, ge=0.1, le=10.0, description="Initial curvature magnitude c (space curvature -c)."
    )
    trainable_curvature: bool = Field(True, description="Learn c (stored as log c, clamped to [0.1, 10]).")
    compile: Literal["auto"] | bool = Field(
        "auto",
        description="hyte_fh: torch.compile the trunk (one graph: embeddings, blocks, norms, pooling) and the MLM "
        "head (fused Lorentz elementwise chains; costs up to ~5 min of compilation on a small CPU). 'auto': on "
        "for CUDA; on CPU once 2 timed eager steps show the steps left repay the compile (the rule: "
        "lorentz_rag.training.compile_policy); the run's log says which and why. A failed compile runs eagerly.",
    )
    fused_mlm_loss: bool = Field(
        True,
        description="hyte_fh MLM: compute the masked-LM loss blockwise over the vocabulary without forming the "
        "[scored tokens x vocab] logits (equal to the plain head + cross-entropy to float32 rounding; "
        "false = the plain path).",
    )
    tie_mlm_head: bool = Field(
        False,
        description="hyte_fh MLM: the MLR head's class normals are the token embedding table (tied, as the "
        "Euclidean twin's decoder); saved in the model's config. Must match an init_from MLM folder.",
    )
    query_prefix: str = Field("search_query: ", description="Prepended to every query text.")
    document_prefix: str = Field("search_document: ", description="Prepended to every document text.")
    max_seq_length: int = Field(512, ge=1, description="Truncation length in tokens (prefix included).")
    hidden_size: int | None = Field(
        None, ge=2, description="hyte_fh / euclidean-modernbert: space dim d of the trunk (override)."
    )
    num_hidden_layers: int | None = Field(None, ge=1, description="hyte_fh / euclidean-modernbert: layers.")
    num_attention_heads: int | None = Field(
        None, ge=1, description="Attention heads of the trunk (hyte_fh / euclidean) or of HyTE-H's blocks."
    )
    intermediate_size: int | None = Field(
        None,
        ge=1,
        description="FFN width of the trunk or of HyTE-H's blocks (default 1.5 x hidden size when the "
        "hidden size is overridden, ModernBERT's ratio).",
    )
    max_position_embeddings: int | None = Field(None, ge=1, description="Longest sequence the trunk accepts.")
    embedding_dim: int | None = Field(
        None,
        ge=1,
        description="hyte_h / euclidean-pretrained: output dim d of Linear(d_base, d) (default d_base). "
        "Hyperbolic embeddings have d+1 coordinates.",
    )
    num_hyperbolic_blocks: int = Field(
        0, ge=0, description="hyte_h: HyTE-FH blocks after the exponential map."
    )
    freeze_base: bool = Field(
        False, description="hyte_h / euclidean-pretrained: do not train the base encoder."
    )
    base_lr_multiplier: float = Field(
        1.0, gt=0, description="Learning rate of the base encoder = lr * base_lr_multiplier (param_groups)."
    )
    projection_init: Literal["random", "identity"] = Field(
        "random",
        description="hyte_h / euclidean-pretrained: initial Linear(d_base, d). 'identity' starts from the base "
        "encoder's own coordinates (eye(d, d_base), zero bias), so training starts from the pretrained "
        "geometry instead of a random rotation of it; 'random' is PyTorch's default init.",
    )
    projection_scale: float = Field(
        1.0, gt=0, description="hyte_h: initial value of the learnable scale applied before expmap0."
    )
    max_norm: float = Field(
        5.0,
        gt=0,
        description="hyte_h token head: tangent vectors are clipped to |v| <= max_norm before expmap0. "
        "pooled / token_radius / direction_norm heads: a safety bound on the learnt radius (not its control).",
    )
    hyte_h_head: Literal["token", "pooled", "token_radius"] = Field(
        "token",
        description="hyte_h: 'token' (the paper's: project and clip every token, expmap0, pool), 'pooled' (the "
        "base's own pooling, then a direction + radius head: starts as the base model), 'token_radius' (per "
        "token direction + radius head, all radii equal at init, then the hyperbolic pooling).",
    )
    euclidean_head: Literal["linear", "direction_norm"] = Field(
        "linear",
        description="euclidean-pretrained: 'linear' (pooling + Linear, cosine twin) or 'direction_norm' (the "
        "same direction + radius head as hyte_h's pooled head, y = r u; pair it with similarity euclidean).",
    )
    radius_init: float = Field(
        2.0, gt=0, description="Direction + radius heads: every radius at initialisation (r0)."
    )
    radius_gain: float = Field(
        5.0, gt=0, description="Direction + radius heads: r = r0 exp(gain * w.phi); the gain speeds up w."
    )
    trainable_base_layers: int = Field(
        0,
        ge=0,
        description="hyte_h / euclidean-pretrained: train only the top N layers of the base (the rest frozen, "
        "in eval mode); 0 keeps freeze_base as it is.",
    )
    init_from: str | None = Field(
        None,
        description="Folder written by an MLM model's save (its trunk weights are loaded, mismatches raise) "
        "or by an embedding model of the same type (all weights are loaded).",
    )
    attn_implementation: Literal["sdpa", "eager"] = Field(
        "sdpa", description="Attention kernel of transformers encoders (no flash-attn on CPU)."
    )

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        return reject_unknown_keys(data, cls.model_fields, "model_args")

    @model_validator(mode="after")
    def _check_geometry(self) -> ModelArgs:
        hyperbolic = self.model_type != "euclidean"
        pooled_head = self.model_type == "hyte_h" and self.hyte_h_head == "pooled"
        if self.pooling is None:
            self.pooling = "outward_einstein_midpoint" if hyperbolic and not pooled_head else "mean"
        if pooled_head and self.pooling not in EUCLIDEAN_POOLINGS:
            raise ValueError(
                f"model_args.pooling={self.pooling!r}: hyte_h_head='pooled' pools the base's token states before "
                f"lifting them, with the base's own pooling; choose one of {list(EUCLIDEAN_POOLINGS)}"
            )
        if self.euclidean_head != "linear" and (
            self.model_type != "euclidean" or self.resolved_euclidean_base() != "pretrained"
        ):
            raise ValueError(
                "model_args.euclidean_head='direction_norm' is for model_type='euclidean' with a pretrained base "
                "(the twin of HyTE-H)"
            )
        if self.similarity is None:
            self.similarity = "geodesic" if hyperbolic else "cosine"
        poolings = HYPERBOLIC_POOLINGS if hyperbolic else EUCLIDEAN_POOLINGS
        similarities = HYPERBOLIC_SIMILARITIES if hyperbolic else EUCLIDEAN_SIMILARITIES
        if self.pooling not in poolings:
            raise ValueError(
                f"model_args.pooling={self.pooling!r} is not valid for model_type={self.model_type!r}; "
                f"choose one of {list(poolings)}"
            )
        if self.similarity not in similarities:
            raise ValueError(
                f"model_args.similarity={self.similarity!r} is not valid for model_type={self.model_type!r}; "
                f"choose one of {list(similarities)}"
            )
        if self.num_hyperbolic_blocks and self.model_type != "hyte_h":
            raise ValueError("model_args.num_hyperbolic_blocks is only used by model_type='hyte_h'")
        if self.hidden_size and self.num_attention_heads and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"model_args.hidden_size={self.hidden_size} must be divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        return self

    @property
    def is_hyperbolic(self) -> bool:
        return self.model_type != "euclidean"

    def resolved_euclidean_base(self) -> str:
        """``modernbert`` or ``pretrained`` (``auto`` resolved, see the field's description)."""
        if self.euclidean_base != "auto":
            return self.euclidean_base
        sized = any(getattr(self, k) is not None for k in SIZE_KEYS)
        return "modernbert" if (self.init_from or sized) else "pretrained"

    def settings(self, embedding_dim: int) -> ModelSettings:
        return ModelSettings(
            model_type=self.model_type,
            pooling=str(self.pooling),
            similarity=str(self.similarity),
            embedding_dim=embedding_dim,
            pooling_p=self.pooling_p,
            query_prefix=self.query_prefix,
            document_prefix=self.document_prefix,
            max_seq_length=self.max_seq_length,
        )


def as_model_args(model_args: Mapping[str, Any] | ModelArgs) -> ModelArgs:
    """``model_args`` validated as :class:`ModelArgs` (a mapping is validated; a ModelArgs passes through)."""
    return model_args if isinstance(model_args, ModelArgs) else ModelArgs.model_validate(dict(model_args))
