"""sentence-transformers files next to a saved lorentz-rag model, so that ``SentenceTransformer(path)`` loads it.

:func:`write_sentence_transformers_files` runs at the end of every ``EmbeddingModel.save_pretrained``:

- the Euclidean twin with the ``linear`` head becomes native modules: ``0_Transformer`` (the base encoder
  and tokenizer, a second copy of the base weights), ``1_Pooling`` (``mean``/``cls``) and, when the model
  has a projection, ``2_Dense`` (identity activation). Outputs equal ``lorentz_rag.load_model``'s.
- every other model (HyTE-H, HyTE-FH, the ``direction_norm`` twin) is the lorentz_rag module
  :class:`LorentzRagEncoder`, which loads the folder's own ``model.safetensors`` through
  :func:`lorentz_rag.load_model` (no second copy). Hyperbolic models sit behind a ``Router``: the ``document``
  route gives the point ``x``, the ``query`` route adds :class:`LorentzQuery`, which returns
  ``ip_query(q) = (-q0, qs)``. With ``similarity_fn_name="dot"``, ``ip_query(q) . x = <q, x>_L``, which orders
  documents exactly as ``-d(q, x)`` does, so any dot-product consumer ranks as lorentz_rag does.

Prefixes become the prompts ``query`` and ``document`` (``encode_query``/``encode_document`` apply them).
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any

import torch
from sentence_transformers.base.modules import InputModule, Module

from lorentz_rag.geometry import lorentz

__all__ = ["LorentzQuery", "LorentzRagEncoder", "write_sentence_transformers_files"]

_MODULE_CONFIG = "lorentz_rag_module.json"


class LorentzRagEncoder(InputModule):
    """A whole lorentz_rag :class:`~lorentz_rag.models.base.EmbeddingModel` as one sentence-transformers input module.

    ``preprocess`` prepends the prompt and tokenizes with the model's tokenizer and ``max_seq_length``;
    ``forward`` returns the model's pooled embedding as ``sentence_embedding`` ``[B, D]`` (float32). The
    weights are the lorentz_rag folder's own: :meth:`load` calls :func:`lorentz_rag.load_model` on the model root,
    whatever subfolder the module's small config lives in.
    """

    config_file_name = _MODULE_CONFIG
    save_in_root = False

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    @property
    def tokenizer(self) -> Any:  # type: ignore[override]
        return self.model.tokenizer

    @property
    def max_seq_length(self) -> int:
        return int(self.model.settings.max_seq_length)

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.model.settings.max_seq_length = int(value)

    def get_embedding_dimension(self) -> int:
        return int(self.model.embedding_dim)

    def preprocess(self, inputs: Any, prompt: str | None = None, **_: Any) -> dict[str, Any]:
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if prompt:
            texts = [prompt + t for t in texts]
        return self.model.tokenize(texts, prompt_type=None)

    def forward(self, features: dict[str, Any], **_: Any) -> dict[str, Any]:
        features["sentence_embedding"] = self.model(features["input_ids"], features["attention_mask"])
        return features

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        """Write only a marker: the weights and config are the lorentz_rag folder's (``save_pretrained``)."""
        marker = {"lorentz_rag_model_type": self.model.settings.model_type, "weights": "model root"}
        (Path(output_path) / _MODULE_CONFIG).write_text(json.dumps(marker, indent=2) + "\n")

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        **_: Any,
    ) -> LorentzRagEncoder:
        root = Path(model_name_or_path)
        if not root.is_dir():  # a Hub repo id: the whole snapshot, from the cache when offline
            from huggingface_hub import snapshot_download

            root = Path(
                snapshot_download(
                    model_name_or_path,
                    revision=revision,
                    cache_dir=cache_folder,
                    token=token,
                    local_files_only=local_files_only,
                )
            )
        # sentence-transformers found this class by its import path in modules.json. The lorentz_rag loader sits
        # above this module (it knows every model class, and saving a model writes this module's files), so
        # it is found by name the same way; a static import would make models/ a cycle.
        loader = importlib.import_module("lorentz_rag.models.factory")
        return cls(loader.load_model(root))


class LorentzQuery(Module):
    """``sentence_embedding`` ``[B, d+1]`` -> ``ip_query`` of it, ``(-x0, xs)``: the query side of a
    dot-product search that equals the Lorentz inner product (and so ranks by geodesic distance)."""

    def forward(self, features: dict[str, Any], **_: Any) -> dict[str, Any]:
        features["sentence_embedding"] = lorentz.ip_query(features["sentence_embedding"])
        return features

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        self.save_config(output_path)

    @classmethod
    def load(cls, *args: Any, **kwargs: Any) -> LorentzQuery:
        return cls()


def _st_config(model: Any, similarity_fn_name: str) -> dict[str, Any]:
    import sentence_transformers
    import transformers

    s = model.settings
    return {
        "model_type": "SentenceTransformer",
        "__version__": {
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "pytorch": torch.__version__,
        },
        "prompts": {"query": s.query_prefix, "document": s.document_prefix},
        "default_prompt_name": None,
        "similarity_fn_name": similarity_fn_name,
    }


def write_sentence_transformers_files(model: Any, path: str | Path) -> None:
    """Add ``modules.json``, ``config_sentence_transformers.json`` and the module folders to the saved lorentz_rag
    folder ``path`` (see the module docstring for the layout of each model type)."""
    path = Path(path)
    if model.native_st_modules:
        _write_native_euclidean(model, path)
        return
    from sentence_transformers import SentenceTransformer

    encoder = LorentzRagEncoder(model)
    if model.is_hyperbolic:
        from sentence_transformers.base.modules import Router

        first: Module = Router.for_query_document(
            query_modules=[encoder, LorentzQuery()], document_modules=[encoder]
        )
        similarity = "dot"
    else:
        first = encoder
        similarity = model.settings.similarity
    st = SentenceTransformer(modules=[first], device=str(model.device), similarity_fn_name=similarity)
    st.prompts = {"query": model.settings.query_prefix, "document": model.settings.document_prefix}
    # Router saves in the root (router_config.json + one folder per module), LorentzRagEncoder in 0_LorentzRagEncoder;
    # neither touches the lorentz_rag files.
    st.save(str(path), create_model_card=False)
    (path / "config_sentence_transformers.json").write_text(
        json.dumps(_st_config(model, similarity), indent=2, sort_keys=True) + "\n"
    )


def _base_model_kwargs(encoder: torch.nn.Module) -> dict[str, Any]:
    """``{"add_pooling_layer": False}`` for a base whose pooler was dropped (BERT-style classes take that
    argument); nothing otherwise."""
    takes_flag = "add_pooling_layer" in inspect.signature(type(encoder).__init__).parameters
    if takes_flag and getattr(encoder, "pooler", None) is None:
        return {"add_pooling_layer": False}
    return {}


def _write_native_euclidean(model: Any, path: Path) -> None:
    from sentence_transformers.base.modules import Dense, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    transformer_dir = path / "0_Transformer"
    transformer_dir.mkdir(parents=True, exist_ok=True)
    model.encoder.save_pretrained(str(transformer_dir))
    model.tokenizer.save_pretrained(str(transformer_dir))
    # The base was saved without the pooler it never uses; model_kwargs rebuild it without one (here and
    # whenever sentence-transformers loads the folder), so no weights are reported missing and reinitialised.
    model_kwargs = _base_model_kwargs(model.encoder)
    transformer = Transformer(
        str(transformer_dir), max_seq_length=model.settings.max_seq_length, model_kwargs=model_kwargs
    )
    transformer.save(str(transformer_dir))
    if model_kwargs:
        config_file = transformer_dir / Transformer.config_file_name
        config = json.loads(config_file.read_text())
        config["model_kwargs"] = model_kwargs
        config_file.write_text(json.dumps(config, indent=2) + "\n")
    modules: list[tuple[str, Module]] = [("0_Transformer", transformer)]
    d_base = int(model.encoder.config.hidden_size)
    modules.append(("1_Pooling", Pooling(d_base, pooling_mode=model.settings.pooling)))
    layer = model.projection
    if layer is not None:
        dense = Dense(
            layer.in_features,
            layer.out_features,
            bias=layer.bias is not None,
            activation_function=torch.nn.Identity(),
        )
        dense.linear.load_state_dict(layer.state_dict())
        modules.append(("2_Dense", dense))
    entries = []
    for idx, (folder, module) in enumerate(modules):
        (path / folder).mkdir(exist_ok=True)
        if idx:
            module.save(str(path / folder))
        cls = type(module)
        entries.append(
            {"idx": idx, "name": str(idx), "path": folder, "type": f"{cls.__module__}.{cls.__name__}"}
        )
    (path / "modules.json").write_text(json.dumps(entries, indent=2) + "\n")
    (path / "config_sentence_transformers.json").write_text(
        json.dumps(_st_config(model, model.settings.similarity), indent=2, sort_keys=True) + "\n"
    )
