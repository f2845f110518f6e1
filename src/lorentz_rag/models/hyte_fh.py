"""HyTE-FH: the fully hyperbolic ModernBERT-shaped encoder (paper section 3.2; docs/design.md, section 4).

Every layer maps the hyperboloid ``H^d_c`` to itself; points are ``[B, T, d+1]`` with the time coordinate
first and travel between layers in float32 (matrix products may run in bf16 under autocast). One
:class:`~lorentz_rag.nn.Curvature` serves the whole model and is passed to every layer as ``c``.

State-dict names (stable; saved models rely on them)::

    curvature.log_c
    embeddings.weight                       [V, d]
    embedding_norm.weight                   [d]             (when embedding_norm)
    layers.{i}.attn_norm.weight             [d]
    layers.{i}.attn.wqkv.weight             [3d, d+1]       (.bias with attention_bias)
    layers.{i}.attn.wo.weight               [d, d+1]
    layers.{i}.attn_residual.log_weights    [2]
    layers.{i}.mlp_norm.weight              [d]
    layers.{i}.mlp.wi.weight                [2 I, d+1]      (.bias with mlp_bias)
    layers.{i}.mlp.wo.weight                [d, I+1]
    layers.{i}.mlp_residual.log_weights     [2]
    final_norm.weight                       [d]
    (HyteFHForMaskedLM: the trunk under "model.", and head.z [V, d], head.a [V]; with tie_mlm_head,
    head.z is model.embeddings.weight, written once in model.safetensors and restored as an alias)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lorentz_rag.errors import closest_key, read_json_file
from lorentz_rag.geometry import pooling as pooling_lib
from lorentz_rag.nn import (
    Curvature,
    LorentzEmbedding,
    LorentzGatedFFN,
    LorentzLinear,
    LorentzMLR,
    LorentzMultiheadAttention,
    LorentzResidual,
    build_lorentz_norm,
)
from lorentz_rag.nn._compile import CompileSwitch, MaybeCompiled
from lorentz_rag.nn._precision import autocast_off
from lorentz_rag.nn.activation import ACTIVATIONS
from lorentz_rag.nn.attention import key_padding_mask

__all__ = ["HyteFHBlock", "HyteFHConfig", "HyteFHForMaskedLM", "HyteFHTrunk", "MaskedLMOutput"]


def _did_you_mean(name: str, options) -> str:
    match = closest_key(name, list(options), cutoff=0.6)
    return f" (did you mean {match!r}?)" if match else ""


@dataclass
class HyteFHConfig:
    """Sizes and options of HyTE-FH. The defaults are the paper's model: 12 layers x 768, 12 heads,
    ModernBERT-base's vocabulary (50368), intermediate size 1152 and global rotary theta 160000.

    ``hidden_size`` is the space dimension ``d``; points have ``d + 1`` coordinates. ``embedding_norm``
    (ModernBERT's norm after the embeddings) and ``norm_bias`` extend the documented field list.

    ``compile``: run the whole trunk (embeddings, norms, blocks and an embedding model's pooling) as one
    ``torch.compile`` graph, and the MLR head's kernels compiled; inductor fuses the elementwise Lorentz
    chains (lift, norms, rotary, residual projection, attention midpoint, pooling, the head's asinh) into
    single kernels, forward and backward. Off here: compiling costs minutes on a CPU (335 s cold for a
    4 x 256 trunk on a loaded 2-core machine), which a long run (or a GPU run) repays and a short test or
    toy run does not; training's ``model_args.compile: auto`` turns it on where it pays
    (:mod:`lorentz_rag.training.compile_policy`). A failure to compile falls back to eager with one
    warning; compiled and eager results agree to float32 rounding.

    Masked-LM head (``HyteFHForMaskedLM``): ``fused_mlm_loss`` computes the loss with labels blockwise over
    the vocabulary without forming the ``[scored tokens x V]`` logits (:mod:`lorentz_rag.nn.fused_mlr_ce`;
    equal to the plain head + cross-entropy to float32 rounding); ``tie_mlm_head`` makes the head's class
    normals ``head.z`` the token embedding table (``embeddings.weight``, as the Euclidean twin ties its
    decoder), leaving the per-class offsets ``head.a`` its own.
    """

    model_type: ClassVar[str] = "hyte_fh"

    vocab_size: int = 50368
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 1152
    max_position_embeddings: int = 8192
    rope_theta: float = 160_000.0
    norm_type: str = "layernorm"
    norm_eps: float = 1e-5
    norm_bias: bool = False
    embedding_norm: bool = True
    hidden_activation: str = "gelu"
    attention_bias: bool = False
    mlp_bias: bool = False
    curvature: float = 1.0
    trainable_curvature: bool = True
    pad_token_id: int | None = 50283
    initializer_range: float = 0.02
    compile: bool = False
    tie_mlm_head: bool = False
    fused_mlm_loss: bool = True

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"HyteFHConfig.{key}={getattr(self, key)!r}: {why}")

        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "max_position_embeddings"):  # fmt: skip
            if int(getattr(self, key)) < 1:
                raise bad(key, "must be a positive integer")
        if self.hidden_size % self.num_attention_heads:
            raise bad("hidden_size", f"must be divisible by num_attention_heads={self.num_attention_heads}")
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise bad(
                "num_attention_heads", "the head space dim hidden_size/num_attention_heads must be even"
            )
        if self.norm_type not in ("layernorm", "rmsnorm"):
            raise bad("norm_type", "must be 'layernorm' or 'rmsnorm'")
        if self.hidden_activation not in ACTIVATIONS:
            raise bad("hidden_activation", f"must be one of {sorted(ACTIVATIONS)}")
        if not 0.1 <= float(self.curvature) <= 10.0:
            raise bad("curvature", "must lie in [0.1, 10] (the clamp range of the curvature)")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise bad("pad_token_id", f"must be in [0, vocab_size={self.vocab_size}) or None")
        if not self.rope_theta > 0 or not self.norm_eps > 0 or not self.initializer_range > 0:
            raise ValueError("HyteFHConfig: rope_theta, norm_eps and initializer_range must be > 0")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HyteFHConfig:
        """Inverse of :meth:`to_dict`; an unknown key is an error naming the closest field."""
        fields = {f.name for f in dataclasses.fields(cls)}
        data = dict(data)
        model_type = data.pop("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(
                f"HyteFHConfig.from_dict: model_type is {model_type!r}, expected {cls.model_type!r}"
            )
        for key in data:
            if key not in fields:
                raise ValueError(f"HyteFHConfig: unknown key {key!r}{_did_you_mean(key, fields)}")
        return cls(**data)

    @classmethod
    def from_modernbert(cls, source: Any, **overrides: Any) -> HyteFHConfig:
        """Sizes from a ModernBERT config: a ``transformers.ModernBertConfig`` (or any config object), a
        dict, a local folder (or file) with ``config.json``, or a hub id (``AutoConfig.from_pretrained``).

        Read: vocabulary, hidden/intermediate sizes, layers, heads, positions, global rotary theta, norm eps
        and bias, activation, biases, pad id, initializer range; ``overrides`` win. Note that
        ``answerdotai/ModernBERT-base`` has 22 layers; the paper's HyTE-FH uses 12
        (``from_modernbert("answerdotai/ModernBERT-base", num_hidden_layers=12)``, or the defaults).
        """
        src = _modernbert_dict(source)
        values: dict[str, Any] = {}
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "max_position_embeddings", "norm_eps", "norm_bias",
                    "hidden_activation", "attention_bias", "mlp_bias", "pad_token_id",
                    "initializer_range"):  # fmt: skip
            if src.get(key) is not None:
                values[key] = src[key]
        theta = _global_rope_theta(src)
        if theta is not None:
            values["rope_theta"] = float(theta)
        fields = {f.name for f in dataclasses.fields(cls)}
        for key in overrides:
            if key not in fields:
                raise ValueError(
                    f"HyteFHConfig.from_modernbert: unknown override {key!r}{_did_you_mean(key, fields)}"
                )
        values.update(overrides)
        return cls(**values)


def _modernbert_dict(source: Any) -> dict[str, Any]:
    if isinstance(source, Mapping):
        return dict(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            path = path / "config.json"
        if path.is_file():
            return read_json_file(path)
        if Path(source).exists() or str(source).startswith((".", "/", "~")):
            raise FileNotFoundError(f"no config.json at {path} (expected a ModernBERT config folder)")
        from transformers import AutoConfig  # heavy: only for hub ids

        return AutoConfig.from_pretrained(str(source)).to_dict()
    if hasattr(source, "to_dict"):
        return source.to_dict()
    raise TypeError(
        f"from_modernbert expects a ModernBertConfig, a dict, a config folder or a hub id, got {type(source)}"
    )


def _global_rope_theta(src: Mapping[str, Any]) -> float | None:
    """transformers >= 5 nests it in ``rope_parameters["full_attention"]``; 4.x config.json files say
    ``global_rope_theta``."""
    rope = src.get("rope_parameters")
    if isinstance(rope, Mapping):
        full = rope.get("full_attention", rope)
        if isinstance(full, Mapping) and full.get("rope_theta") is not None:
            return full["rope_theta"]
    return src.get("global_rope_theta", src.get("rope_theta"))


class HyteFHBlock(nn.Module):
    """Pre-norm block: ``x = res1(x, attn(norm1(x)))``, ``x = res2(x, ffn(norm2(x)))``.

    forward(x ``[B, T, d+1]``, attention_mask ``[B, T]`` (key padding mask), c 0-d) -> ``[B, T, d+1]``.
    """

    def __init__(self, config: HyteFHConfig):
        super().__init__()
        d = config.hidden_size
        self.attn_norm = build_lorentz_norm(config.norm_type, d, config.norm_eps, config.norm_bias)
        self.attn = LorentzMultiheadAttention(
            d, config.num_attention_heads, rope_theta=config.rope_theta, bias=config.attention_bias
        )
        self.attn_residual = LorentzResidual()
        self.mlp_norm = build_lorentz_norm(config.norm_type, d, config.norm_eps, config.norm_bias)
        self.mlp = LorentzGatedFFN(
            d, config.intermediate_size, config.hidden_activation, bias=config.mlp_bias
        )
        self.mlp_residual = LorentzResidual()

    def forward(
        self, x: Tensor, attention_mask: Tensor | None, c: Tensor, position_ids: Tensor | None = None
    ) -> Tensor:
        if position_ids is None:
            position_ids = _position_ids(attention_mask, x.shape[0], x.shape[1], x.device)
        x = self.attn_residual(x, self.attn(self.attn_norm(x, c), attention_mask, c, position_ids), c)
        return self.mlp_residual(x, self.mlp(self.mlp_norm(x, c), c), c)


def _trunk_graph(
    trunk: HyteFHTrunk,
    input_ids: Tensor,
    mask: Tensor,
    position_ids: Tensor,
    pool_mask: Tensor | None,
    pooling: tuple[str, float] | None,
) -> tuple[Tensor, list[Tensor | None]]:
    """The whole trunk as one function, the unit :class:`MaybeCompiled` compiles into one graph: embeddings,
    embedding norm, blocks, final norm and, with ``pooling`` = (name, p), the pooling over ``pool_mask``
    (float64 accumulation as eager; autocast off). Returns the points (``[B, T, d+1]``, or pooled ``[B, d+1]``)
    and the per-stage ``x0`` trace (None entries when radius statistics are off)."""
    c = trunk.curvature()
    x = trunk.embeddings(input_ids, c)
    if trunk.embedding_norm is not None:
        x = trunk.embedding_norm(x, c)
    trace = [trunk._x0_column(x)]
    for layer in trunk.layers:
        x = layer(x, mask, c, position_ids)
        trace.append(trunk._x0_column(x))
    x = trunk.final_norm(x, c)
    trace.append(trunk._x0_column(x))
    if pooling is not None:
        with autocast_off(x):  # (c read again: the eager gradients stay bit-identical to pooling outside)
            x = pooling_lib.pool(pooling[0], x, pool_mask, trunk.curvature(), p=pooling[1])
    return x, trace


def _position_ids(attention_mask: Tensor | None, batch: int, length: int, device) -> Tensor:
    """Positions counted over real tokens (``cumsum(mask) - 1``), so left and right padding give the same
    rotary phases to the same tokens: ``[B, T]``."""
    if attention_mask is None:
        return torch.arange(length, device=device).expand(batch, length)
    return ((attention_mask > 0).long().cumsum(-1) - 1).clamp_min(0)


class HyteFHTrunk(nn.Module):
    """The HyTE-FH trunk: embeddings -> (embedding norm) -> blocks -> final norm.

    forward(input_ids ``[B, T]``, attention_mask ``[B, T]``) -> token points ``[B, T, d+1]`` (float32, float64
    for a float64 model). Padding positions get finite points and never influence real tokens.
    """

    def __init__(self, config: HyteFHConfig):
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.curvature = Curvature(config.curvature, trainable=config.trainable_curvature)
        self.embeddings = LorentzEmbedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        self.embedding_norm = (
            build_lorentz_norm(config.norm_type, d, config.norm_eps, config.norm_bias)
            if config.embedding_norm
            else None
        )
        self.layers = nn.ModuleList(HyteFHBlock(config) for _ in range(config.num_hidden_layers))
        self.final_norm = build_lorentz_norm(config.norm_type, d, config.norm_eps, config.norm_bias)
        self.record_radius_stats = True
        # The last forward's x0 per stage ([B, T] each, detached) and real-token mask.
        self._x0_trace: tuple[list[Tensor], Tensor] | None = None
        # config.compile: the whole trunk (with the pooling of an embedding model) is one compiled graph; a
        # masked-LM head shares the switch. Batch and sequence dims of ids, masks and positions are dynamic.
        self.compile_switch = CompileSwitch(config.compile)
        self._graph = MaybeCompiled(
            _trunk_graph, self.compile_switch, dict.fromkeys((1, 2, 3, 4), (0, 1)), fullgraph=True
        )
        init_hyte_fh_weights(self, config.initializer_range)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None
    ) -> Tensor:
        return self._run(input_ids, attention_mask, position_ids, None)

    def pooled(self, input_ids: Tensor, attention_mask: Tensor, pooling: str, p: float = 1.0) -> Tensor:
        """The trunk followed by ``geometry.pooling.pool(pooling, ..., p=p)`` over ``attention_mask``, in
        the same compiled graph when compiling: ``[B, T]`` -> ``[B, d+1]``."""
        pooling_lib.check_poolable(attention_mask)  # (data-dependent: checked here, outside the graph)
        return self._run(input_ids, attention_mask, None, (pooling, float(p)))

    def _run(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        position_ids: Tensor | None,
        pooling: tuple[str, float] | None,
    ) -> Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
        b, t = input_ids.shape
        if t > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {t} exceeds max_position_embeddings={self.config.max_position_embeddings}"
            )
        mask = key_padding_mask(attention_mask, b, t, input_ids.device)
        real = attention_mask > 0 if attention_mask is not None else mask
        if position_ids is None:
            position_ids = _position_ids(attention_mask, b, t, input_ids.device)
        x, trace = self._graph(self, input_ids, mask, position_ids, attention_mask, pooling)
        if self.record_radius_stats:
            self._x0_trace = (trace, real)
        return x

    def _x0_column(self, x: Tensor) -> Tensor | None:
        """A detached copy of the time coordinates ``[B, T]`` for :attr:`last_radius_stats` (one operation;
        the statistics are reduced only when someone reads them)."""
        if not self.record_radius_stats:
            return None
        return x[..., 0].detach().clone()

    @property
    def last_radius_stats(self) -> dict[str, float]:
        """Mean / max ``x0`` over real tokens after the embeddings, each layer and the final norm, from the
        last forward: ``{"embeddings/x0_mean": ..., "layer_0/x0_max": ..., "final_norm/x0_mean": ...}``."""
        if self._x0_trace is None:
            return {}
        trace, real = self._x0_trace
        with torch.no_grad():
            x0 = torch.stack(trace).float()  # [num_hidden_layers + 2, B, T]
            count = real.sum().clamp_min(1)
            mean = (x0 * real).sum((1, 2)) / count
            mx = x0.masked_fill(~real, 0.0).amax((1, 2))
            values = torch.stack([mean, mx], -1).tolist()  # one device sync, only when someone logs
        names = ["embeddings", *(f"layer_{i}" for i in range(len(self.layers))), "final_norm"]
        out: dict[str, float] = {}
        for name, (mean, mx) in zip(names, values):
            out[f"{name}/x0_mean"] = mean
            out[f"{name}/x0_max"] = mx
        return out


def init_hyte_fh_weights(module: nn.Module, std: float) -> None:
    """Normal(0, std) for linear maps, embeddings and MLR normals; zero biases and MLR offsets; unit norms.

    With std 0.02 an embedding point sits at x0 ~ sqrt(1 + 0.0004 d); after a norm, |xs| ~ sqrt(d).
    """
    for m in module.modules():
        if isinstance(m, (LorentzLinear, LorentzEmbedding, LorentzMLR)):
            m.reset_parameters(std)


class MaskedLMOutput:
    """``loss``: 0-d cross-entropy (float32; None without labels); ``logits``: ``[n_positions, V]``.

    With the fused loss the forward does not form the logits: reading ``logits`` computes them then (once,
    recorded by autograd if it was recording during the forward), so a training step that uses only
    ``loss`` never holds ``[n_positions, V]`` values.
    """

    def __init__(
        self,
        loss: Tensor | None,
        logits: Tensor | None = None,
        compute_logits: Callable[[], Tensor] | None = None,
    ) -> None:
        if (logits is None) == (compute_logits is None):
            raise ValueError("MaskedLMOutput takes logits or compute_logits, exactly one")
        self.loss = loss
        self._logits = logits
        self._compute_logits = compute_logits

    @property
    def logits(self) -> Tensor:
        if self._logits is None:
            assert self._compute_logits is not None
            self._logits, self._compute_logits = self._compute_logits(), None
        return self._logits


class HyteFHForMaskedLM(nn.Module):
    """HyTE-FH trunk + Lorentz MLR head, logits only at the positions that are scored.

    forward(input_ids ``[B, T]``, attention_mask ``[B, T]``, labels ``[B, T]`` or None): with labels, logits at
    positions where ``labels != -100`` (``[n_masked, V]``, row-major order) and their mean cross-entropy;
    without, logits at every real (unpadded) token and no loss. With ``config.fused_mlm_loss`` the loss is
    computed blockwise over the vocabulary (:meth:`LorentzMLR.loss`) and the logits only if read.
    ``config.tie_mlm_head``: ``head.z`` is ``model.embeddings.weight`` (one parameter, saved once).
    """

    def __init__(self, config: HyteFHConfig):
        super().__init__()
        self.config = config
        self.model = HyteFHTrunk(config)
        self.head = LorentzMLR(
            config.hidden_size, config.vocab_size, compile_switch=self.model.compile_switch
        )
        init_hyte_fh_weights(self.head, config.initializer_range)
        if config.tie_mlm_head:
            self.head.z = self.model.embeddings.weight  # [V, d] both; the head's own z is dropped

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None
    ) -> MaskedLMOutput:
        points = self.model(input_ids, attention_mask)
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(
                    f"labels {tuple(labels.shape)} must match input_ids {tuple(input_ids.shape)}"
                )
            selected = labels != -100
        elif attention_mask is not None:
            selected = attention_mask > 0
        else:
            selected = torch.ones_like(input_ids, dtype=torch.bool)
        x, c = points[selected], self.model.curvature()
        if labels is not None and self.config.fused_mlm_loss:
            recording = torch.is_grad_enabled()

            def compute_logits() -> Tensor:
                with torch.set_grad_enabled(recording):
                    return self.head(x, c)

            # Empty selection: 0 with the graph kept (the mean over no rows is defined as 0 there).
            return MaskedLMOutput(self.head.loss(x, c, labels[selected]), compute_logits=compute_logits)
        logits = self.head(x, c)
        loss = None
        if labels is not None:
            if logits.shape[0] == 0:
                loss = logits.sum() * 0.0  # no masked token in the batch: zero loss, graph kept
            else:
                loss = F.cross_entropy(logits.float(), labels[selected])
        return MaskedLMOutput(loss=loss, logits=logits)
